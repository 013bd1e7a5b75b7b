// A single-producer, single-consumer ring of length-prefixed frames in shared memory.
//
// One process writes, another reads. Frames are never split: the data area is mirrored
// (see SharedMemory), so a frame that wraps past the end is still contiguous, and any
// frame up to max_frame_size() fits. A full ring never overwrites: the writer either
// gets "no room" at once (try_*) or sleeps until the reader frees space.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "futex.hpp"
#include "shared_memory.hpp"

namespace pyserve {

class RingError : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

// The part of the segment both processes update. Positions only ever grow; the byte
// offset into the ring is position % capacity. Each side's fields sit on their own
// cache line so that the two processes do not bounce one line between cores.
struct RingControl {
    uint64_t magic;
    uint64_t capacity;
    alignas(64) std::atomic<uint64_t> write_pos;
    std::atomic<uint32_t> readable_seq;    // futex word: bumped by every commit
    std::atomic<uint32_t> reader_waiting;  // the reader sleeps on readable_seq
    alignas(64) std::atomic<uint64_t> read_pos;
    std::atomic<uint32_t> writable_seq;    // futex word: bumped by every release
    std::atomic<uint32_t> writer_waiting;  // the writer sleeps on writable_seq
    alignas(64) std::atomic<uint32_t> closed;
};

struct FrameView {
    const uint8_t* data;
    size_t size;
};

class ShmRing {
   public:
    // Each frame carries an 8-byte header (length and a marker) and is padded to 8 bytes.
    static constexpr size_t kFrameHeader = 8;

    static ShmRing create(const std::string& name, size_t capacity);
    static ShmRing open(const std::string& name);

    const std::string& name() const { return memory_.name(); }
    size_t capacity() const { return capacity_; }
    size_t max_frame_size() const { return capacity_ - kFrameHeader; }
    size_t used_bytes() const;

    // Writer side. reserve() hands out room for one frame of `size` bytes that becomes
    // visible to the reader only at commit(). nullptr means "no room" (try_reserve),
    // or timeout / closed ring (reserve). A frame larger than max_frame_size() throws.
    uint8_t* try_reserve(size_t size);
    uint8_t* reserve(size_t size, const Deadline& deadline);
    void commit();
    bool try_write(const uint8_t* data, size_t size);
    bool write(const uint8_t* data, size_t size, const Deadline& deadline);

    // Reader side. The view stays valid until release(); an empty optional means "no
    // frame" (try_peek) or timeout / closed ring (peek). A ring whose positions or frame
    // headers make no sense throws RingError rather than reading out of bounds.
    std::optional<FrameView> try_peek();
    // peek() first keeps looking for up to `spin` before it sleeps (see spin_until).
    std::optional<FrameView> peek(const Deadline& deadline,
                                  std::chrono::nanoseconds spin = std::chrono::nanoseconds(0));
    void release();

    // Wakes both sides for good; waits return at once afterwards.
    void close();
    bool closed() const;
    void unlink() { memory_.unlink(); }

   private:
    explicit ShmRing(SharedMemory memory);
    static size_t stride(size_t size) { return (kFrameHeader + size + 7) & ~size_t{7}; }
    bool has_frame() const {
        return control_->write_pos.load(std::memory_order_acquire) !=
               control_->read_pos.load(std::memory_order_relaxed);
    }
    void check_frame_size(size_t size) const;

    SharedMemory memory_;
    RingControl* control_;
    uint8_t* data_;
    uint64_t capacity_;
    size_t reserved_ = 0;  // payload size of the frame reserved and not yet committed
    size_t peeked_ = 0;    // stride of the frame the reader holds
};

}  // namespace pyserve
