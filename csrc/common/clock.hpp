// The one clock every part of pyserve's native code measures with, and deadlines on it.
#pragma once

#include <chrono>
#include <optional>

namespace pyserve {

// CLOCK_MONOTONIC on Linux: the clock Python's time.monotonic() reads too.
using Clock = std::chrono::steady_clock;
// No value means "wait for ever".
using Deadline = std::optional<Clock::time_point>;

// A deadline `seconds` from now; a negative value means "wait for ever". Past a century the
// deadline is for ever too: Clock::now() plus a huge value would overflow.
inline Deadline deadline_after(double seconds) {
    constexpr double kForever = 100.0 * 365 * 24 * 3600;
    if (seconds < 0 || !(seconds < kForever)) return std::nullopt;
    return Clock::now() +
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

}  // namespace pyserve
