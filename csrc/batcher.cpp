#include "batcher.hpp"

#include <iterator>

namespace pyserve {

bool Batcher::push(Request&& request) {
    if (queue_.size() >= policy_.max_queue_size) return false;
    queue_.push_back(std::move(request));
    return true;
}

void Batcher::requeue(std::vector<Request>&& requests) {
    queue_.insert(queue_.begin(), std::make_move_iterator(requests.begin()),
                  std::make_move_iterator(requests.end()));
}

bool Batcher::ready(Clock::time_point now, bool worker_idle) const {
    if (queue_.empty()) return false;
    return worker_idle || queue_.size() >= policy_.batch_size || now >= *deadline();
}

std::optional<Clock::time_point> Batcher::deadline() const {
    if (queue_.empty()) return std::nullopt;
    return queue_.front().arrival + policy_.max_batch_delay;
}

std::vector<Request> Batcher::take(size_t max_bytes) {
    std::vector<Request> batch;
    size_t bytes = 0;
    while (!queue_.empty() && batch.size() < policy_.batch_size) {
        const size_t next = queue_.front().payload.size();
        if (!batch.empty() && bytes + next > max_bytes) break;
        bytes += next;
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
    }
    return batch;
}

std::vector<Request> Batcher::drain() {
    std::vector<Request> all(std::make_move_iterator(queue_.begin()),
                             std::make_move_iterator(queue_.end()));
    queue_.clear();
    return all;
}

}  // namespace pyserve
