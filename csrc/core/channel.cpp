#include "channel.hpp"

#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace pyserve {

std::chrono::nanoseconds default_spin() {
    static const std::chrono::nanoseconds spin = [] {
        cpu_set_t cores;
        CPU_ZERO(&cores);
        const bool known = ::sched_getaffinity(0, sizeof(cores), &cores) == 0;
        return known && CPU_COUNT(&cores) >= kMinCoresToSpin ? kSpin : std::chrono::nanoseconds(0);
    }();
    return spin;
}

UniqueFd make_eventfd() {
    UniqueFd fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!fd) throw ShmError(std::string("eventfd: ") + std::strerror(errno));
    return fd;
}

void signal_eventfd(int fd) {
    const uint64_t one = 1;
    // Can only fail with EAGAIN, after 2^64 - 2 unread signals: the reader is awake anyway.
    [[maybe_unused]] auto written = ::write(fd, &one, sizeof(one));
}

void clear_eventfd(int fd) {
    uint64_t count;
    [[maybe_unused]] auto read = ::read(fd, &count, sizeof(count));  // EAGAIN when already 0
}

Channel::Channel(size_t capacity)
    : down_(Ring::create(capacity)),
      up_(Ring::create(capacity)),
      up_event_(make_eventfd()),
      down_event_(make_eventfd()) {}

PeerChannel::PeerChannel(PeerFds fds)
    : down_(Ring::attach(UniqueFd(fds.down_ring))),
      up_(Ring::attach(UniqueFd(fds.up_ring))),
      up_event_(fds.up_event),
      down_event_(fds.down_event) {}

bool PeerChannel::sleep_until(const Deadline& deadline) const {
    int timeout = -1;
    if (deadline) {
        const auto left = *deadline - Clock::now();
        if (left <= Clock::duration::zero()) return false;
        // Rounded up: waking a little late costs nothing, early would only loop.
        timeout = static_cast<int>(std::min<int64_t>(
            std::chrono::ceil<std::chrono::milliseconds>(left).count(), 1 << 30));
    }
    pollfd wait{down_event_.get(), POLLIN, 0};
    const int ready = ::poll(&wait, 1, timeout);
    if (ready < 0 && errno != EINTR) throw ShmError(std::string("poll: ") + std::strerror(errno));
    clear_wakeups();
    return ready != 0;
}

std::optional<FrameView> PeerChannel::receive(const Deadline& deadline, std::chrono::nanoseconds spin) {
    if (auto frame = down_.peek()) return frame;
    // A look (timeout 0, as a worker looks for withdrawals behind a batch) neither spins nor
    // yields: on a busy host, sched_yield would hand the worker's core to another process.
    if (deadline && *deadline <= Clock::now()) return std::nullopt;
    if (spin.count() > 0) {
        auto until = Clock::now() + spin;
        if (deadline) until = std::min(until, *deadline);
        do {
            for (int i = 0; i < 16; ++i) cpu_relax();
            ::sched_yield();  // spinning only uses time no other thread wants
            if (auto frame = down_.peek()) return frame;
        } while (Clock::now() < until);
    }
    for (;;) {
        // The counter is cleared before the ring is looked at again, so a frame written after
        // that look finds the ring empty and signals: no wake-up is lost.
        const bool woken = sleep_until(deadline);
        if (auto frame = down_.peek()) return frame;
        if (!woken) return std::nullopt;
    }
}

void PeerChannel::release() {
    if (down_.release()) signal_eventfd(up_event_.get());
}

void PeerChannel::commit() {
    if (up_.commit()) signal_eventfd(up_event_.get());
}

WriteStatus PeerChannel::try_send(const uint8_t* data, size_t size) {
    bool wake = false;
    const WriteStatus status = up_.write(data, size, &wake);
    if (wake) signal_eventfd(up_event_.get());
    return status;
}

WriteStatus PeerChannel::send(const uint8_t* data, size_t size, const Deadline& deadline) {
    for (;;) {
        const WriteStatus status = try_send(data, size);
        if (status != WriteStatus::kNoRoom) return status;
        if (up_.wait_for_room(size)) continue;
        if (!sleep_until(deadline)) return try_send(data, size);
    }
}

}  // namespace pyserve
