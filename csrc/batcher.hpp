// One model's queue of requests and the policy that turns it into batches.
//
// A batch is released when `batch_size` requests wait, when the oldest has waited
// `max_batch_delay`, or at once when a worker of the model is idle: waiting only pays
// while every worker is busy. The queue holds at most `max_queue_size` new requests
// (TorchServe's job_queue_size); requests re-queued after a worker died go first and
// are always taken back.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "futex.hpp"

namespace pyserve {

struct Request {
    uint64_t id = 0;
    std::string payload;  // the request's own msgpack bytes, sent to the worker as is
    Clock::time_point arrival{};
    int attempts = 0;  // dispatches lost because their worker died
};

struct BatchPolicy {
    size_t batch_size = 1;
    std::chrono::microseconds max_batch_delay{100000};
    size_t max_queue_size = 100;
};

class Batcher {
   public:
    explicit Batcher(BatchPolicy policy) : policy_(policy) {}

    const BatchPolicy& policy() const { return policy_; }
    void set_policy(BatchPolicy policy) { policy_ = policy; }
    size_t size() const { return queue_.size(); }
    bool empty() const { return queue_.empty(); }

    // False when the queue is full; the request is then left untouched.
    bool push(Request&& request);
    // Puts requests back at the head, in their order, ahead of newer ones.
    void requeue(std::vector<Request>&& requests);
    // Whether a batch should leave now, given whether the worker it would go to is idle.
    bool ready(Clock::time_point now, bool worker_idle) const;
    // When the oldest request will have waited max_batch_delay; empty when nothing waits.
    std::optional<Clock::time_point> deadline() const;
    // Up to batch_size requests from the head whose payloads sum to at most
    // `max_bytes`; always at least one request when the queue is not empty.
    std::vector<Request> take(size_t max_bytes);
    std::vector<Request> drain();

   private:
    BatchPolicy policy_;
    std::deque<Request> queue_;
};

}  // namespace pyserve
