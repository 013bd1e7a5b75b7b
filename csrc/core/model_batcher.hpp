// One model's batching policy, its queue and its workers: Triton's dynamic batch scheduler.
//
// A batch leaves for a worker when `batch_size` requests wait, when the oldest has waited
// `max_batch_delay`, or at once when the worker is idle: waiting pays only while every worker
// is busy. The queue holds at most `max_queue_size` requests (TorchServe's job_queue_size);
// requests re-queued after a worker died go first and are always taken back. A request may be
// pinned to one worker (a stateful sequence): it waits in that worker's own queue and is
// batched only there.
//
// Each model has its own mutex; nothing here takes another lock, and nothing here scans
// other models. Every method but the constructor is called with mutex() held.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../common/clock.hpp"
#include "channel.hpp"

namespace pyserve {

struct Request {
    uint64_t id = 0;
    uint32_t origin = 0;  // the frontend it came from (0: the server process itself)
    uint64_t worker = 0;  // the worker it must run on; 0: any
    std::string payload;  // the request's own msgpack bytes, sent to the worker as they are
    Clock::time_point arrival{};
    int attempts = 0;        // dispatches lost because their worker died
    bool answered = false;   // in flight: its (last) answer came
    bool cancelled = false;  // in flight: nobody waits for its answer any more
};

struct BatchPolicy {
    size_t batch_size = 1;
    std::chrono::microseconds max_batch_delay{100000};
    size_t max_queue_size = 100;
};

enum class SubmitStatus : int {
    kQueued = 0,
    kQueueFull = 1,
    kUnknownModel = 2,
    kTooLarge = 3,
    kUnknownWorker = 4,  // pinned to a worker the model does not have (any more)
};

struct Batch {
    uint64_t id;
    std::vector<Request> requests;
    size_t unanswered;
};

struct Worker {
    enum class State { kStarting, kReady, kStopping, kFailed };

    Worker(uint64_t id, uint64_t model_id, size_t ring_capacity)
        : id(id), model_id(model_id), channel(ring_capacity) {}

    const uint64_t id;
    const uint64_t model_id;
    Channel channel;
    std::mutex reader;  // held by whoever drains the up ring; before the model's mutex
    bool broken = false;  // guarded by `reader`: its frames can no longer be trusted
    // The rest is guarded by the model's mutex.
    State state = State::kStarting;
    bool ring_full = false;     // the last batch found no room; the worker wakes us when it reads
    bool stop_pending = false;  // the stop frame is still to be written
    uint64_t last_dispatch = 0;
    std::deque<Batch> in_flight;  // in the order sent; the worker runs the first
    std::deque<Request> pinned;   // queued requests that must run here
    Clock::time_point running_since{};  // when the first batch in_flight started running
};

// Counts in power-of-two buckets: index 0 holds 0, index i > 0 holds (2^(i-2), 2^(i-1)].
struct Histogram {
    std::array<uint64_t, 66> counts{};
    uint64_t sum = 0;
    void add(uint64_t value);
};

struct ModelStats {
    Histogram batch_sizes;   // requests per batch sent
    Histogram queue_depths;  // requests already queued when one arrived
};

// An error answer the core sends for a request; Python words it.
struct Answer {
    int status = 500;
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;  // e.g. Retry-After
};

// What must happen once the locks are released: workers to wake, errors to answer.
struct Outbox {
    struct Failure {
        uint64_t id;
        uint32_t origin;
        Answer answer;
    };
    std::vector<Worker*> wake;
    std::vector<Failure> failures;

    void fail(const Request& request, const Answer& answer) {
        failures.push_back({request.id, request.origin, answer});
    }
};

class ModelBatcher {
   public:
    // A worker may hold this many batches: one running and one waiting in its ring, so that
    // it never waits for a round trip to the server between two batches.
    static constexpr size_t kMaxBatchesInFlight = 2;

    ModelBatcher(uint64_t id, BatchPolicy policy, size_t max_batch_bytes)
        : id_(id), policy_(policy), max_batch_bytes_(max_batch_bytes) {}

    std::mutex& mutex() { return mutex_; }
    uint64_t id() const { return id_; }
    const BatchPolicy& policy() const { return policy_; }
    void set_policy(const BatchPolicy& policy) { policy_ = policy; }
    size_t queued() const { return queued_; }
    const ModelStats& stats() const { return stats_; }
    const std::vector<Worker*>& workers() const { return workers_; }

    void add_worker(Worker* worker) { workers_.push_back(worker); }
    // Takes the worker out; its pinned requests are the caller's to answer.
    void remove_worker(Worker* worker);

    SubmitStatus push(Request&& request);
    // Puts requests back at the head of their queues, in their order, ahead of newer ones.
    void requeue(std::vector<Request>&& requests);
    // Sends every batch that is due to a worker that can take it.
    void dispatch(Clock::time_point now, Outbox& out);
    // When the next batch falls due, if a worker could take it then; empty otherwise.
    Deadline deadline() const;
    // Takes every queued request out (pinned ones included), or only those of one origin.
    std::vector<Request> take_all();
    std::vector<Request> take_origin(uint32_t origin);
    // Takes out the queued requests that arrived before `cutoff`.
    std::vector<Request> take_older(Clock::time_point cutoff);
    // Takes a queued request out (true), or marks a running one so that its answer is
    // dropped; false if the model holds no such request.
    bool cancel(uint64_t request_id, bool* was_running);

    // The time the core's timer is armed for on this model's behalf; kNever when none.
    static constexpr Clock::time_point kNever = Clock::time_point::max();
    Clock::time_point timer_at = kNever;

   private:
    bool can_take(const Worker& worker) const;
    std::vector<Request> take_where(const std::function<bool(const Request&)>& taken_out);
    bool due(const Worker& worker, Clock::time_point now) const;
    Worker* pick_worker();
    std::vector<Request> take_batch(Worker& worker);
    bool send_batch(Worker& worker, std::vector<Request>& batch, Outbox& out);

    const uint64_t id_;
    std::mutex mutex_;
    BatchPolicy policy_;
    const size_t max_batch_bytes_;  // of the requests' payloads, so a batch fits a ring
    std::deque<Request> queue_;
    size_t queued_ = 0;  // queue_ and every worker's pinned requests
    std::vector<Worker*> workers_;
    ModelStats stats_;
    uint64_t next_batch_id_ = 1;
    uint64_t dispatch_count_ = 0;
};

}  // namespace pyserve
