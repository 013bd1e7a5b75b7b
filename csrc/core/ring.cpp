#include "ring.hpp"

#include <algorithm>
#include <cstring>
#include <new>
#include <string>

namespace pyserve {
namespace {

constexpr uint64_t kRingMagic = 0x676e6972796c7032ULL;  // "2plyring"
constexpr uint32_t kFrameMarker = 0x324d5246;            // "FRM2"
constexpr uint32_t kDataFrame = 0;
constexpr uint32_t kSkipFrame = 1;  // no payload: the reader jumps over it

struct FrameHeader {
    uint64_t size;
    uint32_t marker;
    uint32_t kind;
};
static_assert(sizeof(FrameHeader) == Ring::kFrameHeader);
static_assert(std::atomic<uint64_t>::is_always_lock_free);

}  // namespace

Ring::Ring(SharedRegion region)
    : region_(std::move(region)),
      control_(reinterpret_cast<RingControl*>(region_.control())),
      data_(region_.data()),
      capacity_(region_.data_size()) {}

Ring Ring::create(size_t capacity) {
    if (capacity < 2 * kFrameHeader) throw RingError("ring capacity too small");
    SharedRegion region = SharedRegion::create(sizeof(RingControl), capacity, kInitialCommit);
    auto* control = new (region.control()) RingControl{};
    control->capacity = region.data_size();
    control->magic = kRingMagic;
    return Ring(std::move(region));
}

Ring Ring::attach(UniqueFd fd) {
    SharedRegion region = SharedRegion::attach(std::move(fd));
    const auto* control = reinterpret_cast<const RingControl*>(region.control());
    if (control->magic != kRingMagic || control->capacity != region.data_size()) {
        throw RingError("not a pyserve ring");
    }
    return Ring(std::move(region));
}

bool Ring::empty() const {
    return control_->write_pos.load(std::memory_order_acquire) ==
           control_->read_pos.load(std::memory_order_acquire);
}

bool Ring::has_room(uint64_t start, uint64_t read_pos, size_t size) const {
    return capacity_ - (start - read_pos) >= stride(size);
}

WriteStatus Ring::reserve(size_t size, uint8_t** room) {
    if (size > max_frame_size()) return WriteStatus::kTooLarge;
    const uint64_t write_pos = control_->write_pos.load(std::memory_order_relaxed);
    const uint64_t read_pos = control_->read_pos.load(std::memory_order_acquire);
    const bool was_empty = read_pos == write_pos;
    const size_t offset = write_pos % capacity_;
    // An empty ring starts again at offset 0, behind a skip frame at the current offset,
    // when the frame fits before that header (it must not overwrite it) with room to spare.
    size_t skip = 0;
    if (was_empty && offset != 0 && stride(size) + kRoomAfterWrap <= offset &&
        region_.commit(offset + kFrameHeader)) {
        skip = capacity_ - offset;
    }
    const uint64_t start = write_pos + skip;
    if (!has_room(start, read_pos, size)) return WriteStatus::kNoRoom;
    const size_t begin = start % capacity_;
    const size_t end = begin + stride(size);
    const size_t reach = skip ? std::max(end, offset + kFrameHeader) : end;  // furthest byte touched
    if (end > kInitialCommit) last_large_ = Clock::now();
    if (!region_.commit(std::min<size_t>(end, capacity_))) return WriteStatus::kNoMemory;
    if (was_empty && reach <= kInitialCommit && region_.committed() > kInitialCommit &&
        Clock::now() - last_large_ > kTrimAfter) {
        region_.decommit(kInitialCommit);  // nobody reads past reach: the ring is empty
    }
    pending_start_ = start;
    pending_size_ = size;
    pending_skip_ = skip;
    *room = data_ + begin + kFrameHeader;
    return WriteStatus::kWritten;
}

bool Ring::commit() {
    const uint64_t write_pos = control_->write_pos.load(std::memory_order_relaxed);
    if (pending_skip_) {
        auto* skip = reinterpret_cast<FrameHeader*>(data_ + write_pos % capacity_);
        *skip = FrameHeader{pending_skip_ - kFrameHeader, kFrameMarker, kSkipFrame};
    }
    auto* header = reinterpret_cast<FrameHeader*>(data_ + pending_start_ % capacity_);
    *header = FrameHeader{pending_size_, kFrameMarker, kDataFrame};
    // seq_cst store, then seq_cst load of the reader's position; the reader stores its
    // position, then loads ours. One of the two sees the other's store: either we see that
    // the reader had not yet freed our previous frame (it will find this one before it sees
    // the ring empty), or the reader sees this frame, or we wake it.
    control_->write_pos.store(pending_start_ + stride(pending_size_));
    const bool was_empty = control_->read_pos.load() == write_pos;
    pending_skip_ = 0;
    return was_empty;
}

WriteStatus Ring::write(const uint8_t* data, size_t size, bool* wake_reader) {
    uint8_t* room = nullptr;
    const WriteStatus status = reserve(size, &room);
    if (status != WriteStatus::kWritten) return status;
    std::memcpy(room, data, size);
    *wake_reader = commit();
    return status;
}

bool Ring::wait_for_room(size_t size) {
    control_->writer_waiting.store(1);
    const uint64_t write_pos = control_->write_pos.load(std::memory_order_relaxed);
    const uint64_t read_pos = control_->read_pos.load();
    return read_pos == write_pos || has_room(write_pos, read_pos, size);
}

std::optional<FrameView> Ring::peek() {
    uint64_t read_pos = control_->read_pos.load(std::memory_order_relaxed);
    for (;;) {
        const uint64_t write_pos = control_->write_pos.load(std::memory_order_acquire);
        if (write_pos == read_pos) return std::nullopt;
        const uint64_t available = write_pos - read_pos;
        if (available > capacity_ || available < kFrameHeader || read_pos % 16 != 0) {
            throw RingError("ring is damaged: inconsistent positions");
        }
        const auto* header = reinterpret_cast<const FrameHeader*>(data_ + read_pos % capacity_);
        const FrameHeader seen = *header;  // read once: the writer may be hostile
        if (seen.marker != kFrameMarker || seen.size > capacity_ || stride(seen.size) > available ||
            (seen.kind != kDataFrame && seen.kind != kSkipFrame)) {
            throw RingError("ring is damaged: bad frame header");
        }
        if (seen.kind == kSkipFrame) {
            read_pos += stride(seen.size);
            control_->read_pos.store(read_pos);
            continue;
        }
        peeked_ = stride(seen.size);
        return FrameView{reinterpret_cast<const uint8_t*>(header) + kFrameHeader, seen.size};
    }
}

bool Ring::release() {
    if (peeked_ == 0) return false;
    control_->read_pos.fetch_add(peeked_);
    peeked_ = 0;
    return control_->writer_waiting.load() != 0 && control_->writer_waiting.exchange(0) != 0;
}

}  // namespace pyserve
