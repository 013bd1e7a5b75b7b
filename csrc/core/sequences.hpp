// A stateful model's sequences (TorchServe's sequence batching): the requests that share a
// `ts_request_sequence_id` run one at a time, in order, on the one worker that holds their
// state.
//
// A sequence's first request goes to whichever worker takes it, and its sequence is pinned
// there for its life. While one of its requests is queued for that worker or running, the
// next ones wait here (at most `max_queue`, TorchServe's maxSequenceJobQueueSize). A sequence
// idle for `max_idle` (sequenceMaxIdleMSec), older than `timeout` (sequenceTimeoutMSec), ended
// by its handler, or whose worker died is closed: its id is refused from then on, so that no
// request ever runs on a worker that does not hold its sequence's state.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "../common/clock.hpp"
#include "request.hpp"

namespace pyserve {

struct SequencePolicy {
    size_t max_sequences = 0;  // maxNumSequence; 0: the model is not stateful
    size_t max_queue = 1;      // maxSequenceJobQueueSize: requests waiting behind the running one
    std::chrono::milliseconds max_idle{0};  // sequenceMaxIdleMSec
    std::chrono::milliseconds timeout{0};   // sequenceTimeoutMSec; 0: none
    bool continuous = false;  // continuousBatching: the next request may go once a part came
};

class Sequences {
   public:
    // How many closed ids are remembered (and refused); older ones are forgotten.
    static constexpr size_t kRememberedClosed = 65536;

    enum class Admitted { kRelease, kWait, kQueueFull, kTooMany, kClosed };

    bool enabled() const { return policy_.max_sequences > 0; }
    const SequencePolicy& policy() const { return policy_; }
    void set_policy(const SequencePolicy& policy) { policy_ = policy; }
    size_t open() const { return sequences_.size(); }
    size_t waiting() const { return waiting_; }

    // kRelease: the request may be queued for a worker now (its sequence's, if it has one);
    // kWait: it was moved into its sequence's queue. The others are refusals.
    Admitted admit(Request& request, Clock::time_point now);
    // The worker the sequence is pinned to; 0 if none yet.
    uint64_t worker_of(uint64_t key) const;
    void pin(uint64_t key, uint64_t worker);
    // The sequence's running request was answered (or, continuous, sent its first part): the
    // next one waiting, if any, to queue for its worker.
    std::optional<Request> next(uint64_t key, Clock::time_point now);
    // Closes the sequence; returns the requests that still waited in it.
    std::vector<Request> close(uint64_t key);
    // Closes every sequence pinned to the worker; returns the requests that waited in them.
    std::vector<Request> close_worker(uint64_t worker);
    // Closes the sequences idle or timed out with nothing running or waiting.
    void expire(Clock::time_point now);
    std::vector<Request> take_where(const std::function<bool(const Request&)>& taken_out);

   private:
    struct Sequence {
        uint64_t worker = 0;
        bool busy = false;  // one of its requests is queued for a worker or running
        std::deque<Request> waiting;
        Clock::time_point started{};
        Clock::time_point last_active{};
    };
    bool expired(const Sequence& sequence, Clock::time_point now) const;
    std::vector<Request> forget(std::unordered_map<uint64_t, Sequence>::iterator found);

    SequencePolicy policy_;
    std::unordered_map<uint64_t, Sequence> sequences_;
    std::unordered_set<uint64_t> closed_;
    std::deque<uint64_t> closed_order_;
    size_t waiting_ = 0;
};

}  // namespace pyserve
