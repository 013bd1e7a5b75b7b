// Cross-process wait and wake on a 32-bit word in shared memory.
//
// Futexes let a sleeping reader be woken by a writer in another process with one
// syscall, and let the writer skip the syscall entirely when nobody sleeps.
#pragma once

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>

namespace pyserve {

using Clock = std::chrono::steady_clock;
using Deadline = std::optional<Clock::time_point>;

// Sleeps while `word` still holds `expected`. Returns false once `deadline` passed.
// Spurious returns are possible: callers re-check their condition in a loop.
bool futex_wait(std::atomic<uint32_t>& word, uint32_t expected, const Deadline& deadline);

// Wakes up to `count` sleepers on `word`.
void futex_wake(std::atomic<uint32_t>& word, int count);

// A deadline `seconds` from now; a negative value means "wait forever".
Deadline deadline_after(double seconds);

// How long a thread that just worked keeps looking for more before it sleeps. A futex
// sleep and wake costs tens of microseconds on virtual machines; the next request of a
// busy server usually arrives well within this window.
constexpr std::chrono::nanoseconds kDefaultSpin = std::chrono::microseconds(50);

// Tells the CPU this is a spin loop (less power, no memory-order mis-speculation). Inline:
// the spin loop below calls it sixteen times a round.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
}

// Checks `ready` until it holds, `spin` has passed or `deadline` came. Returns whether it
// held. Every round yields the core: spinning only uses time no other thread wants.
template <typename Ready>
bool spin_until(Ready&& ready, std::chrono::nanoseconds spin, const Deadline& deadline) {
    if (spin.count() <= 0) return false;
    auto until = Clock::now() + spin;
    if (deadline) until = std::min(until, *deadline);  // a due max_batch_delay is not held up
    do {
        if (ready()) return true;
        for (int i = 0; i < 16; ++i) cpu_relax();
        sched_yield();
    } while (Clock::now() < until);
    return ready();
}

}  // namespace pyserve
