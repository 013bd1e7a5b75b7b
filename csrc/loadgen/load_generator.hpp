// A closed-loop HTTP/1.1 load generator, in the spirit of wrk.
//
// `pyserve bench` must measure the server, not itself: a Python client spends about as much
// CPU per request as the server it drives, and on a small machine both share the same cores.
// Each connection here sends one request, reads the whole response, records the latency and
// sends the next, on a keep-alive socket. Each thread runs its own epoll loop over its share
// of the connections and keeps its own results, merged once the run is over, so the hot path
// takes no lock.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../common/clock.hpp"
#include "../common/unique_fd.hpp"

namespace pyserve {

struct LoadConfig {
    std::string host;                // a numeric IPv4 or IPv6 address, or "localhost"
    int port = 0;
    std::string request;             // the complete HTTP/1.1 request, sent byte for byte
    int64_t connections = 1;
    std::optional<double> duration;  // seconds; the run ends at whichever of these comes first
    std::optional<int64_t> total;    // attempts, failed ones included
    int64_t threads = 1;             // more than `connections` is cut down to `connections`
    double timeout = 30.0;           // seconds a request may take, connecting included
};

// How a request can fail. A failed request still used up one of `total`.
enum class LoadError : int { kConnect = 0, kReset, kTimeout, kParse };
constexpr size_t kLoadErrorKinds = 4;
const char* load_error_name(LoadError kind);

struct LoadResult {
    std::vector<double> latencies_us;  // one per completed request, first byte sent to last read
    std::map<int, uint64_t> statuses;  // status code -> responses
    std::map<std::string, uint64_t> errors;  // load_error_name -> count; only kinds that happened
    double seconds = 0;                // wall time from start() to the end of the last thread
    double cpu_seconds = 0;            // CPU time of the generator's threads, summed
    uint64_t completed = 0;
};

class LoadThread;

class LoadGenerator {
   public:
    // Checks the configuration and resolves the host; std::invalid_argument if either is wrong.
    explicit LoadGenerator(LoadConfig config);
    // Stops the run and joins its threads.
    ~LoadGenerator();
    LoadGenerator(const LoadGenerator&) = delete;
    LoadGenerator& operator=(const LoadGenerator&) = delete;

    // Spawns the threads and returns at once; a generator runs once.
    void start();
    // Ends the run early; idempotent. Requests still in flight are not counted.
    void stop();
    // Blocks until every thread has finished; false if `deadline` came first.
    bool wait(const Deadline& deadline);
    // Requests answered so far, from any thread, while running or after.
    uint64_t completed() const;
    // The merged results; std::logic_error while the run is still going.
    LoadResult result();

   private:
    friend class LoadThread;

    bool take_ticket();
    void thread_finished(bool failed);

    LoadConfig config_;
    sockaddr_storage address_{};
    socklen_t address_size_ = 0;
    Clock::duration request_timeout_{};
    bool head_request_ = false;  // answers to HEAD have no body, whatever their headers say
    UniqueFd wake_;  // an eventfd in every thread's epoll set: stop() makes it readable for good
    std::atomic<bool> stop_requested_{false};
    std::atomic<uint64_t> tickets_{0};  // attempts handed out, against config_.total
    Clock::time_point started_at_;
    std::optional<Clock::time_point> run_end_;
    std::vector<std::unique_ptr<LoadThread>> loops_;
    std::vector<std::thread> threads_;

    std::mutex mutex_;
    std::condition_variable finished_cv_;
    bool started_ = false;
    size_t finished_ = 0;  // threads that returned
};

}  // namespace pyserve
