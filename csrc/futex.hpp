// Cross-process wait and wake on a 32-bit word in shared memory.
//
// Futexes let a sleeping reader be woken by a writer in another process with one
// syscall, and let the writer skip the syscall entirely when nobody sleeps.
#pragma once

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

}  // namespace pyserve
