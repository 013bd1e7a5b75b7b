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
    stats_.queue_depths.add(queued_);
    if (request.worker == 0) {
        queue_.push_back(std::move(request));
    } else {
        auto found = std::find_if(workers_.begin(), workers_.end(),
                                  [&](const Worker* w) { return w->id == request.worker; });
        if (found == workers_.end() || (*found)->state == Worker::State::kStopping ||
            (*found)->state == Worker::State::kFailed) {
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
    return worker.state == Worker::State::kReady && !worker.ring_full &&
           worker.in_flight.size() < kMaxBatchesInFlight;
}

bool ModelBatcher::due(const Worker& worker, Clock::time_point now) const {
    const size_t waiting = worker.pinned.size() + queue_.size();
    if (waiting == 0) return false;
    if (worker.in_flight.empty() || waiting >= policy_.batch_size) return true;
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

std::vector<Request> ModelBatcher::take_batch(Worker& worker) {
    std::vector<Request> batch;
    size_t bytes = 0;
    for (std::deque<Request>* source : {&worker.pinned, &queue_}) {
        while (!source->empty() && batch.size() < policy_.batch_size) {
            const size_t next = source->front().payload.size();
            if (!batch.empty() && bytes + next > max_batch_bytes_) return batch;
            bytes += next;
            batch.push_back(std::move(source->front()));
            source->pop_front();
            --queued_;
        }
    }
    return batch;
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
        for (const Request& request : batch) out.fail(request, answer);
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
            std::vector<Request> batch = take_batch(*worker);
            if (!send_batch(*worker, batch, out)) {
                requeue(std::move(batch));
                break;
            }
        }
    }
    while (!queue_.empty()) {
        Worker* worker = pick_worker();
        if (!worker || !due(*worker, now)) return;
        std::vector<Request> batch = take_batch(*worker);
        if (!send_batch(*worker, batch, out)) requeue(std::move(batch));
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
    queued_ -= taken.size();
    return taken;
}

std::vector<Request> ModelBatcher::take_origin(uint32_t origin) {
    return take_where([origin](const Request& request) { return request.origin == origin; });
}

std::vector<Request> ModelBatcher::take_older(Clock::time_point cutoff) {
    return take_where([cutoff](const Request& request) { return request.arrival < cutoff; });
}

bool ModelBatcher::cancel(uint64_t request_id, bool* was_running) {
    auto remove_from = [&](std::deque<Request>& source) {
        auto found = std::find_if(source.begin(), source.end(),
                                  [&](const Request& r) { return r.id == request_id; });
        if (found == source.end()) return false;
        source.erase(found);
        --queued_;
        return true;
    };
    *was_running = false;
    if (remove_from(queue_)) return true;
    for (Worker* worker : workers_) {
        if (remove_from(worker->pinned)) return true;
    }
    for (Worker* worker : workers_) {
        for (Batch& batch : worker->in_flight) {
            for (Request& request : batch.requests) {
                if (request.id == request_id && !request.answered) {
                    request.cancelled = true;
                    *was_running = true;
                    return true;
                }
            }
        }
    }
    return false;
}

}  // namespace pyserve
