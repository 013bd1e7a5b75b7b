#include "sequences.hpp"

#include <iterator>

namespace pyserve {

bool Sequences::expired(const Sequence& sequence, Clock::time_point now) const {
    if (policy_.timeout.count() > 0 && now - sequence.started > policy_.timeout) return true;
    return !sequence.busy && sequence.waiting.empty() && now - sequence.last_active > policy_.max_idle;
}

Sequences::Admitted Sequences::admit(Request& request, Clock::time_point now) {
    auto found = sequences_.find(request.sequence);
    if (found != sequences_.end() && expired(found->second, now)) {
        // What it accepted before it expired still runs; it is forgotten once that is done.
        if (!found->second.busy && found->second.waiting.empty()) forget(found);
        return Admitted::kClosed;
    }
    if (found == sequences_.end()) {
        if (closed_.count(request.sequence)) return Admitted::kClosed;
        if (sequences_.size() >= policy_.max_sequences) expire(now);
        if (sequences_.size() >= policy_.max_sequences) return Admitted::kTooMany;
        found = sequences_.emplace(request.sequence, Sequence{}).first;
        found->second.started = now;
    }
    Sequence& sequence = found->second;
    sequence.last_active = now;
    if (!sequence.busy) {
        sequence.busy = true;
        return Admitted::kRelease;
    }
    if (sequence.waiting.size() >= policy_.max_queue) return Admitted::kQueueFull;
    sequence.waiting.push_back(std::move(request));
    ++waiting_;
    return Admitted::kWait;
}

uint64_t Sequences::worker_of(uint64_t key) const {
    auto found = sequences_.find(key);
    return found == sequences_.end() ? 0 : found->second.worker;
}

void Sequences::pin(uint64_t key, uint64_t worker) {
    auto found = sequences_.find(key);
    if (found != sequences_.end()) found->second.worker = worker;
}

std::optional<Request> Sequences::next(uint64_t key, Clock::time_point now) {
    auto found = sequences_.find(key);
    if (found == sequences_.end()) return std::nullopt;
    Sequence& sequence = found->second;
    sequence.last_active = now;
    if (sequence.waiting.empty()) {
        sequence.busy = false;
        return std::nullopt;
    }
    Request request = std::move(sequence.waiting.front());
    sequence.waiting.pop_front();
    --waiting_;
    request.worker = sequence.worker;
    return request;
}

std::vector<Request> Sequences::forget(std::unordered_map<uint64_t, Sequence>::iterator found) {
    std::vector<Request> left(std::make_move_iterator(found->second.waiting.begin()),
                              std::make_move_iterator(found->second.waiting.end()));
    waiting_ -= left.size();
    closed_.insert(found->first);
    closed_order_.push_back(found->first);
    if (closed_order_.size() > kRememberedClosed) {
        closed_.erase(closed_order_.front());
        closed_order_.pop_front();
    }
    sequences_.erase(found);
    return left;
}

std::vector<Request> Sequences::close(uint64_t key) {
    auto found = sequences_.find(key);
    if (found == sequences_.end()) return {};
    return forget(found);
}

std::vector<Request> Sequences::close_worker(uint64_t worker) {
    std::vector<Request> left;
    for (auto it = sequences_.begin(); it != sequences_.end();) {
        auto current = it++;
        if (current->second.worker != worker) continue;
        std::vector<Request> waiting = forget(current);
        std::move(waiting.begin(), waiting.end(), std::back_inserter(left));
    }
    return left;
}

void Sequences::expire(Clock::time_point now) {
    for (auto it = sequences_.begin(); it != sequences_.end();) {
        auto current = it++;
        const Sequence& sequence = current->second;
        if (!sequence.busy && sequence.waiting.empty() && expired(sequence, now)) forget(current);
    }
}

std::vector<Request> Sequences::take_where(const std::function<bool(const Request&)>& taken_out) {
    std::vector<Request> taken;
    for (auto& [key, sequence] : sequences_) {
        std::deque<Request> kept;
        for (Request& request : sequence.waiting) {
            (taken_out(request) ? taken.emplace_back(std::move(request)) : kept.emplace_back(std::move(request)));
        }
        sequence.waiting.swap(kept);
    }
    waiting_ -= taken.size();
    return taken;
}

}  // namespace pyserve
