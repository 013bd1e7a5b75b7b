// A single-producer, single-consumer ring of length-prefixed frames in a SharedRegion.
//
// One process writes, another reads. Frames are never split (the data area is mirrored), a
// full ring never overwrites, and no side ever waits inside the ring: the writer gets
// kNoRoom and the reader "no frame", and each decides how to wait (an eventfd, see Channel).
//
// Two rules keep wake-ups and memory small:
// - commit() says whether the ring was empty before the frame. Only then must the reader be
//   woken: a reader drains until it sees the ring empty, and the seq_cst order of positions
//   makes sure it sees every frame committed before that (see commit()).
// - A frame written into an empty ring starts again at offset 0 (a skip frame tells the reader
//   to jump there), so a ring that carries small frames touches only its first pages. It does
//   so only if kRoomAfterWrap bytes stay free behind it: until the reader passes the skip
//   frame, that is all the room there is, and small frames must still fit (a withdrawal
//   written behind a batch the worker has not started). Memory
//   past the initial commit is committed before a frame is written (kNoMemory otherwise) and
//   given back once the ring has been empty of large frames for a while.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>

#include "../common/clock.hpp"
#include "shared_region.hpp"

namespace pyserve {

class RingError : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

enum class WriteStatus : int { kWritten = 0, kNoRoom = 1, kNoMemory = 2, kTooLarge = 3 };

// The part of the region both processes update. Positions only ever grow; the byte offset
// into the data area is position % capacity. Each side's fields sit on their own cache line.
struct RingControl {
    uint64_t magic;
    uint64_t capacity;
    alignas(64) std::atomic<uint64_t> write_pos;
    alignas(64) std::atomic<uint64_t> read_pos;
    // Set by a writer that found no room; the reader clears it when it frees some and then
    // wakes the writer.
    std::atomic<uint32_t> writer_waiting;
};

struct FrameView {
    const uint8_t* data;
    size_t size;
};

class Ring {
   public:
    // Each frame carries a 16-byte header (a 64-bit length, a marker, a kind) and is padded
    // to 16 bytes.
    static constexpr size_t kFrameHeader = 16;
    // Committed when the ring is made: small frames never need more.
    static constexpr size_t kInitialCommit = 64 * 1024;
    static constexpr size_t kRoomAfterWrap = 2048;
    // Memory past kInitialCommit is given back once no frame needed it for this long.
    static constexpr std::chrono::seconds kTrimAfter{1};

    static Ring create(size_t capacity);
    static Ring attach(UniqueFd fd);

    int fd() const { return region_.fd(); }
    size_t capacity() const { return capacity_; }
    size_t max_frame_size() const { return capacity_ - kFrameHeader; }
    size_t committed_bytes() const { return region_.committed(); }
    bool empty() const;

    // Writer side. reserve() hands out room for one frame of `size` bytes, visible to the
    // reader only at commit(), which returns whether the reader must be woken.
    WriteStatus reserve(size_t size, uint8_t** room);
    bool commit();
    WriteStatus write(const uint8_t* data, size_t size, bool* wake_reader);
    // Marks the writer as waiting for room, then looks once more: true if there is room for
    // `size` bytes after all (the reader may have freed it in between).
    bool wait_for_room(size_t size);

    // Reader side. The view stays valid until release(); an empty optional means "no frame".
    // A ring whose positions or headers make no sense throws RingError instead of reading
    // out of bounds.
    std::optional<FrameView> peek();
    // Returns true when the writer waits for room and must be woken.
    bool release();

   private:
    Ring(SharedRegion region);
    static size_t stride(size_t size) { return (kFrameHeader + size + 15) & ~size_t{15}; }
    bool has_room(uint64_t start, uint64_t read_pos, size_t size) const;

    SharedRegion region_;
    RingControl* control_;
    uint8_t* data_;
    uint64_t capacity_;
    // Writer: the frame reserved and not yet committed.
    uint64_t pending_start_ = 0;
    size_t pending_size_ = 0;
    size_t pending_skip_ = 0;
    Clock::time_point last_large_{};  // when a frame last reached past kInitialCommit
    // Reader: stride of the frame it holds.
    size_t peeked_ = 0;
};

}  // namespace pyserve
