#include "doorbell.hpp"

#include <climits>
#include <new>

namespace pyserve {
namespace {
constexpr uint64_t kDoorbellMagic = 0x6c6c65626f6f6431ULL;  // "1doorbell"
}

Doorbell::Doorbell(SharedMemory memory)
    : memory_(std::move(memory)), control_(reinterpret_cast<DoorbellControl*>(memory_.control())) {}

Doorbell Doorbell::create(const std::string& name) {
    SharedMemory memory = SharedMemory::create(name, sizeof(DoorbellControl), 0);
    auto* control = new (memory.control()) DoorbellControl{};
    control->magic = kDoorbellMagic;
    return Doorbell(std::move(memory));
}

Doorbell Doorbell::open(const std::string& name) {
    SharedMemory memory = SharedMemory::open(name);
    if (reinterpret_cast<const DoorbellControl*>(memory.control())->magic != kDoorbellMagic) {
        throw ShmError("not a pyserve doorbell: '" + name + "'");
    }
    return Doorbell(std::move(memory));
}

void Doorbell::ring() {
    control_->seq.fetch_add(1);
    if (control_->sleeping.load()) futex_wake(control_->seq, INT_MAX);
}

bool Doorbell::wait(uint32_t seen, const Deadline& deadline, std::chrono::nanoseconds spin) {
    if (spin_until([&] { return control_->seq.load() != seen; }, spin, deadline)) return true;
    control_->sleeping.store(1);
    bool in_time = true;
    if (control_->seq.load() == seen) in_time = futex_wait(control_->seq, seen, deadline);
    control_->sleeping.store(0);
    return in_time;
}

}  // namespace pyserve
