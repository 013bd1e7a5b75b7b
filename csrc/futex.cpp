#include "futex.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>

namespace pyserve {

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
static_assert(std::atomic<uint32_t>::is_always_lock_free);

bool futex_wait(std::atomic<uint32_t>& word, uint32_t expected, const Deadline& deadline) {
    timespec absolute{};
    const timespec* timeout = nullptr;
    if (deadline) {
        // steady_clock is CLOCK_MONOTONIC on Linux, the clock FUTEX_WAIT_BITSET measures in.
        auto since_epoch = deadline->time_since_epoch();
        auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
        auto nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - secs);
        absolute.tv_sec = static_cast<time_t>(secs.count());
        absolute.tv_nsec = static_cast<long>(nanos.count());
        timeout = &absolute;
    }
    // Not FUTEX_PRIVATE_FLAG: the word lives in memory shared between processes.
    long rc = syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_BITSET, expected,
                      timeout, nullptr, FUTEX_BITSET_MATCH_ANY);
    if (rc == -1 && errno == ETIMEDOUT) return false;
    return true;
}

void futex_wake(std::atomic<uint32_t>& word, int count) {
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE, count, nullptr, nullptr, 0);
}

Deadline deadline_after(double seconds) {
    if (seconds < 0) return std::nullopt;
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(seconds));
}

}  // namespace pyserve
