// A server process and one peer process (a worker or a frontend), joined by two rings and
// two eventfds, all four inherited by the peer and by nobody else.
//
// The server writes the down ring and reads the up ring; the peer the other way round. Each
// side has its own eventfd that the other writes to wake it: when a frame goes into an
// empty ring (Ring::commit), or when a reader frees room that the writer waits for
// (Ring::release). A wake-up therefore names its channel, and no peer can wake, or
// silence, another's.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "../common/clock.hpp"
#include "../common/unique_fd.hpp"
#include "ring.hpp"

namespace pyserve {

// The descriptors a peer inherits, in the order it is given them.
struct PeerFds {
    int down_ring;
    int up_ring;
    int up_event;    // the peer writes it; the server waits on it
    int down_event;  // the server writes it; the peer waits on it
};

UniqueFd make_eventfd();
void signal_eventfd(int fd);
void clear_eventfd(int fd);

// How long a side that just worked keeps looking for the next frame before it sleeps: a
// sleep and wake cost tens of microseconds on virtual machines, and the next batch of a busy
// model usually comes within this window. Only where cores are to spare: with 2 a spinning
// thread takes time the frontend and the workers need (measured: 10-20% of echo throughput
// at 64 connections, nothing gained at 1), so there it is 0.
constexpr std::chrono::nanoseconds kSpin = std::chrono::microseconds(50);
constexpr int kMinCoresToSpin = 4;
std::chrono::nanoseconds default_spin();

// Tells the CPU this is a spin loop: less power, no memory-order mis-speculation.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
}

// The server's end.
class Channel {
   public:
    // ShmError or RingError when descriptors or memory run out; nothing is left behind.
    explicit Channel(size_t capacity);

    Ring& down() { return down_; }
    Ring& up() { return up_; }
    int up_event() const { return up_event_.get(); }
    void wake_peer() const { signal_eventfd(down_event_.get()); }
    PeerFds peer_fds() const { return {down_.fd(), up_.fd(), up_event_.get(), down_event_.get()}; }

   private:
    Ring down_;
    Ring up_;
    UniqueFd up_event_;
    UniqueFd down_event_;
};

// The peer's end, made from the inherited descriptors, which it takes over.
class PeerChannel {
   public:
    explicit PeerChannel(PeerFds fds);

    size_t max_frame_size() const { return up_.max_frame_size(); }
    int wait_fd() const { return down_event_.get(); }

    // The next frame from the server, valid until release(). receive() looks for up to
    // `spin` before it sleeps; an empty optional means the deadline passed.
    std::optional<FrameView> try_receive() { return down_.peek(); }
    std::optional<FrameView> receive(const Deadline& deadline, std::chrono::nanoseconds spin);
    void release();
    // Empties the wake-up counter: call before draining the down ring, never after.
    void clear_wakeups() const { clear_eventfd(down_event_.get()); }

    // Writes one frame to the server. kNoRoom only from try_send(); send() waits for room
    // until the deadline (kNoRoom after it).
    WriteStatus try_send(const uint8_t* data, size_t size);
    WriteStatus send(const uint8_t* data, size_t size, const Deadline& deadline);
    // For a frame written in place: reserve, fill, then commit.
    WriteStatus reserve(size_t size, uint8_t** room) { return up_.reserve(size, room); }
    void commit();
    // After kNoRoom: asks the server to wake this side when it frees room; true if there is
    // room already.
    bool wait_for_room(size_t size) { return up_.wait_for_room(size); }

   private:
    bool sleep_until(const Deadline& deadline) const;

    Ring down_;
    Ring up_;
    UniqueFd up_event_;
    UniqueFd down_event_;
};

}  // namespace pyserve
