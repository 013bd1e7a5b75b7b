#include "shm_ring.hpp"

#include <cstring>
#include <new>

namespace pyserve {
namespace {

constexpr uint64_t kRingMagic = 0x676e6972796c7031ULL;  // "1plyring"
constexpr uint32_t kFrameMarker = 0x314d5246;            // "FRM1"

struct FrameHeader {
    uint32_t size;
    uint32_t marker;
};
static_assert(sizeof(FrameHeader) == ShmRing::kFrameHeader);
static_assert(std::atomic<uint64_t>::is_always_lock_free);

}  // namespace

ShmRing::ShmRing(SharedMemory memory)
    : memory_(std::move(memory)),
      control_(reinterpret_cast<RingControl*>(memory_.control())),
      data_(memory_.data()),
      capacity_(memory_.data_size()) {}

ShmRing ShmRing::create(const std::string& name, size_t capacity) {
    if (capacity < 2 * kFrameHeader) throw RingError("ring capacity too small");
    SharedMemory memory = SharedMemory::create(name, sizeof(RingControl), capacity);
    auto* control = new (memory.control()) RingControl{};
    control->capacity = memory.data_size();
    control->magic = kRingMagic;
    return ShmRing(std::move(memory));
}

ShmRing ShmRing::open(const std::string& name) {
    SharedMemory memory = SharedMemory::open(name);
    const auto* control = reinterpret_cast<const RingControl*>(memory.control());
    if (control->magic != kRingMagic || control->capacity != memory.data_size()) {
        throw RingError("not a pyserve ring: '" + name + "'");
    }
    return ShmRing(std::move(memory));
}

size_t ShmRing::used_bytes() const {
    return control_->write_pos.load(std::memory_order_acquire) -
           control_->read_pos.load(std::memory_order_acquire);
}

void ShmRing::check_frame_size(size_t size) const {
    if (size > max_frame_size() || stride(size) > capacity_) {
        throw RingError("frame of " + std::to_string(size) + " bytes exceeds the ring's limit of " +
                        std::to_string(max_frame_size()) + " bytes");
    }
}

uint8_t* ShmRing::try_reserve(size_t size) {
    check_frame_size(size);
    const uint64_t write_pos = control_->write_pos.load(std::memory_order_relaxed);
    const uint64_t read_pos = control_->read_pos.load(std::memory_order_acquire);
    if (capacity_ - (write_pos - read_pos) < stride(size)) return nullptr;
    reserved_ = size;
    return data_ + (write_pos % capacity_) + kFrameHeader;
}

uint8_t* ShmRing::reserve(size_t size, const Deadline& deadline) {
    for (;;) {
        if (uint8_t* room = try_reserve(size)) return room;
        if (closed()) return nullptr;
        // Announce the sleep, then look again: a release between the two is either
        // seen here or bumps writable_seq so that futex_wait returns at once.
        const uint32_t seen = control_->writable_seq.load();
        control_->writer_waiting.store(1);
        if (uint8_t* room = try_reserve(size)) {
            control_->writer_waiting.store(0);
            return room;
        }
        const bool in_time = futex_wait(control_->writable_seq, seen, deadline);
        control_->writer_waiting.store(0);
        if (!in_time) return try_reserve(size);
    }
}

void ShmRing::commit() {
    const uint64_t write_pos = control_->write_pos.load(std::memory_order_relaxed);
    auto* header = reinterpret_cast<FrameHeader*>(data_ + (write_pos % capacity_));
    header->size = static_cast<uint32_t>(reserved_);
    header->marker = kFrameMarker;
    control_->write_pos.store(write_pos + stride(reserved_));
    reserved_ = 0;
    control_->readable_seq.fetch_add(1);
    if (control_->reader_waiting.load()) futex_wake(control_->readable_seq, 1);
}

bool ShmRing::try_write(const uint8_t* data, size_t size) {
    uint8_t* room = try_reserve(size);
    if (!room) return false;
    std::memcpy(room, data, size);
    commit();
    return true;
}

bool ShmRing::write(const uint8_t* data, size_t size, const Deadline& deadline) {
    uint8_t* room = reserve(size, deadline);
    if (!room) return false;
    std::memcpy(room, data, size);
    commit();
    return true;
}

std::optional<FrameView> ShmRing::try_peek() {
    if (!has_frame()) return std::nullopt;
    const uint64_t read_pos = control_->read_pos.load(std::memory_order_relaxed);
    const uint64_t write_pos = control_->write_pos.load(std::memory_order_acquire);
    const uint64_t available = write_pos - read_pos;
    if (available > capacity_ || available < kFrameHeader || read_pos % 8 != 0) {
        throw RingError("ring '" + name() + "' is damaged: inconsistent positions");
    }
    const auto* header = reinterpret_cast<const FrameHeader*>(data_ + (read_pos % capacity_));
    const size_t size = header->size;
    if (header->marker != kFrameMarker || stride(size) > available) {
        throw RingError("ring '" + name() + "' is damaged: bad frame header");
    }
    peeked_ = stride(size);
    return FrameView{reinterpret_cast<const uint8_t*>(header) + kFrameHeader, size};
}

std::optional<FrameView> ShmRing::peek(const Deadline& deadline, std::chrono::nanoseconds spin) {
    spin_until([this] { return has_frame() || closed(); }, spin, deadline);
    for (;;) {
        if (auto frame = try_peek()) return frame;
        if (closed()) return std::nullopt;
        const uint32_t seen = control_->readable_seq.load();
        control_->reader_waiting.store(1);
        if (auto frame = try_peek()) {
            control_->reader_waiting.store(0);
            return frame;
        }
        const bool in_time = futex_wait(control_->readable_seq, seen, deadline);
        control_->reader_waiting.store(0);
        if (!in_time) return try_peek();
    }
}

void ShmRing::release() {
    if (peeked_ == 0) return;
    control_->read_pos.fetch_add(peeked_);
    peeked_ = 0;
    control_->writable_seq.fetch_add(1);
    if (control_->writer_waiting.load()) futex_wake(control_->writable_seq, 1);
}

void ShmRing::close() {
    control_->closed.store(1);
    control_->readable_seq.fetch_add(1);
    control_->writable_seq.fetch_add(1);
    futex_wake(control_->readable_seq, 1);
    futex_wake(control_->writable_seq, 1);
}

bool ShmRing::closed() const { return control_->closed.load() != 0; }

}  // namespace pyserve
