#include "scheduler.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "msgpack_lite.hpp"
#include "protocol.hpp"

namespace pyserve {
namespace {

// [kBatch, batch_id, [requests...]]: fixarray(3), fixint, uint64, array32 header.
constexpr size_t kBatchFrameOverhead = 2 + msgpack::kUint64Size + msgpack::kArray32HeaderSize;

}  // namespace

Scheduler::Scheduler(std::string prefix, size_t ring_capacity)
    : prefix_(std::move(prefix)),
      ring_capacity_(ring_capacity),
      doorbell_(Doorbell::create(prefix_ + ".bell")),
      notify_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (notify_fd_.get() < 0) throw ShmError(std::string("eventfd: ") + std::strerror(errno));
    thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() { close(); }

void Scheduler::close() {
    {
        std::lock_guard lock(mutex_);
        if (stopping_) return;
        stopping_ = true;
    }
    doorbell_.ring();
    if (thread_.joinable()) thread_.join();
    std::lock_guard lock(mutex_);
    workers_.clear();  // unlinks every ring; workers still running keep their mappings
    models_.clear();   // so a late submit is kUnknownModel, not a lookup of a removed worker
    doorbell_.unlink();
}

size_t Scheduler::max_request_size() const {
    return ring_capacity_ - ShmRing::kFrameHeader - kBatchFrameOverhead;
}

Scheduler::Model& Scheduler::model(uint64_t model_id) {
    auto found = models_.find(model_id);
    if (found == models_.end()) throw std::out_of_range("unknown model id " + std::to_string(model_id));
    return found->second;
}

void Scheduler::add_model(uint64_t model_id, const BatchPolicy& policy) {
    std::lock_guard lock(mutex_);
    if (!models_.try_emplace(model_id, policy).second) {
        throw std::invalid_argument("model id " + std::to_string(model_id) + " already exists");
    }
}

void Scheduler::set_policy(uint64_t model_id, const BatchPolicy& policy) {
    {
        std::lock_guard lock(mutex_);
        model(model_id).batcher.set_policy(policy);
    }
    doorbell_.ring();  // the core thread recomputes its deadline
}

std::vector<uint64_t> Scheduler::remove_model(uint64_t model_id) {
    std::lock_guard lock(mutex_);
    auto found = models_.find(model_id);
    if (found == models_.end()) return {};
    auto ids = ids_of(found->second.batcher.drain());
    models_.erase(found);
    return ids;
}

std::vector<uint64_t> Scheduler::drain_queue(uint64_t model_id) {
    std::lock_guard lock(mutex_);
    return ids_of(model(model_id).batcher.drain());
}

size_t Scheduler::queued(uint64_t model_id) const {
    std::lock_guard lock(mutex_);
    auto found = models_.find(model_id);
    return found == models_.end() ? 0 : found->second.batcher.size();
}

size_t Scheduler::in_flight(uint64_t worker_id) const {
    std::lock_guard lock(mutex_);
    auto found = workers_.find(worker_id);
    return found == workers_.end() ? 0 : found->second->in_flight.size();
}

double Scheduler::running_batch_seconds(uint64_t worker_id) const {
    std::lock_guard lock(mutex_);
    auto found = workers_.find(worker_id);
    if (found == workers_.end() || found->second->in_flight.empty()) return -1.0;
    return std::chrono::duration<double>(Clock::now() - found->second->running_since).count();
}

WorkerRingNames Scheduler::add_worker(uint64_t worker_id, uint64_t model_id,
                                      const std::string& load_frame) {
    std::lock_guard lock(mutex_);
    Model& owner = model(model_id);
    if (workers_.count(worker_id)) {
        throw std::invalid_argument("worker id " + std::to_string(worker_id) + " already exists");
    }
    const std::string base = prefix_ + ".w" + std::to_string(worker_id);
    auto worker = std::make_unique<Worker>(worker_id, model_id,
                                           ShmRing::create(base + ".req", ring_capacity_),
                                           ShmRing::create(base + ".resp", ring_capacity_));
    if (!worker->requests.try_write(reinterpret_cast<const uint8_t*>(load_frame.data()),
                                    load_frame.size())) {
        throw RingError("load frame does not fit into an empty ring");
    }
    WorkerRingNames names{worker->requests.name(), worker->responses.name()};
    workers_.emplace(worker_id, std::move(worker));
    owner.workers.push_back(worker_id);
    return names;
}

void Scheduler::stop_worker(uint64_t worker_id) {
    std::lock_guard lock(mutex_);
    auto found = workers_.find(worker_id);
    if (found == workers_.end()) return;
    Worker& worker = *found->second;
    if (worker.state == WorkerState::kStopping) return;
    worker.state = WorkerState::kStopping;
    send_stop(worker);
}

void Scheduler::send_stop(Worker& worker) {
    uint8_t frame[2];
    msgpack::put_fixint(msgpack::put_fixarray(frame, 1), protocol::kStop);
    worker.stop_pending = !worker.requests.try_write(frame, sizeof(frame));
}

WorkerExit Scheduler::worker_exited(uint64_t worker_id, bool timed_out) {
    WorkerExit exit;
    {
        std::lock_guard lock(mutex_);
        auto found = workers_.find(worker_id);
        if (found == workers_.end()) return exit;
        Worker& worker = *found->second;
        collect(worker);  // answers written just before it died still count

        auto owner = models_.find(worker.model_id);
        std::vector<Request> retry;
        bool running = true;  // the first batch in_flight is the one the worker was running
        for (auto& [batch_id, batch] : worker.in_flight) {
            for (Request& request : batch) {
                if (owner == models_.end()) {
                    exit.failed.push_back(request.id);
                } else if (running && timed_out) {
                    exit.timed_out.push_back(request.id);
                } else if (running && ++request.attempts >= kMaxAttempts) {
                    exit.failed.push_back(request.id);
                } else {
                    retry.push_back(std::move(request));
                }
            }
            running = false;
        }
        workers_.erase(found);
        if (owner != models_.end()) {
            auto& ids = owner->second.workers;
            ids.erase(std::remove(ids.begin(), ids.end(), worker_id), ids.end());
            owner->second.batcher.requeue(std::move(retry));
            dispatch(owner->second, Clock::now());
        }
        signal_loop();
    }
    doorbell_.ring();
    return exit;
}

SubmitStatus Scheduler::submit(uint64_t model_id, uint64_t request_id, std::string payload) {
    bool wake_core = false;
    {
        std::lock_guard lock(mutex_);
        auto found = models_.find(model_id);
        if (found == models_.end()) return SubmitStatus::kUnknownModel;
        if (payload.size() > max_request_size()) return SubmitStatus::kTooLarge;
        Batcher& batcher = found->second.batcher;
        const bool was_empty = batcher.empty();
        const auto now = Clock::now();
        if (!batcher.push(Request{request_id, std::move(payload), now, 0})) {
            return SubmitStatus::kQueueFull;
        }
        dispatch(found->second, now);
        // A request left waiting in an empty queue sets a new batch deadline.
        wake_core = was_empty && !batcher.empty();
    }
    if (wake_core) doorbell_.ring();
    return SubmitStatus::kQueued;
}

std::vector<Completion> Scheduler::take_completions() {
    std::vector<Completion> taken;
    std::lock_guard lock(mutex_);
    taken.swap(completions_);
    loop_signalled_ = false;
    uint64_t count;  // one read resets the (non-semaphore) counter; EAGAIN when already 0
    (void)!::read(notify_fd_.get(), &count, sizeof(count));
    return taken;
}

void Scheduler::signal_loop() {
    if (completions_.empty() || loop_signalled_) return;
    loop_signalled_ = true;
    const uint64_t one = 1;
    // The counter cannot overflow: it is read back every time the flag is cleared.
    [[maybe_unused]] auto written = ::write(notify_fd_.get(), &one, sizeof(one));
}

Scheduler::Worker* Scheduler::pick_worker(const Model& model) {
    Worker* best = nullptr;
    for (uint64_t id : model.workers) {
        Worker& worker = *workers_.at(id);
        if (worker.state != WorkerState::kReady || worker.ring_full ||
            worker.in_flight.size() >= kMaxBatchesInFlight) {
            continue;
        }
        // Fewest batches first; among equals the one that waited longest, so that
        // light traffic still spreads over every worker.
        if (!best || worker.in_flight.size() < best->in_flight.size() ||
            (worker.in_flight.size() == best->in_flight.size() &&
             worker.last_dispatch < best->last_dispatch)) {
            best = &worker;
        }
    }
    return best;
}

void Scheduler::dispatch(Model& model, Clock::time_point now) {
    while (!model.batcher.empty()) {
        Worker* worker = pick_worker(model);
        if (!worker || !model.batcher.ready(now, worker->in_flight.empty())) return;
        std::vector<Request> batch = model.batcher.take(max_request_size());
        if (!send_batch(*worker, batch)) model.batcher.requeue(std::move(batch));
    }
}

bool Scheduler::send_batch(Worker& worker, std::vector<Request>& batch) {
    size_t size = kBatchFrameOverhead;
    for (const Request& request : batch) size += request.payload.size();
    uint8_t* out = worker.requests.try_reserve(size);
    if (!out) {
        worker.ring_full = true;
        return false;
    }
    const uint64_t batch_id = next_batch_id_++;
    out = msgpack::put_fixarray(out, 3);
    out = msgpack::put_fixint(out, protocol::kBatch);
    out = msgpack::put_uint64(out, batch_id);
    out = msgpack::put_array32(out, static_cast<uint32_t>(batch.size()));
    for (const Request& request : batch) {
        std::memcpy(out, request.payload.data(), request.payload.size());
        out += request.payload.size();
    }
    worker.requests.commit();
    worker.last_dispatch = ++dispatch_count_;
    if (worker.in_flight.empty()) worker.running_since = Clock::now();
    worker.in_flight.emplace(batch_id, std::move(batch));
    return true;
}

void Scheduler::collect(Worker& worker) {
    if (worker.broken) return;
    try {
        while (auto frame = worker.responses.try_peek()) {
            handle_frame(worker, *frame);
            worker.responses.release();
        }
        if (worker.stop_pending) send_stop(worker);
    } catch (const std::exception& error) {
        // Nothing more from this worker can be trusted; Python stops it, and its
        // requests are then handled as for any worker that died.
        worker.broken = true;
        worker.state = WorkerState::kFailed;
        completions_.push_back({worker.id, protocol::kBroken, error.what()});
    }
}

void Scheduler::handle_frame(Worker& worker, const FrameView& view) {
    // Copied first and checked on the copy: the worker can still write to the ring, and
    // Python must get exactly the bytes that were checked.
    std::string frame(reinterpret_cast<const char*>(view.data), view.size);
    const protocol::ResponseFrame parsed =
        protocol::parse_response_frame(reinterpret_cast<const uint8_t*>(frame.data()), frame.size());
    switch (parsed.kind) {
        case protocol::kLoaded:
            if (worker.state == WorkerState::kStarting) worker.state = WorkerState::kReady;
            break;
        case protocol::kLoadFailed:
            worker.state = WorkerState::kFailed;
            break;
        case protocol::kResults:
            if (!worker.in_flight.count(parsed.batch_id)) {
                throw msgpack::FormatError("results for a batch the worker does not hold");
            }
            if (parsed.done) {
                worker.in_flight.erase(parsed.batch_id);
                worker.running_since = Clock::now();  // the next batch, if any, starts now
            }
            break;
    }
    worker.ring_full = false;
    completions_.push_back({worker.id, parsed.kind, std::move(frame)});
}

Deadline Scheduler::next_deadline() {
    Deadline next;
    for (auto& [id, model] : models_) {
        auto due = model.batcher.deadline();
        if (due && pick_worker(model) && (!next || *due < *next)) next = due;
    }
    return next;
}

void Scheduler::run() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        const uint32_t seen = doorbell_.seq();
        Deadline next;
        try {
            for (auto& [id, worker] : workers_) collect(*worker);
            const auto now = Clock::now();
            for (auto& [id, model] : models_) dispatch(model, now);
            next = next_deadline();
        } catch (const std::exception& error) {
            // Worker id 0 is the server itself; the thread must outlive any one failure.
            completions_.push_back({0, protocol::kBroken, error.what()});
        }
        signal_loop();
        lock.unlock();
        doorbell_.wait(seen, next, kDefaultSpin);
        lock.lock();
    }
}

std::vector<uint64_t> Scheduler::ids_of(const std::vector<Request>& requests) {
    std::vector<uint64_t> ids;
    ids.reserve(requests.size());
    for (const Request& request : requests) ids.push_back(request.id);
    return ids;
}

}  // namespace pyserve
