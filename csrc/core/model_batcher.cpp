#include "model_batcher.hpp"

#include <algorithm>
#include <cstring>
#include <iterator>

#include "errors.hpp"
#include "frames.hpp"
#include "msgpack_lite.hpp"

namespace pyserve {
namespace {

// [kBatch, batch_id, [requests...]]: fixarray(3), fixint, uint64, array32 header.
constexpr size_t kBatchFrameOverhead = 2 + msgpack::kUint64Size + msgpack::kArray32HeaderSize;

}  // namespace

void Histogram::add(uint64_t value) {
    const size_t index = value <= 1 ? value : 65 - __builtin_clzll(value - 1);
    ++counts[index];
    sum += value;
}

void ModelBatcher::remove_worker(Worker* worker) {
    workers_.erase(std::remove(workers_.begin(), workers_.end(), worker), workers_.end());
    queued_ -= worker->pinned.size();
}

SubmitStatus ModelBatcher::push(Request&& request) {
    if (queued_ >= policy_.max_queue_size) return SubmitStatus::kQueueFull;
    if (request.sequence != 0 && sequences_.enabled()) {
        switch (sequences_.admit(request, request.arrival)) {
            case Sequences::Admitted::kRelease:
                request.worker = sequences_.worker_of(request.sequence);
                break;
            case Sequences::Admitted::kWait:
                stats_.queue_depths.add(queued_);
                ++queued_;
                return SubmitStatus::kQueued;
            case Sequences::Admitted::kQueueFull:
                return SubmitStatus::kSequenceFull;
            case Sequences::Admitted::kTooMany:
                return SubmitStatus::kTooManySequences;
            case Sequences::Admitted::kClosed:
                return SubmitStatus::kSequenceClosed;
        }
    } else {
        request.sequence = 0;
    }
    stats_.queue_depths.add(queued_);
    if (request.worker == 0) {
        queue_.push_back(std::move(request));
    } else {
        auto found = std::find_if(workers_.begin(), workers_.end(),
                                  [&](const Worker* w) { return w->id == request.worker; });
        if (found == workers_.end() || (*found)->state == Worker::State::kStopping ||
            (*found)->state == Worker::State::kFailed) {
            if (request.sequence != 0) sequences_.close(request.sequence);  // nothing waits in it
            return SubmitStatus::kUnknownWorker;
        }
        (*found)->pinned.push_back(std::move(request));
    }
    ++queued_;
    return SubmitStatus::kQueued;
}

void ModelBatcher::requeue(std::vector<Request>&& requests) {
    for (auto request = requests.rbegin(); request != requests.rend(); ++request) {
        Worker* owner = nullptr;
        for (Worker* worker : workers_) {
            if (request->worker != 0 && worker->id == request->worker) owner = worker;
        }
        request->answered = false;
        (owner ? owner->pinned : queue_).push_front(std::move(*request));
        ++queued_;
    }
}

bool ModelBatcher::can_take(const Worker& worker) const {
    // With clientTimeoutInMills a worker holds only the batch it runs: one waiting in its ring
    // would run however long it had waited there.
    const bool one_at_a_time = policy_.client_timeout.count() > 0 && !sequences_.policy().continuous;
    return worker.state == Worker::State::kReady && !worker.ring_full &&
           worker.in_flight.size() < (one_at_a_time ? 1 : kMaxBatchesInFlight);
}

bool ModelBatcher::due(const Worker& worker, Clock::time_point now) const {
    const size_t waiting = worker.pinned.size() + queue_.size();
    if (waiting == 0) return false;
    if (waiting >= policy_.batch_size) return true;
    if (worker.in_flight.empty() && !policy_.wait_for_full_batch) return true;
    Clock::time_point oldest = Clock::time_point::max();
    if (!worker.pinned.empty()) oldest = worker.pinned.front().arrival;
    if (!queue_.empty()) oldest = std::min(oldest, queue_.front().arrival);
    return now >= oldest + policy_.max_batch_delay;
}

Worker* ModelBatcher::pick_worker() {
    Worker* best = nullptr;
    for (Worker* worker : workers_) {
        if (!can_take(*worker)) continue;
        // Fewest batches first; among equals the one that waited longest, so that light
        // traffic still spreads over every worker.
        if (!best || worker->in_flight.size() < best->in_flight.size() ||
            (worker->in_flight.size() == best->in_flight.size() &&
             worker->last_dispatch < best->last_dispatch)) {
            best = worker;
        }
    }
    return best;
}

std::vector<Request> ModelBatcher::take_batch(Worker& worker, Clock::time_point now, Outbox& out) {
    std::vector<Request> batch;
    size_t bytes = 0;
    const bool timeout = policy_.client_timeout.count() > 0;
    for (std::deque<Request>* source : {&worker.pinned, &queue_}) {
        while (!source->empty() && batch.size() < policy_.batch_size) {
            if (timeout && now - source->front().arrival > policy_.client_timeout) {
                Request late = std::move(source->front());
                source->pop_front();
                withdraw(late, Withdrawal::kClientTimeout, out);
                continue;
            }
            Request& request = source->front();
            const size_t next = request.payload.size();
            if (!batch.empty() && bytes + next > max_batch_bytes_) return batch;
            bytes += next;
            if (request.sequence != 0 && request.worker == 0) {
                sequences_.pin(request.sequence, worker.id);
                request.worker = worker.id;
            }
            batch.push_back(std::move(request));
            source->pop_front();
            --queued_;
        }
    }
    return batch;
}

Answer ModelBatcher::client_timeout_answer() const {
    const std::string ms = std::to_string(policy_.client_timeout.count());
    return Answer{503,
                  error_body(503, "ServiceUnavailableException",
                             "Request waited longer than clientTimeoutInMills=" + ms +
                                 " ms for a worker; it was not run"),
                  {}};
}

void ModelBatcher::tell_withdrawn(Worker& worker, uint64_t request_id, Outbox& out) {
    uint8_t frame[2 + msgpack::kUint64Size];
    msgpack::put_uint64(msgpack::put_fixint(msgpack::put_fixarray(frame, 2), frames::kWithdraw),
                        request_id);
    bool wake = false;
    // A full ring only means the worker has not caught up: the request then runs and its
    // answer is dropped, which is what happens anyway once its batch has started.
    if (worker.channel.down().write(frame, sizeof(frame), &wake) == WriteStatus::kWritten && wake) {
        out.wake.push_back(&worker);
    }
}

void ModelBatcher::cancelled_request_ended(bool ran) {
    ++(ran ? stats_.dropped_answers : stats_.withdrawn_client_gone);
}

void ModelBatcher::withdraw(Request& request, Withdrawal why, Outbox& out) {
    --queued_;
    if (why == Withdrawal::kClientTimeout) {
        out.fail(request, client_timeout_answer());
        ++stats_.withdrawn_client_timeout;
    } else {
        ++stats_.withdrawn_client_gone;
    }
    answered(request, false, false, out);
}

Clock::time_point ModelBatcher::oldest_arrival() const {
    Clock::time_point oldest = queue_.empty() ? kNever : queue_.front().arrival;
    for (const Worker* worker : workers_) {
        if (!worker->pinned.empty()) oldest = std::min(oldest, worker->pinned.front().arrival);
    }
    return oldest;
}

Worker* ModelBatcher::find_worker(uint64_t worker_id) const {
    for (Worker* worker : workers_) {
        if (worker->id == worker_id) return worker;
    }
    return nullptr;
}

void ModelBatcher::route(Request&& request, Outbox& out) {
    Worker* owner = request.worker != 0 ? find_worker(request.worker) : nullptr;
    if (request.worker != 0 && (!owner || owner->state == Worker::State::kStopping ||
                                owner->state == Worker::State::kFailed)) {
        static const Answer gone{503,
                                 error_body(503, "ServiceUnavailableException",
                                            "The worker that holds this request's sequence is gone"),
                                 {}};
        out.fail(request, gone);
        for (const Request& left : sequences_.close(request.sequence)) out.fail(left, gone);
        return;
    }
    (owner ? owner->pinned : queue_).push_back(std::move(request));
    ++queued_;
}

void ModelBatcher::answered(Request& request, bool more, bool ends, Outbox& out) {
    if (request.sequence == 0 || request.moved_on) return;
    if (more && !sequences_.policy().continuous) return;
    request.moved_on = true;
    if (ends) {
        static const Answer ended{503,
                                  error_body(503, "ServiceUnavailableException",
                                             "The handler ended this request's sequence before it ran"),
                                  {}};
        for (const Request& left : sequences_.close(request.sequence)) {
            out.fail(left, ended);
            --queued_;
        }
        return;
    }
    std::optional<Request> next = sequences_.next(request.sequence, Clock::now());
    if (!next) return;
    --queued_;  // counted while it waited in its sequence; route() counts it again
    route(std::move(*next), out);
}

void ModelBatcher::close_sequences(uint64_t worker_id, const Answer& lost, Outbox& out) {
    for (const Request& left : sequences_.close_worker(worker_id)) {
        out.fail(left, lost);
        --queued_;
    }
}

bool ModelBatcher::send_batch(Worker& worker, std::vector<Request>& batch, Outbox& out) {
    size_t size = kBatchFrameOverhead;
    for (const Request& request : batch) size += request.payload.size();
    Ring& ring = worker.channel.down();
    uint8_t* room = nullptr;
    WriteStatus status = ring.reserve(size, &room);
    if (status == WriteStatus::kNoRoom && ring.wait_for_room(size)) status = ring.reserve(size, &room);
    if (status == WriteStatus::kNoRoom) {
        worker.ring_full = true;
        return false;
    }
    if (status != WriteStatus::kWritten) {
        const Answer answer{507, error_body(507, "ServiceUnavailableException",
                                            "Not enough memory for a batch of " + std::to_string(size) +
                                                " bytes in the worker's channel"),
                            {}};
        for (Request& request : batch) {
            out.fail(request, answer);
            answered(request, false, false, out);
        }
        batch.clear();
        return true;
    }
    const uint64_t batch_id = next_batch_id_++;
    uint8_t* cursor = msgpack::put_fixarray(room, 3);
    cursor = msgpack::put_fixint(cursor, frames::kBatch);
    cursor = msgpack::put_uint64(cursor, batch_id);
    cursor = msgpack::put_array32(cursor, static_cast<uint32_t>(batch.size()));
    for (const Request& request : batch) {
        std::memcpy(cursor, request.payload.data(), request.payload.size());
        cursor += request.payload.size();
    }
    if (ring.commit()) out.wake.push_back(&worker);
    stats_.batch_sizes.add(batch.size());
    worker.last_dispatch = ++dispatch_count_;
    if (worker.in_flight.empty()) worker.running_since = Clock::now();
    worker.in_flight.push_back(Batch{batch_id, std::move(batch), 0});
    worker.in_flight.back().unanswered = worker.in_flight.back().requests.size();
    return true;
}

void ModelBatcher::dispatch(Clock::time_point now, Outbox& out) {
    for (Worker* worker : workers_) {
        // A worker with requests of its own takes them first, filling up from the queue.
        while (!worker->pinned.empty() && can_take(*worker) && due(*worker, now)) {
            std::vector<Request> batch = take_batch(*worker, now, out);
            if (batch.empty()) continue;
            if (!send_batch(*worker, batch, out)) {
                requeue(std::move(batch));
                break;
            }
        }
    }
    while (!queue_.empty()) {
        Worker* worker = pick_worker();
        if (!worker || !due(*worker, now)) return;
        std::vector<Request> batch = take_batch(*worker, now, out);
        if (!batch.empty() && !send_batch(*worker, batch, out)) requeue(std::move(batch));
    }
}

Deadline ModelBatcher::deadline() const {
    if (queued_ == 0) return std::nullopt;  // the common case after a dispatch: no worker scan
    Deadline next;
    auto consider = [&](Clock::time_point arrival) {
        const auto due_at = arrival + policy_.max_batch_delay;
        if (!next || due_at < *next) next = due_at;
    };
    bool some_worker_can_take = false;
    for (const Worker* worker : workers_) {
        if (!can_take(*worker)) continue;
        some_worker_can_take = true;
        if (!worker->pinned.empty()) consider(worker->pinned.front().arrival);
    }
    if (some_worker_can_take && !queue_.empty()) consider(queue_.front().arrival);
    return next;
}

std::vector<Request> ModelBatcher::take_all() {
    std::vector<Request> all(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
    queue_.clear();
    for (Worker* worker : workers_) {
        std::move(worker->pinned.begin(), worker->pinned.end(), std::back_inserter(all));
        worker->pinned.clear();
    }
    std::vector<Request> waiting = sequences_.take_where([](const Request&) { return true; });
    std::move(waiting.begin(), waiting.end(), std::back_inserter(all));
    queued_ = 0;
    return all;
}

std::vector<Request> ModelBatcher::take_where(const std::function<bool(const Request&)>& taken_out) {
    std::vector<Request> taken;
    auto sift = [&](std::deque<Request>& source) {
        std::deque<Request> kept;
        for (Request& request : source) {
            (taken_out(request) ? taken.emplace_back(std::move(request)) : kept.emplace_back(std::move(request)));
        }
        source.swap(kept);
    };
    sift(queue_);
    for (Worker* worker : workers_) sift(worker->pinned);
    std::vector<Request> waiting = sequences_.take_where(taken_out);
    std::move(waiting.begin(), waiting.end(), std::back_inserter(taken));
    // A sequence that loses a request never sees its later ones run in order: it closes.
    for (size_t i = 0, count = taken.size(); i < count; ++i) {
        if (taken[i].sequence == 0) continue;
        std::vector<Request> left = sequences_.close(taken[i].sequence);
        std::move(left.begin(), left.end(), std::back_inserter(taken));
    }
    queued_ -= taken.size();
    return taken;
}

std::vector<Request> ModelBatcher::take_origin(uint32_t origin) {
    return take_where([origin](const Request& request) { return request.origin == origin; });
}

std::vector<Request> ModelBatcher::take_older(Clock::time_point cutoff) {
    return take_where([cutoff](const Request& request) { return request.arrival < cutoff; });
}

bool ModelBatcher::cancel(uint64_t request_id, bool* was_running, Outbox& out) {
    *was_running = false;
    if (!withdraw_queued(request_id, out)) {
        if (!withdraw_sent(request_id, out)) return false;  // answered already, or never here
        *was_running = true;
    }
    ++stats_.hung_up;
    return true;
}

bool ModelBatcher::withdraw_queued(uint64_t request_id, Outbox& out) {
    auto withdraw_from = [&](std::deque<Request>& source) {
        auto found = std::find_if(source.begin(), source.end(),
                                  [&](const Request& r) { return r.id == request_id; });
        if (found == source.end()) return false;
        Request gone = std::move(*found);
        source.erase(found);
        withdraw(gone, Withdrawal::kClientGone, out);
        return true;
    };
    if (withdraw_from(queue_)) return true;
    for (Worker* worker : workers_) {
        if (withdraw_from(worker->pinned)) return true;
    }
    std::vector<Request> waiting = sequences_.take_where([&](const Request& r) { return r.id == request_id; });
    if (waiting.empty()) return false;
    waiting.front().moved_on = true;  // it never held its sequence: nothing to move on
    withdraw(waiting.front(), Withdrawal::kClientGone, out);
    return true;
}

bool ModelBatcher::withdraw_sent(uint64_t request_id, Outbox& out) {
    for (Worker* worker : workers_) {
        for (Batch& batch : worker->in_flight) {
            for (Request& request : batch.requests) {
                if (request.id == request_id && !request.answered && !request.cancelled) {
                    request.cancelled = true;
                    tell_withdrawn(*worker, request_id, out);
                    return true;
                }
            }
        }
    }
    return false;
}

}  // namespace pyserve
