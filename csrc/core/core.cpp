#include "core.hpp"

#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "errors.hpp"

namespace pyserve {
namespace {

constexpr uint64_t kWakeToken = 1ULL << 60;
constexpr uint64_t kWorkerTag = 2ULL << 60;
constexpr uint64_t kFrontendTag = 3ULL << 60;
constexpr uint64_t kTagMask = 0xfULL << 60;
constexpr uint32_t kDropped = UINT32_MAX;  // a route for an answer nobody waits for
// [kBatch, batch_id, [requests...]]: fixarray(3), fixint, uint64, array32 header.
constexpr size_t kBatchFrameOverhead = 2 + msgpack::kUint64Size + msgpack::kArray32HeaderSize;

std::string left_out_body() {
    return error_body(500, "InternalServerException",
                      "The worker finished this request's batch without answering it");
}

[[noreturn]] void os_fail(const char* what) { throw ShmError(std::string(what) + ": " + std::strerror(errno)); }

}  // namespace

Core::Core(size_t ring_capacity)
    : ring_capacity_((ring_capacity + page_size() - 1) / page_size() * page_size()),
      epoll_(::epoll_create1(EPOLL_CLOEXEC)),
      wake_(make_eventfd()) {
    if (!epoll_) os_fail("epoll_create1");
    if (ring_capacity_ < Ring::kInitialCommit) throw std::invalid_argument("ring capacity too small");
    local_.notify = make_eventfd();
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.u64 = kWakeToken;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &event) != 0) os_fail("epoll_ctl");
    thread_ = std::thread([this] { run(); });
}

Core::~Core() { close(); }

void Core::close() {
    if (stopping_.exchange(true)) return;
    signal_eventfd(wake_.get());
    if (thread_.joinable()) thread_.join();
    std::unique_lock registry(registry_);
    frontends_.clear();
    workers_.clear();
    models_.clear();
}

size_t Core::max_request_size() const { return ring_capacity_ - Ring::kFrameHeader - kBatchFrameOverhead; }

ModelBatcher* Core::find_model(uint64_t model_id) const {
    auto found = models_.find(model_id);
    return found == models_.end() ? nullptr : found->second.get();
}

Worker* Core::find_worker(uint64_t worker_id) const {
    auto found = workers_.find(worker_id);
    return found == workers_.end() ? nullptr : found->second.get();
}

void Core::watch(int fd, uint64_t token) {
    // Edge-triggered: the counter is never read, each signal is one wake-up.
    epoll_event event{};
    event.events = EPOLLIN | EPOLLET;
    event.data.u64 = token;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0) os_fail("epoll_ctl");
}

void Core::unwatch(int fd) { ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr); }

// ---- models ------------------------------------------------------------------------------

void Core::add_model(uint64_t model_id, const BatchPolicy& policy) {
    auto model = std::make_unique<ModelBatcher>(model_id, policy, max_request_size());
    std::unique_lock registry(registry_);
    if (!models_.try_emplace(model_id, std::move(model)).second) {
        throw std::invalid_argument("model id " + std::to_string(model_id) + " already exists");
    }
}

void Core::set_policy(uint64_t model_id, const BatchPolicy& policy) {
    std::shared_lock registry(registry_);
    ModelBatcher* model = find_model(model_id);
    if (!model) throw std::out_of_range("unknown model id " + std::to_string(model_id));
    Outbox out;
    {
        std::lock_guard lock(model->mutex());
        model->set_policy(policy);
        model->timer_at = ModelBatcher::kNever;  // the deadline may now be earlier or later
        model->dispatch(Clock::now(), out);
        arm(*model);
    }
    flush(out);
}

void Core::set_sequences(uint64_t model_id, const SequencePolicy& policy) {
    std::shared_lock registry(registry_);
    ModelBatcher* model = find_model(model_id);
    if (!model) throw std::out_of_range("unknown model id " + std::to_string(model_id));
    std::lock_guard lock(model->mutex());
    model->set_sequences(policy);
}

size_t Core::expire_sequences(uint64_t model_id) {
    std::shared_lock registry(registry_);
    ModelBatcher* model = find_model(model_id);
    if (!model) return 0;
    std::lock_guard lock(model->mutex());
    model->expire_sequences(Clock::now());
    return model->open_sequences();
}

void Core::remove_model(uint64_t model_id, const Answer& answer) {
    std::unique_lock registry(registry_);
    auto found = models_.find(model_id);
    if (found == models_.end()) return;
    if (!found->second->workers().empty()) {
        throw std::logic_error("model id " + std::to_string(model_id) + " still has workers");
    }
    Outbox out;
    for (const Request& request : found->second->take_all()) out.fail(request, answer);
    models_.erase(found);
    flush(out);
}

size_t Core::fail_queued(uint64_t model_id, const Answer& answer) {
    std::shared_lock registry(registry_);
    ModelBatcher* model = find_model(model_id);
    if (!model) return 0;
    Outbox out;
    {
        std::lock_guard lock(model->mutex());
        for (const Request& request : model->take_all()) out.fail(request, answer);
    }
    flush(out);
    return out.failures.size();
}

size_t Core::expire_queued(uint64_t model_id, double seconds, const Answer& answer) {
    std::shared_lock registry(registry_);
    ModelBatcher* model = find_model(model_id);
    if (!model) return 0;
    const auto cutoff = Clock::now() - std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(std::max(seconds, 0.0)));
    Outbox out;
    {
        std::lock_guard lock(model->mutex());
        for (const Request& request : model->take_older(cutoff)) out.fail(request, answer);
    }
    flush(out);
    return out.failures.size();
}

size_t Core::queued(uint64_t model_id) const {
    std::shared_lock registry(registry_);
    ModelBatcher* model = find_model(model_id);
    if (!model) return 0;
    std::lock_guard lock(model->mutex());
    return model->queued();
}

double Core::oldest_queued_seconds(uint64_t model_id) const {
    std::shared_lock registry(registry_);
    ModelBatcher* model = find_model(model_id);
    if (!model) return 0;
    std::lock_guard lock(model->mutex());
    const Clock::time_point oldest = model->oldest_arrival();
    if (oldest == ModelBatcher::kNever) return 0;
    return std::chrono::duration<double>(Clock::now() - oldest).count();
}

ModelStats Core::stats(uint64_t model_id) const {
    std::shared_lock registry(registry_);
    ModelBatcher* model = find_model(model_id);
    if (!model) return {};
    std::lock_guard lock(model->mutex());
    return model->stats();
}

// ---- workers -----------------------------------------------------------------------------

PeerFds Core::add_worker(uint64_t worker_id, uint64_t model_id, const std::string& load_frame) {
    auto worker = std::make_unique<Worker>(worker_id, model_id, ring_capacity_);
    bool wake = false;
    const auto written = worker->channel.down().write(reinterpret_cast<const uint8_t*>(load_frame.data()),
                                                      load_frame.size(), &wake);
    if (written != WriteStatus::kWritten) throw RingError("the load frame does not fit the worker's channel");
    std::unique_lock registry(registry_);
    ModelBatcher* model = find_model(model_id);
    if (!model) throw std::out_of_range("unknown model id " + std::to_string(model_id));
    if (workers_.count(worker_id)) {
        throw std::invalid_argument("worker id " + std::to_string(worker_id) + " already exists");
    }
    watch(worker->channel.up_event(), kWorkerTag | worker_id);
    const PeerFds fds = worker->channel.peer_fds();
    {
        std::lock_guard lock(model->mutex());
        model->add_worker(worker.get());
    }
    workers_.emplace(worker_id, std::move(worker));
    return fds;
}

namespace {

// Writes [kStop]; false when the ring has no room (it is written after the next frame read).
bool send_stop(Worker& worker, bool* wake) {
    uint8_t frame[2];
    msgpack::put_fixint(msgpack::put_fixarray(frame, 1), frames::kStop);
    worker.stop_pending = worker.channel.down().write(frame, sizeof(frame), wake) != WriteStatus::kWritten;
    return !worker.stop_pending;
}

}  // namespace

void Core::stop_worker(uint64_t worker_id) {
    std::shared_lock registry(registry_);
    Worker* worker = find_worker(worker_id);
    ModelBatcher* model = worker ? find_model(worker->model_id) : nullptr;
    if (!model) return;
    bool wake = false;
    {
        std::lock_guard lock(model->mutex());
        if (worker->state == Worker::State::kStopping) return;
        worker->state = Worker::State::kStopping;
        send_stop(*worker, &wake);
    }
    if (wake) worker->channel.wake_peer();
}

ExitReport Core::worker_exited(uint64_t worker_id, bool timed_out, const Answer& died_twice,
                               const Answer& timed_out_answer, const Answer& lost) {
    ExitReport report;
    std::unique_lock registry(registry_);
    Worker* worker = find_worker(worker_id);
    ModelBatcher* model = worker ? find_model(worker->model_id) : nullptr;
    if (!model) return report;  // a worker lives no longer than its model (remove_model)
    Outbox out;
    {
        std::lock_guard reader(worker->reader);
        collect(*worker, *model, out);  // answers written just before it died still count
    }
    {
        std::lock_guard lock(model->mutex());
        std::vector<Request> retry;
        report.was_running = !worker->in_flight.empty();
        bool running = true;  // the first batch in flight is the one the worker was running
        for (Batch& batch : worker->in_flight) {
            for (Request& request : batch.requests) {
                if (request.answered || request.cancelled) continue;
                if (running && timed_out) {
                    out.fail(request, timed_out_answer);
                    ++report.timed_out;
                } else if (request.worker == worker_id || (running && ++request.attempts >= kMaxAttempts)) {
                    const Answer& answer = request.worker == worker_id ? lost : died_twice;
                    out.fail(request, answer);
                    ++report.failed;
                } else {
                    retry.push_back(std::move(request));
                }
            }
            running = false;
        }
        for (const Request& request : worker->pinned) out.fail(request, lost);
        report.failed += worker->pinned.size();
        model->remove_worker(worker);
        model->close_sequences(worker_id, lost, out);
        report.requeued = retry.size();
        model->requeue(std::move(retry));
        model->dispatch(Clock::now(), out);
        arm(*model);
    }
    unwatch(worker->channel.up_event());
    flush(out);  // before the worker goes: `out` may name it
    workers_.erase(worker_id);
    return report;
}

size_t Core::in_flight(uint64_t worker_id) const {
    std::shared_lock registry(registry_);
    Worker* worker = find_worker(worker_id);
    ModelBatcher* model = worker ? find_model(worker->model_id) : nullptr;
    if (!model) return 0;
    std::lock_guard lock(model->mutex());
    return worker->in_flight.size();
}

double Core::running_batch_seconds(uint64_t worker_id) const {
    std::shared_lock registry(registry_);
    Worker* worker = find_worker(worker_id);
    ModelBatcher* model = worker ? find_model(worker->model_id) : nullptr;
    if (!model) return -1.0;
    std::lock_guard lock(model->mutex());
    if (worker->in_flight.empty()) return -1.0;
    return std::chrono::duration<double>(Clock::now() - worker->running_since).count();
}

// ---- frontends ---------------------------------------------------------------------------

std::pair<uint32_t, PeerFds> Core::add_frontend() {
    std::unique_lock registry(registry_);
    if (next_origin_ > kMaxOrigin) throw std::overflow_error("no frontend origins left");
    const uint32_t origin = next_origin_;
    auto frontend = std::make_unique<Frontend>(origin, ring_capacity_);
    watch(frontend->channel.up_event(), kFrontendTag | origin);
    const PeerFds fds = frontend->channel.peer_fds();
    frontends_.emplace(origin, std::move(frontend));
    ++next_origin_;
    return {origin, fds};
}

void Core::remove_frontend(uint32_t origin) {
    std::unique_lock registry(registry_);
    auto found = frontends_.find(origin);
    if (found == frontends_.end()) return;
    for (auto& [id, model] : models_) {
        std::lock_guard lock(model->mutex());
        model->take_origin(origin);  // nobody waits for them any more
    }
    unwatch(found->second->channel.up_event());
    frontends_.erase(found);
}

// ---- requests ----------------------------------------------------------------------------

SubmitStatus Core::enqueue(ModelBatcher& model, Request&& request, Outbox& out) {
    std::lock_guard lock(model.mutex());
    const SubmitStatus status = model.push(std::move(request));
    if (status == SubmitStatus::kQueued) {
        model.dispatch(Clock::now(), out);
        arm(model);
    }
    return status;
}

SubmitStatus Core::submit(uint64_t model_id, uint64_t request_id, std::string payload, uint64_t worker,
                          uint64_t sequence) {
    if (request_id >> kOriginShift != 0) throw std::invalid_argument("request id out of range");
    if (payload.size() > max_request_size()) return SubmitStatus::kTooLarge;
    std::shared_lock registry(registry_);
    ModelBatcher* model = find_model(model_id);
    if (!model) return SubmitStatus::kUnknownModel;
    Outbox out;
    const SubmitStatus status =
        enqueue(*model, Request{request_id, 0, worker, std::move(payload), Clock::now(), sequence}, out);
    flush(out);
    return status;
}

CancelResult Core::cancel(uint64_t model_id, uint64_t request_id) {
    std::shared_lock registry(registry_);
    ModelBatcher* model = find_model(model_id);
    if (!model) return CancelResult::kUnknown;
    Outbox out;
    bool running = false;
    const bool found = cancel_in(*model, request_id, &running, out);
    flush(out);
    if (!found) return CancelResult::kUnknown;
    return running ? CancelResult::kRunning : CancelResult::kRemoved;
}

bool Core::cancel_in(ModelBatcher& model, uint64_t request_id, bool* running, Outbox& out) {
    std::lock_guard lock(model.mutex());
    const bool found = model.cancel(request_id, running, out);
    model.dispatch(Clock::now(), out);
    arm(model);
    return found;
}

void Core::submit_from(Frontend& frontend, const uint8_t* data, size_t size, Outbox& out) {
    if (size >= sizeof(frames::SubmitHeader) && data[0] == frames::kSubmit) {
        frames::SubmitHeader header;
        std::memcpy(&header, data, sizeof(header));
        if (header.request_id >> kOriginShift != frontend.origin) {
            push_event({0, frames::kBroken, "frontend " + std::to_string(frontend.origin) +
                                                " sent a request id outside its range"});
            return;
        }
        const size_t payload_size = size - sizeof(header);
        SubmitStatus status = SubmitStatus::kTooLarge;
        if (payload_size <= max_request_size()) {
            ModelBatcher* model = find_model(header.model_id);
            status = model ? enqueue(*model,
                                     Request{header.request_id, frontend.origin, header.worker,
                                             std::string(reinterpret_cast<const char*>(data) + sizeof(header),
                                                         payload_size),
                                             Clock::now(), header.sequence},
                                     out)
                           : SubmitStatus::kUnknownModel;
        }
        if (status != SubmitStatus::kQueued) {
            deliver(frontend.origin, frames::refused_frame(header.request_id, static_cast<int>(status)));
        }
    } else if (size == sizeof(frames::CancelHeader) && data[0] == frames::kCancel) {
        frames::CancelHeader header;
        std::memcpy(&header, data, sizeof(header));
        ModelBatcher* model = find_model(header.model_id);
        bool running = false;
        if (model && header.request_id >> kOriginShift == frontend.origin) {
            cancel_in(*model, header.request_id, &running, out);
        }
    } else {
        push_event({0, frames::kBroken, "frontend " + std::to_string(frontend.origin) +
                                            " sent a frame of unknown kind"});
    }
}

Taken Core::take() {
    Taken taken;
    std::lock_guard lock(local_.mutex);
    taken.replies.swap(local_.replies);
    taken.events.swap(local_.events);
    local_.signalled = false;
    clear_eventfd(local_.notify.get());
    return taken;
}

// ---- routing -----------------------------------------------------------------------------

void Core::push_event(Event event) {
    // Handler metrics come with every batch and are read when metrics are scraped: they wait
    // for the next take() instead of waking the server's event loop once per batch.
    const bool wake = event.kind != frames::kMetrics;
    std::lock_guard lock(local_.mutex);
    local_.events.push_back(std::move(event));
    if (wake && !std::exchange(local_.signalled, true)) signal_eventfd(local_.notify.get());
}

void Core::deliver(uint32_t origin, std::string frame) {
    if (origin == 0) {
        std::lock_guard lock(local_.mutex);
        local_.replies.push_back(std::move(frame));
        if (!std::exchange(local_.signalled, true)) signal_eventfd(local_.notify.get());
        return;
    }
    auto found = frontends_.find(origin);
    if (found == frontends_.end()) return;  // the frontend is gone, and so is whoever waited
    Frontend& frontend = *found->second;
    std::lock_guard lock(frontend.writer);
    frontend.overflow.push_back(std::move(frame));
    if (frontend.overflow.size() == 1) write_overflow(frontend);  // else it waits for room
}

void Core::flush_overflow(Frontend& frontend) {
    std::lock_guard lock(frontend.writer);
    write_overflow(frontend);
}

void Core::write_overflow(Frontend& frontend) {
    Ring& ring = frontend.channel.down();
    bool wake_any = false;
    while (!frontend.overflow.empty()) {
        const std::string& next = frontend.overflow.front();
        const auto* bytes = reinterpret_cast<const uint8_t*>(next.data());
        bool wake = false;
        WriteStatus status = ring.write(bytes, next.size(), &wake);
        if (status == WriteStatus::kNoRoom && ring.wait_for_room(next.size())) {
            status = ring.write(bytes, next.size(), &wake);
        }
        wake_any |= wake;
        if (status != WriteStatus::kWritten) break;  // the frontend wakes us when it reads
        frontend.overflow.pop_front();
    }
    if (wake_any) frontend.channel.wake_peer();
}

void Core::flush(Outbox& out) {
    for (Worker* worker : out.wake) worker->channel.wake_peer();
    out.wake.clear();
    // One reply frame per origin and answer.
    std::vector<bool> sent(out.failures.size(), false);
    for (size_t first = 0; first < out.failures.size(); ++first) {
        if (sent[first]) continue;
        const auto& lead = out.failures[first];
        std::vector<size_t> group;
        for (size_t k = first; k < out.failures.size(); ++k) {
            if (!sent[k] && out.failures[k].origin == lead.origin) group.push_back(k);
        }
        std::string frame;
        frames::begin_reply(frame, 0, group.size());
        for (size_t k : group) {
            sent[k] = true;
            const Answer& answer = out.failures[k].answer;
            frames::put_error_result(frame, out.failures[k].id, answer.status, answer.body, answer.headers);
        }
        deliver(lead.origin, std::move(frame));
    }
}

// ---- the core thread ---------------------------------------------------------------------

void Core::arm(ModelBatcher& model) {
    const Deadline due = model.deadline();
    if (!due || *due >= model.timer_at) return;
    model.timer_at = *due;
    bool wake;
    {
        std::lock_guard lock(timers_mutex_);
        timers_.emplace(*due, model.id());
        wake = due->time_since_epoch().count() < sleeping_until_.load(std::memory_order_relaxed);
    }
    if (wake) signal_eventfd(wake_.get());
}

int Core::wait(epoll_event* events, int capacity, bool spin) {
    Clock::time_point next;
    {
        std::lock_guard lock(timers_mutex_);
        next = timers_.empty() ? Clock::time_point::max() : timers_.top().first;
        // While spinning the thread looks again at once: nobody needs to wake it.
        const Clock::time_point wakes_at = spin ? Clock::time_point::min() : next;
        sleeping_until_.store(wakes_at.time_since_epoch().count(), std::memory_order_relaxed);
    }
    timespec timeout{};
    timespec* until = &timeout;
    if (!spin) {
        if (next == Clock::time_point::max()) {
            until = nullptr;
        } else {
            const auto left = std::max(next - Clock::now(), Clock::duration::zero());
            const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(left);
            timeout.tv_sec = static_cast<time_t>(seconds.count());
            timeout.tv_nsec = static_cast<long>(std::chrono::nanoseconds(left - seconds).count());
        }
    }
    // Awake from here on: a deadline armed now is seen before the next sleep.
    struct Awake {
        std::atomic<Clock::rep>& sleeping_until;
        ~Awake() { sleeping_until.store(Clock::time_point::min().time_since_epoch().count()); }
    } awake{sleeping_until_};
#ifdef SYS_epoll_pwait2
    static bool has_pwait2 = true;
    if (has_pwait2) {
        const long ready = ::syscall(SYS_epoll_pwait2, epoll_.get(), events, capacity, until, nullptr, 0);
        if (ready >= 0 || errno != ENOSYS) return static_cast<int>(ready);
        has_pwait2 = false;
    }
#endif
    // Without epoll_pwait2 (Linux < 5.11) deadlines are met to the millisecond, rounded up.
    int milliseconds = -1;
    if (until) {
        milliseconds = static_cast<int>(std::min<int64_t>(
            (timeout.tv_sec * 1000000000LL + timeout.tv_nsec + 999999) / 1000000, 1 << 30));
    }
    return ::epoll_wait(epoll_.get(), events, capacity, milliseconds);
}

void Core::run() {
    ::pthread_setname_np(::pthread_self(), "pyserve-core");
    std::array<epoll_event, 64> events;
    auto spin_until = Clock::now();
    while (!stopping_.load()) {
        try {
            const bool spin = Clock::now() < spin_until;
            const int ready = wait(events.data(), static_cast<int>(events.size()), spin);
            if (ready < 0 && errno != EINTR) os_fail("epoll_wait");
            for (int k = 0; k < ready; ++k) {
                const uint64_t token = events[k].data.u64;
                const uint64_t id = token & ~kTagMask;
                switch (token & kTagMask) {
                    case kWorkerTag: on_worker(id); break;
                    case kFrontendTag: on_frontend(static_cast<uint32_t>(id)); break;
                    default: clear_eventfd(wake_.get()); break;
                }
            }
            on_timers();
            if (ready > 0) {
                spin_until = Clock::now() + default_spin();
            } else if (spin) {
                for (int i = 0; i < 16; ++i) cpu_relax();
                ::sched_yield();
            }
        } catch (const std::exception& error) {
            // Worker id 0 is the server itself; the thread must outlive any one failure.
            push_event({0, frames::kBroken, error.what()});
        }
    }
}

void Core::on_timers() {
    const auto now = Clock::now();
    std::vector<Timer> due;
    {
        std::lock_guard lock(timers_mutex_);
        while (!timers_.empty() && timers_.top().first <= now) {
            due.push_back(timers_.top());
            timers_.pop();
        }
    }
    if (due.empty()) return;
    std::shared_lock registry(registry_);
    Outbox out;
    for (const auto& [when, model_id] : due) {
        ModelBatcher* model = find_model(model_id);
        if (!model) continue;
        std::lock_guard lock(model->mutex());
        if (model->timer_at != when) continue;  // a later or earlier timer replaced this one
        model->timer_at = ModelBatcher::kNever;
        model->dispatch(now, out);
        arm(*model);
    }
    flush(out);
}

void Core::on_worker(uint64_t worker_id) {
    std::shared_lock registry(registry_);
    Worker* worker = find_worker(worker_id);
    ModelBatcher* model = worker ? find_model(worker->model_id) : nullptr;
    if (!model) return;
    Outbox out;
    {
        std::lock_guard reader(worker->reader);
        collect(*worker, *model, out);
    }
    flush(out);
}

void Core::on_frontend(uint32_t origin) {
    std::shared_lock registry(registry_);
    auto found = frontends_.find(origin);
    if (found == frontends_.end()) return;
    Frontend& frontend = *found->second;
    flush_overflow(frontend);  // it may have woken us because it read replies
    Outbox out;
    Ring& ring = frontend.channel.up();
    try {
        while (auto view = ring.peek()) {
            submit_from(frontend, view->data, view->size, out);
            if (ring.release()) frontend.channel.wake_peer();
        }
    } catch (const RingError& error) {
        push_event({0, frames::kBroken, "frontend " + std::to_string(origin) + ": " + error.what()});
    }
    flush(out);
}

void Core::collect(Worker& worker, ModelBatcher& model, Outbox& out) {
    if (!worker.broken) {
        try {
            Ring& ring = worker.channel.up();
            while (auto view = ring.peek()) {
                // Copied first and checked on the copy: the worker can still write to the
                // ring, and Python must get exactly the bytes that were checked.
                std::string frame(reinterpret_cast<const char*>(view->data), view->size);
                if (ring.release()) worker.channel.wake_peer();
                handle_worker_frame(worker, model, frame, out);
            }
        } catch (const std::exception& error) {
            // Nothing more from this worker can be trusted; Python kills it, and its
            // requests are then handled as for any worker that died.
            worker.broken = true;
            {
                std::lock_guard lock(model.mutex());
                worker.state = Worker::State::kFailed;
            }
            push_event({worker.id, frames::kBroken, error.what()});
        }
    }
    // A batch finished, or the worker read a frame and freed room: more may go out.
    std::lock_guard lock(model.mutex());
    worker.ring_full = false;
    bool wake = false;
    if (worker.stop_pending && send_stop(worker, &wake) && wake) out.wake.push_back(&worker);
    model.dispatch(Clock::now(), out);
    arm(model);
}

void Core::handle_worker_frame(Worker& worker, ModelBatcher& model, const std::string& frame, Outbox& out) {
    const auto* bytes = reinterpret_cast<const uint8_t*>(frame.data());
    const frames::WorkerFrame parsed = frames::parse_worker_frame(bytes, frame.size());
    if (parsed.kind == frames::kMetricUpdates) {
        push_event({worker.id, frames::kMetrics,
                    frame.substr(parsed.metrics_begin, parsed.metrics_end - parsed.metrics_begin)});
        return;
    }
    if (parsed.kind != frames::kResults) {
        {
            std::lock_guard lock(model.mutex());
            if (parsed.kind == frames::kLoaded && worker.state == Worker::State::kStarting) {
                worker.state = Worker::State::kReady;
            } else if (parsed.kind == frames::kLoadFailed) {
                worker.state = Worker::State::kFailed;
            }
        }
        push_event({worker.id, parsed.kind, frame});
        return;
    }
    // Where each result goes, decided under the model's mutex, sent after it.
    std::vector<uint32_t> routes(parsed.results.size(), kDropped);
    {
        std::lock_guard lock(model.mutex());
        auto batch = std::find_if(worker.in_flight.begin(), worker.in_flight.end(),
                                  [&](const Batch& b) { return b.id == parsed.batch_id; });
        if (batch == worker.in_flight.end()) {
            throw msgpack::FormatError("results for batch " + std::to_string(parsed.batch_id) +
                                       ", which the worker does not hold");
        }
        // Checked whole before anything is routed: a frame is taken or refused as one.
        std::vector<size_t> owners(parsed.results.size());
        std::vector<bool> final_here(batch->requests.size(), false);
        for (size_t i = 0; i < parsed.results.size(); ++i) {
            const frames::ResultSpan& span = parsed.results[i];
            size_t index = i < batch->requests.size() && batch->requests[i].id == span.id ? i : SIZE_MAX;
            for (size_t k = 0; index == SIZE_MAX && k < batch->requests.size(); ++k) {
                if (batch->requests[k].id == span.id) index = k;
            }
            if (index == SIZE_MAX || batch->requests[index].answered || final_here[index]) {
                throw msgpack::FormatError("a result for request " + std::to_string(span.id) +
                                           ", which batch " + std::to_string(parsed.batch_id) +
                                           " does not hold or was already answered");
            }
            if (!span.more) final_here[index] = true;
            owners[i] = index;
        }
        for (size_t i = 0; i < parsed.results.size(); ++i) {
            Request& request = batch->requests[owners[i]];
            const frames::ResultSpan& span = parsed.results[i];
            if (!request.cancelled) routes[i] = request.origin;
            if (!span.more) {
                request.answered = true;
                --batch->unanswered;
                if (request.cancelled) model.cancelled_request_ended(true);
            }
            model.answered(request, span.more, span.ends_sequence, out);
        }
        if (parsed.done) {
            static const Answer left_out{500, left_out_body(), {}};
            for (Request& request : batch->requests) {
                if (request.answered) continue;
                request.answered = true;
                if (request.cancelled) {
                    model.cancelled_request_ended(false);
                } else {
                    out.fail(request, left_out);
                }
                model.answered(request, false, false, out);
            }
            const bool was_running = batch == worker.in_flight.begin();
            worker.in_flight.erase(batch);
            if (was_running) worker.running_since = Clock::now();
        }
    }
    // One reply frame per origin, each result's bytes as the worker wrote them.
    std::vector<bool> sent(routes.size(), false);
    for (size_t first = 0; first < routes.size(); ++first) {
        if (sent[first] || routes[first] == kDropped) continue;
        size_t count = 0;
        for (size_t k = first; k < routes.size(); ++k) count += routes[k] == routes[first];
        std::string reply;
        frames::begin_reply(reply, parsed.started_ns, count);
        for (size_t k = first; k < routes.size(); ++k) {
            if (routes[k] != routes[first]) continue;
            sent[k] = true;
            reply.append(frame, parsed.results[k].begin, parsed.results[k].end - parsed.results[k].begin);
        }
        deliver(routes[first], std::move(reply));
    }
    if (parsed.metric_count > 0) {
        push_event({worker.id, frames::kMetrics,
                    frame.substr(parsed.metrics_begin, parsed.metrics_end - parsed.metrics_begin)});
    }
}

}  // namespace pyserve
