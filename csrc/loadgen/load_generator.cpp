#include "load_generator.hpp"

#include "http_response_parser.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <system_error>

namespace pyserve {
namespace {

constexpr size_t kReadBufferBytes = 256 * 1024;  // per thread: bodies are counted, not kept
constexpr int kMaxEvents = 512;
// A refused connection is tried again after this long, so that a run against a port where
// nothing listens sleeps in epoll_wait instead of spinning on connect().
constexpr auto kConnectBackoff = std::chrono::milliseconds(20);
constexpr uint64_t kWakeToken = std::numeric_limits<uint64_t>::max();
constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
constexpr uint32_t kReadable = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
constexpr uint32_t kPeerClosed = EPOLLRDHUP | EPOLLHUP | EPOLLERR;

std::system_error os_error(const char* call) { return std::system_error(errno, std::generic_category(), call); }

double thread_cpu_seconds() {
    timespec now{};
    if (::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now) != 0) return 0.0;
    return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) / 1e9;
}

struct TimerLinks {
    uint32_t prev = kNone;
    uint32_t next = kNone;
    int list = -1;  // which TimerList holds it, -1 for none
};

struct Connection {
    enum class State { kClosed, kConnecting, kWriting, kReading, kBackoff, kDone };

    UniqueFd fd;
    State state = State::kClosed;
    uint32_t generation = 0;  // bumped per socket: events for an older socket are ignored
    size_t written = 0;
    bool reused = false;   // this socket already carried a complete exchange
    bool retried = false;  // this request was already sent again on a fresh socket
    Clock::time_point sent_at;   // first byte of the request written
    Clock::time_point deadline;  // of the request, or of the back-off
    ResponseParser parser;
    TimerLinks timer;
};

// Connections on one list wait the same span from the moment they are added, so adding at
// the back keeps the list in deadline order: the front is always the next to expire.
class TimerList {
   public:
    TimerList(std::vector<Connection>& connections, int id) : connections_(connections), id_(id) {}

    uint32_t front() const { return head_; }

    void push_back(uint32_t index) {
        TimerLinks& links = connections_[index].timer;
        links = TimerLinks{tail_, kNone, id_};
        if (tail_ != kNone) {
            connections_[tail_].timer.next = index;
        } else {
            head_ = index;
        }
        tail_ = index;
    }

    void remove(uint32_t index) {
        TimerLinks& links = connections_[index].timer;
        if (links.list != id_) return;
        if (links.prev != kNone) {
            connections_[links.prev].timer.next = links.next;
        } else {
            head_ = links.next;
        }
        if (links.next != kNone) {
            connections_[links.next].timer.prev = links.prev;
        } else {
            tail_ = links.prev;
        }
        links = TimerLinks{};
    }

   private:
    std::vector<Connection>& connections_;
    int id_;
    uint32_t head_ = kNone;
    uint32_t tail_ = kNone;
};

uint64_t event_token(uint32_t index, uint32_t generation) {
    return (static_cast<uint64_t>(generation) << 32) | index;
}

}  // namespace

const char* load_error_name(LoadError kind) {
    switch (kind) {
        case LoadError::kConnect: return "connect";
        case LoadError::kReset: return "reset";
        case LoadError::kTimeout: return "timeout";
        case LoadError::kParse: return "parse";
    }
    return "unknown";
}

// One thread's connections, its epoll loop and its results. Only its own thread touches it
// while the run goes on, except `completed`, which others read.
class LoadThread {
   public:
    LoadThread(LoadGenerator& generator, size_t connections)
        : generator_(generator), connections_(connections), active_(connections) {}

    void run() noexcept;

    std::vector<double> latencies_us;
    std::array<uint64_t, 1000> statuses{};
    std::array<uint64_t, kLoadErrorKinds> errors{};
    double cpu_seconds = 0;
    Clock::time_point finished_at;
    std::string failure;  // why the loop gave up, if it did
    alignas(64) std::atomic<uint64_t> completed{0};  // its own cache line: read by other threads

   private:
    enum : int { kRequestTimers, kBackoffTimers };

    void loop();
    int epoll_timeout_ms(Clock::time_point now) const;
    void on_event(uint32_t index, uint32_t events);
    void expire(Clock::time_point now);
    void begin_request(uint32_t index, Clock::time_point now);
    void open(uint32_t index);
    void write_request(uint32_t index);
    void read_response(uint32_t index, uint32_t events);
    void finish_request(uint32_t index, bool reuse);
    void peer_closed(uint32_t index);
    void fail(uint32_t index, LoadError kind);
    void unlink_timer(uint32_t index);

    LoadGenerator& generator_;
    std::vector<Connection> connections_;
    TimerList requests_{connections_, kRequestTimers};  // requests in flight, by deadline
    TimerList backoffs_{connections_, kBackoffTimers};  // refused connections waiting to retry
    size_t active_;  // connections not yet done
    UniqueFd epoll_;
    std::vector<char> buffer_;
};

void LoadThread::run() noexcept {
    ::pthread_setname_np(::pthread_self(), "pyserve-load");
    try {
        loop();
    } catch (const std::exception& error) {
        failure = error.what();
    } catch (...) {
        failure = "unknown error";
    }
    connections_.clear();  // closes every socket now, not when the generator goes away
    epoll_ = UniqueFd();
    cpu_seconds = thread_cpu_seconds();
    finished_at = Clock::now();
    generator_.thread_finished(!failure.empty());
}

void LoadThread::loop() {
    buffer_.resize(kReadBufferBytes);
    epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
    if (epoll_.get() < 0) throw os_error("epoll_create1");
    epoll_event wake{};
    wake.events = EPOLLIN;  // level-triggered and never read: once stopped, every wait returns
    wake.data.u64 = kWakeToken;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, generator_.wake_.get(), &wake) != 0) throw os_error("epoll_ctl");

    const auto now = Clock::now();
    for (uint32_t i = 0; i < connections_.size(); ++i) begin_request(i, now);

    std::array<epoll_event, kMaxEvents> events;
    while (active_ > 0 && !generator_.stop_requested_.load(std::memory_order_relaxed)) {
        const auto before = Clock::now();
        if (generator_.run_end_ && before >= *generator_.run_end_) break;
        const int ready = ::epoll_wait(epoll_.get(), events.data(), kMaxEvents, epoll_timeout_ms(before));
        if (ready < 0) {
            if (errno == EINTR) continue;
            throw os_error("epoll_wait");
        }
        for (int k = 0; k < ready; ++k) {
            const uint64_t token = events[k].data.u64;
            if (token == kWakeToken) continue;
            const auto index = static_cast<uint32_t>(token);
            if (connections_[index].generation != static_cast<uint32_t>(token >> 32)) continue;
            on_event(index, events[k].events);
        }
        expire(Clock::now());
    }
}

int LoadThread::epoll_timeout_ms(Clock::time_point now) const {
    std::optional<Clock::time_point> next = generator_.run_end_;
    for (const TimerList* list : {&requests_, &backoffs_}) {
        if (list->front() == kNone) continue;
        const auto deadline = connections_[list->front()].deadline;
        next = next ? std::min(*next, deadline) : deadline;
    }
    if (!next) return -1;
    if (*next <= now) return 0;
    // Rounded up: waking a little late costs nothing, waking early would spin until the deadline.
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(*next - now).count();
    return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

void LoadThread::expire(Clock::time_point now) {
    // Each handler moves the connection off the front or pushes it back with a later deadline.
    for (uint32_t i = requests_.front(); i != kNone && connections_[i].deadline <= now; i = requests_.front()) {
        fail(i, connections_[i].state == Connection::State::kConnecting ? LoadError::kConnect : LoadError::kTimeout);
    }
    for (uint32_t i = backoffs_.front(); i != kNone && connections_[i].deadline <= now; i = backoffs_.front()) {
        begin_request(i, now);
    }
}

void LoadThread::unlink_timer(uint32_t index) {
    requests_.remove(index);
    backoffs_.remove(index);
}

void LoadThread::begin_request(uint32_t index, Clock::time_point now) {
    Connection& c = connections_[index];
    unlink_timer(index);
    if (!generator_.take_ticket()) {
        c.fd = UniqueFd();
        c.state = Connection::State::kDone;
        --active_;
        return;
    }
    c.deadline = now + generator_.request_timeout_;
    requests_.push_back(index);
    c.written = 0;
    c.retried = false;
    c.parser.reset(generator_.head_request_);
    if (c.fd.get() >= 0) {
        c.state = Connection::State::kWriting;
        write_request(index);
    } else {
        open(index);
    }
}

void LoadThread::open(uint32_t index) {
    Connection& c = connections_[index];
    const auto* address = reinterpret_cast<const sockaddr*>(&generator_.address_);
    c.fd = UniqueFd(::socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    // Out of descriptors or memory: the run cannot go on as asked, so say so loudly.
    if (c.fd.get() < 0) throw os_error("socket");
    ++c.generation;
    c.reused = false;
    const int one = 1;
    ::setsockopt(c.fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(c.fd.get(), address, generator_.address_size_) != 0 && errno != EINPROGRESS && errno != EINTR) {
        fail(index, LoadError::kConnect);
        return;
    }
    // Registered once, edge-triggered, for both directions: no epoll_ctl per request. Even a
    // connect that completed at once waits for its EPOLLOUT, which keeps the call chain short.
    epoll_event event{};
    event.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    event.data.u64 = event_token(index, c.generation);
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c.fd.get(), &event) != 0) throw os_error("epoll_ctl");
    c.state = Connection::State::kConnecting;
}

void LoadThread::on_event(uint32_t index, uint32_t events) {
    Connection& c = connections_[index];
    const uint32_t generation = c.generation;
    switch (c.state) {
        case Connection::State::kConnecting: {
            int error = 0;
            socklen_t size = sizeof error;
            if (::getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &error, &size) != 0) error = errno;
            if (error != 0) {
                fail(index, LoadError::kConnect);
                return;
            }
            if (!(events & EPOLLOUT)) return;  // not connected yet
            c.state = Connection::State::kWriting;
            write_request(index);
            return;
        }
        case Connection::State::kWriting:
            write_request(index);
            // An answer that came before the last byte went out brought its edge already.
            if (c.generation == generation && c.state == Connection::State::kReading && (events & kReadable)) {
                read_response(index, events);
            }
            return;
        case Connection::State::kReading:
            if (events & kReadable) read_response(index, events);
            return;
        default:
            return;
    }
}

void LoadThread::write_request(uint32_t index) {
    Connection& c = connections_[index];
    const std::string& request = generator_.config_.request;
    if (c.written == 0) c.sent_at = Clock::now();
    while (c.written < request.size()) {
        const ssize_t sent = ::send(c.fd.get(), request.data() + c.written, request.size() - c.written, MSG_NOSIGNAL);
        if (sent >= 0) {
            c.written += static_cast<size_t>(sent);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;  // the socket buffer is full: EPOLLOUT's edge brings us back
        } else if (errno != EINTR) {
            peer_closed(index);
            return;
        }
    }
    c.state = Connection::State::kReading;
}

void LoadThread::read_response(uint32_t index, uint32_t events) {
    Connection& c = connections_[index];
    for (;;) {
        const ssize_t got = ::recv(c.fd.get(), buffer_.data(), buffer_.size(), 0);
        if (got > 0) {
            size_t used = 0;
            switch (c.parser.feed(buffer_.data(), static_cast<size_t>(got), used)) {
                case ResponseParser::Step::kBad:
                    fail(index, LoadError::kParse);
                    return;
                case ResponseParser::Step::kDone:
                    // Bytes after the answer were never asked for, and a peer that already
                    // closed its side will not read the next request: start afresh then.
                    finish_request(index, c.parser.keep_alive() && used == static_cast<size_t>(got) &&
                                              !(events & kPeerClosed));
                    return;
                case ResponseParser::Step::kMore:
                    break;
            }
            // A short read drained the socket, and data arriving later raises a new edge. A
            // close that came before this event did not: read on to the end of the stream.
            if (static_cast<size_t>(got) < buffer_.size() && !(events & kPeerClosed)) return;
        } else if (got == 0) {
            peer_closed(index);
            return;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;
        } else if (errno != EINTR) {
            peer_closed(index);  // ECONNRESET and the like
            return;
        }
    }
}

void LoadThread::finish_request(uint32_t index, bool reuse) {
    Connection& c = connections_[index];
    const auto now = Clock::now();
    latencies_us.push_back(std::chrono::duration<double, std::micro>(now - c.sent_at).count());
    ++statuses[static_cast<size_t>(c.parser.status())];
    // Only this thread writes it: a plain store spares the locked add.
    completed.store(completed.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    c.reused = true;
    if (!reuse) c.fd = UniqueFd();
    begin_request(index, now);
}

void LoadThread::peer_closed(uint32_t index) {
    Connection& c = connections_[index];
    if (c.state == Connection::State::kReading && c.parser.peer_closed() == ResponseParser::Step::kDone) {
        finish_request(index, false);
        return;
    }
    if (c.reused && !c.retried && !c.parser.received_any()) {
        // The server closed a kept-alive connection while this request was on its way: not an
        // answer to it. Send it once more on a fresh connection, as HTTP clients do.
        c.retried = true;
        c.written = 0;
        c.parser.reset(generator_.head_request_);
        c.fd = UniqueFd();
        open(index);
        return;
    }
    fail(index, LoadError::kReset);
}

void LoadThread::fail(uint32_t index, LoadError kind) {
    Connection& c = connections_[index];
    ++errors[static_cast<size_t>(kind)];
    c.fd = UniqueFd();  // closing it also takes it out of the epoll set
    unlink_timer(index);
    if (kind == LoadError::kConnect) {
        c.state = Connection::State::kBackoff;
        c.deadline = Clock::now() + kConnectBackoff;
        backoffs_.push_back(index);
        return;
    }
    c.state = Connection::State::kClosed;
    begin_request(index, Clock::now());
}

namespace {

// Resolves numeric addresses only (and "localhost", as 127.0.0.1): a benchmark should not
// depend on, or wait for, name resolution.
void resolve(const std::string& host, int port, sockaddr_storage& address, socklen_t& size) {
    std::string numeric = host;
    if (numeric.size() > 2 && numeric.front() == '[' && numeric.back() == ']') {
        numeric = numeric.substr(1, numeric.size() - 2);
    }
    if (numeric == "localhost") numeric = "127.0.0.1";
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    const std::string service = std::to_string(port);
    if (numeric.empty() || ::getaddrinfo(numeric.c_str(), service.c_str(), &hints, &found) != 0 || !found) {
        throw std::invalid_argument("host must be a numeric IPv4 or IPv6 address or \"localhost\", not \"" + host +
                                    "\"");
    }
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> owned(found, &::freeaddrinfo);
    std::memcpy(&address, found->ai_addr, found->ai_addrlen);
    size = found->ai_addrlen;
}

}  // namespace

LoadGenerator::LoadGenerator(LoadConfig config) : config_(std::move(config)) {
    if (config_.port < 1 || config_.port > 65535) {
        throw std::invalid_argument("port must be between 1 and 65535, not " + std::to_string(config_.port));
    }
    if (config_.request.empty()) throw std::invalid_argument("request must not be empty");
    if (config_.connections < 1) throw std::invalid_argument("connections must be at least 1");
    if (config_.connections > std::numeric_limits<int32_t>::max()) {
        throw std::invalid_argument("connections is too large");
    }
    if (config_.threads < 1) throw std::invalid_argument("threads must be at least 1");
    if (!config_.duration && !config_.total) {
        throw std::invalid_argument("give a duration, a total number of requests, or both");
    }
    if (config_.duration && !(std::isfinite(*config_.duration) && *config_.duration > 0)) {
        throw std::invalid_argument("duration must be a positive number of seconds");
    }
    if (config_.total && *config_.total < 1) throw std::invalid_argument("total must be at least 1");
    if (!(std::isfinite(config_.timeout) && config_.timeout > 0)) {
        throw std::invalid_argument("timeout must be a positive number of seconds");
    }
    // At least one tick, so that a request's deadline always lies after the moment it began.
    request_timeout_ = std::max<Clock::duration>(
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(config_.timeout)),
        Clock::duration(1));
    resolve(config_.host, config_.port, address_, address_size_);
    head_request_ = config_.request.compare(0, 5, "HEAD ") == 0;

    wake_ = UniqueFd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (wake_.get() < 0) throw os_error("eventfd");

    // A thread without a connection would have nothing to do.
    const auto threads = static_cast<size_t>(std::min(config_.threads, config_.connections));
    const auto connections = static_cast<size_t>(config_.connections);
    for (size_t t = 0; t < threads; ++t) {
        const size_t share = connections / threads + (t < connections % threads ? 1 : 0);
        loops_.push_back(std::make_unique<LoadThread>(*this, share));
    }
}

LoadGenerator::~LoadGenerator() {
    stop();
    for (std::thread& thread : threads_) {
        if (thread.joinable()) thread.join();
    }
}

void LoadGenerator::start() {
    std::lock_guard lock(mutex_);
    if (started_) throw std::logic_error("this load generator has already run; make a new one");
    started_ = true;
    started_at_ = Clock::now();
    if (config_.duration) {
        run_end_ = started_at_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(*config_.duration));
    }
    try {
        for (auto& loop : loops_) threads_.emplace_back([&worker = *loop] { worker.run(); });
    } catch (...) {
        // Threads that never started count as finished, so wait() and the destructor still end.
        finished_ += loops_.size() - threads_.size();
        stop();
        throw;
    }
}

void LoadGenerator::stop() {
    if (stop_requested_.exchange(true)) return;
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t written = ::write(wake_.get(), &one, sizeof one);
}

bool LoadGenerator::wait(const Deadline& deadline) {
    std::unique_lock lock(mutex_);
    if (!started_) throw std::logic_error("the load generator has not been started");
    const auto done = [&] { return finished_ == loops_.size(); };
    if (!deadline) {
        finished_cv_.wait(lock, done);
        return true;
    }
    return finished_cv_.wait_until(lock, *deadline, done);
}

uint64_t LoadGenerator::completed() const {
    uint64_t sum = 0;
    for (const auto& loop : loops_) sum += loop->completed.load(std::memory_order_relaxed);
    return sum;
}

bool LoadGenerator::take_ticket() {
    if (!config_.total) return true;
    return tickets_.fetch_add(1, std::memory_order_relaxed) < static_cast<uint64_t>(*config_.total);
}

void LoadGenerator::thread_finished(bool failed) {
    if (failed) stop();
    std::lock_guard lock(mutex_);
    ++finished_;
    finished_cv_.notify_all();
}

LoadResult LoadGenerator::result() {
    {
        std::lock_guard lock(mutex_);
        if (!started_) throw std::logic_error("the load generator has not been started");
        if (finished_ < loops_.size()) {
            throw std::logic_error("the run is still going: wait() for it or stop() it before result()");
        }
    }
    for (std::thread& thread : threads_) {
        if (thread.joinable()) thread.join();
    }
    LoadResult result;
    size_t count = 0;
    for (const auto& loop : loops_) {
        if (!loop->failure.empty()) throw std::runtime_error("the load generator failed: " + loop->failure);
        count += loop->latencies_us.size();
    }
    result.latencies_us.reserve(count);
    Clock::time_point last = started_at_;
    std::array<uint64_t, kLoadErrorKinds> errors{};
    for (const auto& loop : loops_) {
        result.latencies_us.insert(result.latencies_us.end(), loop->latencies_us.begin(), loop->latencies_us.end());
        for (size_t code = 0; code < loop->statuses.size(); ++code) {
            if (loop->statuses[code]) result.statuses[static_cast<int>(code)] += loop->statuses[code];
        }
        for (size_t kind = 0; kind < kLoadErrorKinds; ++kind) errors[kind] += loop->errors[kind];
        result.cpu_seconds += loop->cpu_seconds;
        result.completed += loop->completed.load(std::memory_order_relaxed);
        last = std::max(last, loop->finished_at);
    }
    for (size_t kind = 0; kind < kLoadErrorKinds; ++kind) {
        if (errors[kind]) result.errors[load_error_name(static_cast<LoadError>(kind))] = errors[kind];
    }
    result.seconds = std::chrono::duration<double>(last - started_at_).count();
    return result;
}

}  // namespace pyserve
