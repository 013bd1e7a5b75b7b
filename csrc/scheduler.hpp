// Sends each model's batches to its workers and collects what the workers answer.
//
// Dispatch happens inline on whichever thread made it possible (a submit, an answer
// that freed a worker, a worker that finished loading), so a request that can leave at
// once costs no thread hop. One core thread sleeps on the doorbell that every worker
// rings; it drains the response rings, releases batches whose max_batch_delay ran out,
// and wakes the asyncio loop through one eventfd however many answers are ready.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "batcher.hpp"
#include "doorbell.hpp"
#include "shm_ring.hpp"

namespace pyserve {

// A frame from a worker, handed to Python as written.
struct Completion {
    uint64_t worker_id;
    uint8_t kind;       // a protocol frame kind, or protocol::kBroken
    std::string frame;  // the frame's bytes; for kBroken, what was wrong
};

enum class SubmitStatus : int { kQueued = 0, kQueueFull = 1, kUnknownModel = 2, kTooLarge = 3 };

// The requests a dead worker held that are not queued again, and why.
struct WorkerExit {
    std::vector<uint64_t> failed;     // its running batch, which had already killed a worker;
                                      // or all it held, when its model is gone
    std::vector<uint64_t> timed_out;  // its running batch, when the worker was killed for taking too long
};

struct WorkerRingNames {
    std::string requests;
    std::string responses;
};

class Scheduler {
   public:
    // A worker may hold this many batches: one running and one waiting in its ring, so
    // that it never waits for a round trip to the server between two batches.
    static constexpr size_t kMaxBatchesInFlight = 2;
    // A request is tried on at most this many workers that died while running it. Only the
    // batch a worker was running is blamed: batches still waiting in its ring go back to
    // the queue as they were.
    static constexpr int kMaxAttempts = 2;

    // Every shared-memory name this scheduler creates starts with `prefix`.
    Scheduler(std::string prefix, size_t ring_capacity);
    ~Scheduler();
    Scheduler(const Scheduler&) = delete;
    Scheduler& operator=(const Scheduler&) = delete;

    int notify_fd() const { return notify_fd_.get(); }
    const std::string& doorbell_name() const { return doorbell_.name(); }
    // The largest request payload that still fits into a worker's ring.
    size_t max_request_size() const;

    void add_model(uint64_t model_id, const BatchPolicy& policy);
    void set_policy(uint64_t model_id, const BatchPolicy& policy);
    // Forgets the model and returns the ids of the requests it still had queued.
    std::vector<uint64_t> remove_model(uint64_t model_id);
    // Empties the model's queue and returns the ids of the requests taken out.
    std::vector<uint64_t> drain_queue(uint64_t model_id);
    size_t queued(uint64_t model_id) const;
    size_t in_flight(uint64_t worker_id) const;
    // Seconds the worker has spent on the batch it is running; negative when it holds none.
    double running_batch_seconds(uint64_t worker_id) const;

    // Creates the worker's two rings and puts `load_frame` first on its request ring.
    WorkerRingNames add_worker(uint64_t worker_id, uint64_t model_id, const std::string& load_frame);
    // The worker gets no new batches and is told to exit after those it holds.
    void stop_worker(uint64_t worker_id);
    // Reads what the worker still left, re-queues the requests it held that may be tried
    // again, removes its rings and returns those that may not. `timed_out`: the worker was
    // killed because its running batch took too long; that batch is not tried again.
    WorkerExit worker_exited(uint64_t worker_id, bool timed_out);

    SubmitStatus submit(uint64_t model_id, uint64_t request_id, std::string payload);
    std::vector<Completion> take_completions();
    // Stops the core thread and removes every segment's name; idempotent.
    void close();

   private:
    enum class WorkerState { kStarting, kReady, kStopping, kFailed };

    struct Worker {
        Worker(uint64_t id, uint64_t model_id, ShmRing requests, ShmRing responses)
            : id(id), model_id(model_id), requests(std::move(requests)), responses(std::move(responses)) {}
        uint64_t id;
        uint64_t model_id;
        ShmRing requests;   // we write, the worker reads
        ShmRing responses;  // the worker writes, we read
        WorkerState state = WorkerState::kStarting;
        bool ring_full = false;     // last send found no room; cleared by the worker's next frame
        bool stop_pending = false;  // the stop frame is still to be written
        bool broken = false;        // its response ring can no longer be trusted
        uint64_t last_dispatch = 0;
        // batch id -> requests; the worker runs them in id order, so the first is running
        std::map<uint64_t, std::vector<Request>> in_flight;
        Clock::time_point running_since;  // when the first batch in_flight became the running one
    };

    struct Model {
        explicit Model(const BatchPolicy& policy) : batcher(policy) {}
        Batcher batcher;
        std::vector<uint64_t> workers;
    };

    void run();
    void collect(Worker& worker);
    void handle_frame(Worker& worker, const FrameView& frame);
    void dispatch(Model& model, Clock::time_point now);
    Worker* pick_worker(const Model& model);
    bool send_batch(Worker& worker, std::vector<Request>& batch);
    void send_stop(Worker& worker);
    Deadline next_deadline();
    void signal_loop();
    Model& model(uint64_t model_id);
    static std::vector<uint64_t> ids_of(const std::vector<Request>& requests);

    const std::string prefix_;
    const size_t ring_capacity_;
    mutable std::mutex mutex_;
    std::map<uint64_t, Model> models_;
    std::map<uint64_t, std::unique_ptr<Worker>> workers_;
    std::vector<Completion> completions_;
    bool loop_signalled_ = false;
    bool stopping_ = false;
    uint64_t next_batch_id_ = 1;
    uint64_t dispatch_count_ = 0;
    Doorbell doorbell_;
    UniqueFd notify_fd_;
    std::thread thread_;
};

}  // namespace pyserve
