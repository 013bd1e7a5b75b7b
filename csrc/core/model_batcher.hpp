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
#include "request.hpp"
#include "sequences.hpp"

namespace pyserve {

struct BatchPolicy {
    size_t batch_size = 1;
    std::chrono::microseconds max_batch_delay{100000};
    size_t max_queue_size = 100;
    // clientTimeoutInMills: a request queued longer is answered `expired`, never run; 0: none.
    std::chrono::milliseconds client_timeout{0};
    // TorchServe's policy: a batch leaves only when full or max_batch_delay old, even if a
    // worker is idle. pyserve's default sends to an idle worker at once.
    bool wait_for_full_batch = false;
};

enum class SubmitStatus : int {
    kQueued = 0,
    kQueueFull = 1,
    kUnknownModel = 2,
    kTooLarge = 3,
    kUnknownWorker = 4,     // pinned to a worker the model does not have (any more)
    kTooManySequences = 5,  // a new sequence past maxNumSequence
    kSequenceClosed = 6,    // its sequence expired, ended, or lost its worker
    kSequenceFull = 7,      // its sequence already holds maxSequenceJobQueueSize waiting
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
    // Requests nobody waited for any more (see ModelBatcher::withdraw):
    uint64_t hung_up = 0;                    // their client hung up before their answer came
    uint64_t withdrawn_client_gone = 0;      // of those, the ones that never ran
    uint64_t withdrawn_client_timeout = 0;   // left the queue, never ran: clientTimeoutInMills
    uint64_t dropped_answers = 0;            // of those, the ones that ran: answer dropped
};

// Why a queued request leaves its queue without running.
enum class Withdrawal { kClientGone, kClientTimeout };

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
    // When the oldest request waiting for a worker (the model's or a worker's own queue)
    // arrived; kNever when none waits.
    Clock::time_point oldest_arrival() const;
    const ModelStats& stats() const { return stats_; }
    const std::vector<Worker*>& workers() const { return workers_; }
    void set_sequences(const SequencePolicy& policy) { sequences_.set_policy(policy); }
    // Closes the idle and timed-out sequences (they are also closed when next asked for).
    void expire_sequences(Clock::time_point now) { sequences_.expire(now); }
    size_t open_sequences() const { return sequences_.open(); }
    // A request of the batch was answered, finally (`more` false) or with a part; `ends`: its
    // handler ended its sequence. Lets its sequence's next request go, or closes it.
    void answered(Request& request, bool more, bool ends, Outbox& out);
    // The worker died: its sequences are closed and what waited in them answered `lost`.
    void close_sequences(uint64_t worker_id, const Answer& lost, Outbox& out);

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
    // The client of this request hung up: a queued request is withdrawn (true); one already
    // sent to a worker is marked cancelled and its worker told, which leaves it out if its
    // batch has not started (counted when the batch ends: see cancelled_request_ended); false
    // if the model holds no such request.
    bool cancel(uint64_t request_id, bool* was_running, Outbox& out);
    // A cancelled request's batch ended: it ran (its answer was dropped) or its worker left
    // it out.
    void cancelled_request_ended(bool ran);

    // The time the core's timer is armed for on this model's behalf; kNever when none.
    static constexpr Clock::time_point kNever = Clock::time_point::max();
    Clock::time_point timer_at = kNever;

   private:
    bool can_take(const Worker& worker) const;
    std::vector<Request> take_where(const std::function<bool(const Request&)>& taken_out);
    bool due(const Worker& worker, Clock::time_point now) const;
    Worker* pick_worker();
    std::vector<Request> take_batch(Worker& worker, Clock::time_point now, Outbox& out);
    Answer client_timeout_answer() const;
    // The one way a queued request leaves without running because nobody waits for it: its
    // client hung up (no answer: there is nobody to read it) or it waited past
    // clientTimeoutInMills (answered 503). Its sequence, if any, goes on without it.
    void withdraw(Request& request, Withdrawal why, Outbox& out);
    // cancel()'s two halves: a request still queued (or waiting in its sequence), and one
    // already sent to a worker.
    bool withdraw_queued(uint64_t request_id, Outbox& out);
    bool withdraw_sent(uint64_t request_id, Outbox& out);
    // Writes [kWithdraw, request_id] to the worker that holds the request.
    void tell_withdrawn(Worker& worker, uint64_t request_id, Outbox& out);
    bool send_batch(Worker& worker, std::vector<Request>& batch, Outbox& out);
    Worker* find_worker(uint64_t worker_id) const;
    // Into the queue it may be taken from: its worker's, or the model's.
    void route(Request&& request, Outbox& out);

    const uint64_t id_;
    std::mutex mutex_;
    BatchPolicy policy_;
    const size_t max_batch_bytes_;  // of the requests' payloads, so a batch fits a ring
    std::deque<Request> queue_;
    size_t queued_ = 0;  // queue_ and every worker's pinned requests
    std::vector<Worker*> workers_;
    Sequences sequences_;
    ModelStats stats_;
    uint64_t next_batch_id_ = 1;
    uint64_t dispatch_count_ = 0;
};

}  // namespace pyserve
