// One futex word in shared memory that many writers ring and one thread sleeps on.
//
// The server's core thread has to wake when any of its workers answers; a ring's own
// futex can wake only its own reader, so every worker also rings this one bell.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "futex.hpp"
#include "shared_memory.hpp"

namespace pyserve {

struct DoorbellControl {
    uint64_t magic;
    std::atomic<uint32_t> seq;       // futex word: bumped by every ring()
    std::atomic<uint32_t> sleeping;  // the waiter is (about to be) asleep
};

class Doorbell {
   public:
    static Doorbell create(const std::string& name);
    static Doorbell open(const std::string& name);

    const std::string& name() const { return memory_.name(); }
    uint32_t seq() const { return control_->seq.load(); }
    // Costs one atomic add, plus a syscall only when the waiter sleeps.
    void ring();
    // Sleeps until the bell rang after `seen` was read, first spinning for up to `spin`.
    // Returns false on timeout.
    bool wait(uint32_t seen, const Deadline& deadline,
              std::chrono::nanoseconds spin = std::chrono::nanoseconds(0));
    void unlink() { memory_.unlink(); }

   private:
    explicit Doorbell(SharedMemory memory);

    SharedMemory memory_;
    DoorbellControl* control_;
};

}  // namespace pyserve
