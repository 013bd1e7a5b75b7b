// The serving core: every model's batcher, every worker's and frontend's channel, and the
// one thread that waits on all their eventfds.
//
// Requests arrive from this process (submit(), from Python) or from frontend processes
// (their channels). Each is queued in its model's batcher, which sends batches to that
// model's workers. The core thread sleeps in epoll on one eventfd per worker and per
// frontend, so a wake-up names the channel that has work and no other is looked at; batch
// deadlines sit in one heap. A result is checked against the batch it answers and routed to
// the process its request came from, in one reply frame per process per worker frame.
//
// Locks, always taken in this order: registry_ (shared on every path but adding and removing
// models, workers and frontends), a worker's reader mutex, a model's mutex, a frontend's
// writer mutex or the local sink's, timers_. Results are copied out of a worker's ring under
// its reader mutex only; a model's mutex is held for its bookkeeping, never for a copy of a
// result.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "channel.hpp"
#include "frames.hpp"
#include "model_batcher.hpp"

namespace pyserve {

// For this process's Python: worker news, and replies to requests it submitted.
struct Event {
    uint64_t worker_id;  // 0: the core itself
    uint8_t kind;        // frames::kLoaded, kLoadFailed, kBroken or kMetrics
    std::string frame;
};
struct Taken {
    std::vector<std::string> replies;  // reply frames (frames::kReply, kRefused)
    std::vector<Event> events;
};

struct ExitReport {
    size_t failed = 0;     // answered with `died_twice` or `lost`
    size_t timed_out = 0;  // answered with `timed_out`
    size_t requeued = 0;
    bool was_running = false;  // it died with a batch running
};

enum class CancelResult : int { kUnknown = 0, kRemoved = 1, kRunning = 2 };

class Core {
   public:
    // A request is tried on at most this many workers that died while running it. Only the
    // batch a worker was running is blamed: batches waiting in its ring are queued again.
    static constexpr int kMaxAttempts = 2;
    // Request ids carry the origin they came from in their top bits, so that frontends can
    // number their own requests and a reply needs no lookup to find its way back.
    static constexpr int kOriginShift = 44;
    static constexpr uint32_t kMaxOrigin = (1u << 20) - 1;

    // `ring_capacity` bytes per ring, two rings per worker and per frontend.
    explicit Core(size_t ring_capacity);
    ~Core();
    Core(const Core&) = delete;
    Core& operator=(const Core&) = delete;

    // Readable when take() has something, handler metrics apart: they wait for the next take().
    int notify_fd() const { return local_.notify.get(); }
    // The largest request payload a batch frame can carry.
    size_t max_request_size() const;

    void add_model(uint64_t model_id, const BatchPolicy& policy);
    void set_policy(uint64_t model_id, const BatchPolicy& policy);
    void set_sequences(uint64_t model_id, const SequencePolicy& policy);
    // Closes the model's idle and timed-out sequences; returns how many stay open.
    size_t expire_sequences(uint64_t model_id);
    // Answers what the model still queues and forgets it; its workers must be gone.
    void remove_model(uint64_t model_id, const Answer& answer);
    // Answers and empties the model's queue; returns how many requests were in it.
    size_t fail_queued(uint64_t model_id, const Answer& answer);
    // Answers the queued requests that have waited longer than `seconds`; returns how many.
    size_t expire_queued(uint64_t model_id, double seconds, const Answer& answer);
    size_t queued(uint64_t model_id) const;
    // How long the oldest request queued for a worker has waited, in seconds; 0 if none.
    double oldest_queued_seconds(uint64_t model_id) const;
    ModelStats stats(uint64_t model_id) const;

    // Makes the worker's channel with `load_frame` first in its down ring, and returns the
    // descriptors its process must inherit. Nothing is left behind when it throws.
    PeerFds add_worker(uint64_t worker_id, uint64_t model_id, const std::string& load_frame);
    // The worker gets no new batches and is told to exit after those it holds.
    void stop_worker(uint64_t worker_id);
    // Reads what the worker left, answers or queues again every request it held, and
    // forgets it, whether its process ever ran or not. `timed_out`: it was killed because its
    // running batch took too long; that batch is answered `timed_out_answer`. A running
    // request that already killed a worker is answered `died_twice`; one pinned to this
    // worker, `lost`.
    ExitReport worker_exited(uint64_t worker_id, bool timed_out, const Answer& died_twice,
                             const Answer& timed_out_answer, const Answer& lost);
    size_t in_flight(uint64_t worker_id) const;
    // Seconds the worker has spent on the batch it runs; negative when it holds none.
    double running_batch_seconds(uint64_t worker_id) const;

    // A channel for a frontend process; its requests carry `origin` in their ids.
    std::pair<uint32_t, PeerFds> add_frontend();
    // Forgets the frontend: what it still queued is dropped, answers to it are discarded.
    void remove_frontend(uint32_t origin);

    // A request from this process; its id must be below 2^kOriginShift.
    SubmitStatus submit(uint64_t model_id, uint64_t request_id, std::string payload, uint64_t worker,
                        uint64_t sequence = 0);
    CancelResult cancel(uint64_t model_id, uint64_t request_id);
    Taken take();

    // Stops the core thread and frees every channel; idempotent.
    void close();

   private:
    struct Frontend {
        Frontend(uint32_t origin, size_t capacity) : origin(origin), channel(capacity) {}
        const uint32_t origin;
        Channel channel;
        std::mutex writer;                 // held while its down ring is written
        std::deque<std::string> overflow;  // replies waiting for room in its down ring
    };
    struct LocalSink {
        std::mutex mutex;
        std::vector<std::string> replies;
        std::vector<Event> events;
        bool signalled = false;
        UniqueFd notify;
    };
    using Timer = std::pair<Clock::time_point, uint64_t>;  // (when, model id)

    void run();
    int wait(epoll_event* events, int capacity, bool spin);
    void on_worker(uint64_t worker_id);
    void on_frontend(uint32_t origin);
    void on_timers();
    // With registry_ held and the worker's reader mutex.
    void collect(Worker& worker, ModelBatcher& model, Outbox& out);
    void handle_worker_frame(Worker& worker, ModelBatcher& model, const std::string& frame, Outbox& out);
    void submit_from(Frontend& frontend, const uint8_t* data, size_t size, Outbox& out);
    SubmitStatus enqueue(ModelBatcher& model, Request&& request, Outbox& out);
    // ModelBatcher::cancel under the model's lock, then sends what the request's leaving let go.
    bool cancel_in(ModelBatcher& model, uint64_t request_id, bool* running, Outbox& out);
    // With the model's mutex held: makes sure the core thread wakes for the model's deadline.
    void arm(ModelBatcher& model);
    // With registry_ held and no model's mutex: wakes workers, sends error answers.
    void flush(Outbox& out);
    void deliver(uint32_t origin, std::string frame);
    void flush_overflow(Frontend& frontend);
    // With the frontend's writer mutex held: writes what fits of its waiting replies.
    void write_overflow(Frontend& frontend);
    void push_event(Event event);
    void watch(int fd, uint64_t token);
    void unwatch(int fd);
    ModelBatcher* find_model(uint64_t model_id) const;
    Worker* find_worker(uint64_t worker_id) const;

    const size_t ring_capacity_;
    UniqueFd epoll_;
    UniqueFd wake_;  // in the epoll set: stop, or an earlier deadline than the thread sleeps for

    mutable std::shared_mutex registry_;
    std::unordered_map<uint64_t, std::unique_ptr<ModelBatcher>> models_;
    std::unordered_map<uint64_t, std::unique_ptr<Worker>> workers_;
    std::unordered_map<uint32_t, std::unique_ptr<Frontend>> frontends_;
    uint32_t next_origin_ = 1;

    LocalSink local_;

    std::mutex timers_mutex_;
    std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
    // When the core thread will wake by itself, in Clock ticks: written under timers_mutex_
    // before it sleeps, so that arm() knows whether an earlier deadline must wake it.
    std::atomic<Clock::rep> sleeping_until_{Clock::time_point::min().time_since_epoch().count()};

    std::atomic<bool> stopping_{false};
    std::thread thread_;
};

}  // namespace pyserve
