// pyserve._core: the only file that knows about Python.
//
// Every call that can block or copy a large buffer releases the GIL. C++ errors reach
// Python as ShmError (an OSError), RingError, FrameError (a ValueError) or the builtin
// exceptions pybind11 maps std::invalid_argument (ValueError), std::out_of_range (IndexError)
// and every other std::exception, std::logic_error included (RuntimeError), to.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <malloc.h>
#include <sys/prctl.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "doorbell.hpp"
#include "load_generator.hpp"
#include "msgpack_lite.hpp"
#include "protocol.hpp"
#include "scheduler.hpp"
#include "shm_ring.hpp"
#include "worker_channel.hpp"

namespace py = pybind11;
using namespace pyserve;

namespace {

Deadline to_deadline(std::optional<double> timeout) { return deadline_after(timeout.value_or(-1.0)); }

const uint8_t* bytes_data(const py::bytes& data) {
    return reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(data.ptr()));
}

// Copies the frame into a Python bytes object, then lets the ring reuse its space.
template <typename Release>
py::object frame_to_bytes(const std::optional<FrameView>& frame, Release release) {
    if (!frame) return py::none();
    py::bytes copy(reinterpret_cast<const char*>(frame->data), frame->size);
    release();
    return std::move(copy);
}

BatchPolicy make_policy(size_t batch_size, double max_batch_delay_ms, size_t max_queue_size) {
    if (batch_size < 1) throw std::invalid_argument("batch_size must be at least 1");
    if (max_batch_delay_ms < 0) throw std::invalid_argument("max_batch_delay must not be negative");
    BatchPolicy policy;
    policy.batch_size = batch_size;
    policy.max_batch_delay = std::chrono::microseconds(static_cast<int64_t>(max_batch_delay_ms * 1000));
    policy.max_queue_size = max_queue_size;
    return policy;
}

void set_parent_death_signal(int signal) {
    if (::prctl(PR_SET_PDEATHSIG, signal) != 0) {
        throw ShmError(std::string("prctl(PR_SET_PDEATHSIG): ") + std::strerror(errno));
    }
}

void tune_allocator(int mmap_threshold, int trim_threshold) {
    if (::mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1 || ::mallopt(M_TRIM_THRESHOLD, trim_threshold) != 1) {
        throw std::invalid_argument("mallopt refused the thresholds");
    }
}

// ---- LoadGenerator: the native engine of `pyserve bench` -------------------------------

py::dict load_result_to_dict(const LoadResult& result) {
    py::dict statuses;
    for (const auto& [code, count] : result.statuses) statuses[py::int_(code)] = count;
    py::dict errors;
    for (const auto& [kind, count] : result.errors) errors[py::str(kind)] = count;
    py::dict out;
    // Native-endian doubles: array("d", data) reads them back without numpy.
    out["latencies_us"] = py::bytes(reinterpret_cast<const char*>(result.latencies_us.data()),
                                    result.latencies_us.size() * sizeof(double));
    out["statuses"] = statuses;
    out["errors"] = errors;
    out["seconds"] = result.seconds;
    out["cpu_seconds"] = result.cpu_seconds;
    out["completed"] = result.completed;
    return out;
}

void bind_load_generator(py::module_& m) {
    py::class_<LoadGenerator>(
        m, "LoadGenerator",
        "A closed-loop HTTP/1.1 load generator: each connection sends `request`, reads the whole\n"
        "response and sends it again, until `duration` seconds or `total` attempts, whichever ends\n"
        "first. Connections are spread over `threads`, each with its own epoll loop.")
        .def(py::init([](std::string host, int port, const py::bytes& request, int64_t connections,
                         std::optional<double> duration, std::optional<int64_t> total, int64_t threads,
                         double timeout) {
                 LoadConfig config;
                 config.host = std::move(host);
                 config.port = port;
                 config.request.assign(PyBytes_AS_STRING(request.ptr()), PyBytes_GET_SIZE(request.ptr()));
                 config.connections = connections;
                 config.duration = duration;
                 config.total = total;
                 config.threads = threads;
                 config.timeout = timeout;
                 return std::make_unique<LoadGenerator>(std::move(config));
             }),
             py::arg("host"), py::arg("port"), py::arg("request"), py::arg("connections"),
             py::arg("duration") = py::none(), py::arg("total") = py::none(), py::arg("threads") = 1,
             py::arg("timeout") = 30.0,
             "ValueError if no duration or total is given, connections < 1 or the host is not a\n"
             "numeric address or \"localhost\".")
        .def("start", &LoadGenerator::start, "Spawn the threads and return at once; a generator runs once.")
        .def("stop", &LoadGenerator::stop, "End the run early; requests in flight are not counted. Idempotent.")
        .def(
            "wait",
            [](LoadGenerator& generator, std::optional<double> timeout) {
                py::gil_scoped_release unlocked;
                return generator.wait(to_deadline(timeout));
            },
            py::arg("timeout") = py::none(), "Block until the run ends; False if `timeout` came first.")
        .def_property_readonly("completed", &LoadGenerator::completed,
                               "Requests answered so far; readable while running.")
        .def(
            "result", [](LoadGenerator& generator) { return load_result_to_dict(generator.result()); },
            "{latencies_us: bytes of doubles, statuses, errors, seconds, cpu_seconds, completed};\n"
            "RuntimeError while the run is still going.");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "pyserve's C++ core: shared-memory rings, the batcher, the scheduler and a load generator.";

    py::register_exception<ShmError>(m, "ShmError", PyExc_OSError);
    py::register_exception<RingError>(m, "RingError", PyExc_RuntimeError);
    py::register_exception<msgpack::FormatError>(m, "FrameError", PyExc_ValueError);

    m.attr("FRAME_LOAD") = protocol::kLoad;
    m.attr("FRAME_BATCH") = protocol::kBatch;
    m.attr("FRAME_STOP") = protocol::kStop;
    m.attr("FRAME_LOADED") = protocol::kLoaded;
    m.attr("FRAME_LOAD_FAILED") = protocol::kLoadFailed;
    m.attr("FRAME_RESULTS") = protocol::kResults;
    m.attr("FRAME_BROKEN") = protocol::kBroken;
    m.attr("SUBMIT_QUEUED") = static_cast<int>(SubmitStatus::kQueued);
    m.attr("SUBMIT_QUEUE_FULL") = static_cast<int>(SubmitStatus::kQueueFull);
    m.attr("SUBMIT_UNKNOWN_MODEL") = static_cast<int>(SubmitStatus::kUnknownModel);
    m.attr("SUBMIT_TOO_LARGE") = static_cast<int>(SubmitStatus::kTooLarge);
    m.attr("MAX_BATCHES_IN_FLIGHT") = Scheduler::kMaxBatchesInFlight;
    m.attr("MAX_ATTEMPTS") = Scheduler::kMaxAttempts;

    m.def(
        "decode_response_frame",
        [](const py::bytes& frame) {
            const auto parsed = protocol::parse_response_frame(
                bytes_data(frame), static_cast<size_t>(PyBytes_GET_SIZE(frame.ptr())));
            return py::make_tuple(parsed.kind, parsed.batch_id, parsed.done);
        },
        py::arg("frame"),
        "Check a frame as the scheduler checks every frame a worker writes, with the same\n"
        "decoder, and return (kind, batch_id, done); batch_id and done are 0 and False for\n"
        "frames other than results. FrameError says what is wrong with any other frame. The\n"
        "server never calls it: it exists so that the decoder can be tested and fuzzed.");

    m.def("set_parent_death_signal", &set_parent_death_signal, py::arg("signal"),
          "Have the kernel send `signal` to this process when its parent exits.");
    m.def("tune_allocator", &tune_allocator, py::arg("mmap_threshold"), py::arg("trim_threshold"),
          "Set glibc malloc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD, in bytes, for this process.");

    py::class_<ShmRing>(m, "ShmRing", "A one-writer, one-reader ring of frames in shared memory.")
        .def_static("create", &ShmRing::create, py::arg("name"), py::arg("capacity"),
                    "Create a ring; its name is removed when this object is closed or collected.")
        .def_static("open", &ShmRing::open, py::arg("name"), "Map a ring another process created.")
        .def_property_readonly("name", &ShmRing::name)
        .def_property_readonly("capacity", &ShmRing::capacity)
        .def_property_readonly("max_frame_size", &ShmRing::max_frame_size)
        .def_property_readonly("used_bytes", &ShmRing::used_bytes)
        .def_property_readonly("closed", &ShmRing::closed)
        .def(
            "try_write",
            [](ShmRing& ring, const py::bytes& data) {
                const size_t size = PyBytes_GET_SIZE(data.ptr());
                py::gil_scoped_release unlocked;
                return ring.try_write(bytes_data(data), size);
            },
            py::arg("data"), "Write one frame if there is room now; False if not.")
        .def(
            "write",
            [](ShmRing& ring, const py::bytes& data, std::optional<double> timeout) {
                const size_t size = PyBytes_GET_SIZE(data.ptr());
                py::gil_scoped_release unlocked;
                return ring.write(bytes_data(data), size, to_deadline(timeout));
            },
            py::arg("data"), py::arg("timeout") = py::none(),
            "Write one frame, waiting for room; False on timeout or a closed ring.")
        .def(
            "read",
            [](ShmRing& ring, std::optional<double> timeout) {
                std::optional<FrameView> frame;
                {
                    py::gil_scoped_release unlocked;
                    frame = ring.peek(to_deadline(timeout));
                }
                return frame_to_bytes(frame, [&] { ring.release(); });
            },
            py::arg("timeout") = py::none(),
            "The next frame as bytes; None on timeout or a closed, empty ring.")
        .def(
            "try_read", [](ShmRing& ring) { return frame_to_bytes(ring.try_peek(), [&] { ring.release(); }); },
            "The next frame as bytes, or None if there is none now.")
        .def("close", &ShmRing::close, "Wake both sides for good.")
        .def("unlink", &ShmRing::unlink, "Remove the ring's name now (creator only).");

    py::class_<Doorbell>(m, "Doorbell", "A futex word many processes ring and one thread waits on.")
        .def_static("create", &Doorbell::create, py::arg("name"))
        .def_static("open", &Doorbell::open, py::arg("name"))
        .def_property_readonly("name", &Doorbell::name)
        .def_property_readonly("seq", &Doorbell::seq)
        .def("ring", &Doorbell::ring)
        .def(
            "wait",
            [](Doorbell& bell, uint32_t seen, std::optional<double> timeout) {
                py::gil_scoped_release unlocked;
                return bell.wait(seen, to_deadline(timeout));
            },
            py::arg("seen"), py::arg("timeout") = py::none(),
            "Sleep until the bell rings after `seen`; False on timeout.");

    py::class_<WorkerChannel>(m, "WorkerChannel", "A worker's ends of its request and response rings.")
        .def(py::init<const std::string&, const std::string&, const std::string&>(),
             py::arg("requests"), py::arg("responses"), py::arg("doorbell"))
        .def_property_readonly("max_frame_size", &WorkerChannel::max_frame_size)
        .def(
            "receive",
            [](WorkerChannel& channel, std::optional<double> timeout) {
                std::optional<FrameView> frame;
                {
                    py::gil_scoped_release unlocked;
                    frame = channel.next_frame(to_deadline(timeout));
                }
                return frame_to_bytes(frame, [&] { channel.done_with_frame(); });
            },
            py::arg("timeout") = py::none(), "The next frame from the server; None on timeout.")
        .def(
            "send",
            [](WorkerChannel& channel, const py::bytes& data, std::optional<double> timeout) {
                const size_t size = PyBytes_GET_SIZE(data.ptr());
                py::gil_scoped_release unlocked;
                return channel.send(bytes_data(data), size, to_deadline(timeout));
            },
            py::arg("data"), py::arg("timeout") = py::none(),
            "Write one frame and ring the server's doorbell; False on timeout.");

    py::class_<Scheduler>(m, "Scheduler", "Per-model batching and dispatch to worker rings.")
        .def(py::init<std::string, size_t>(), py::arg("prefix"), py::arg("ring_capacity"))
        .def_property_readonly("notify_fd", &Scheduler::notify_fd)
        .def_property_readonly("doorbell_name", &Scheduler::doorbell_name)
        .def_property_readonly("max_request_size", &Scheduler::max_request_size)
        .def(
            "add_model",
            [](Scheduler& s, uint64_t model_id, size_t batch_size, double max_batch_delay,
               size_t max_queue_size) {
                s.add_model(model_id, make_policy(batch_size, max_batch_delay, max_queue_size));
            },
            py::arg("model_id"), py::arg("batch_size"), py::arg("max_batch_delay"),
            py::arg("max_queue_size"), "max_batch_delay is in milliseconds.")
        .def(
            "set_policy",
            [](Scheduler& s, uint64_t model_id, size_t batch_size, double max_batch_delay,
               size_t max_queue_size) {
                s.set_policy(model_id, make_policy(batch_size, max_batch_delay, max_queue_size));
            },
            py::arg("model_id"), py::arg("batch_size"), py::arg("max_batch_delay"),
            py::arg("max_queue_size"))
        .def("remove_model", &Scheduler::remove_model, py::arg("model_id"),
             py::call_guard<py::gil_scoped_release>())
        .def("drain_queue", &Scheduler::drain_queue, py::arg("model_id"),
             py::call_guard<py::gil_scoped_release>())
        .def("queued", &Scheduler::queued, py::arg("model_id"))
        .def("in_flight", &Scheduler::in_flight, py::arg("worker_id"))
        .def(
            "add_worker",
            [](Scheduler& s, uint64_t worker_id, uint64_t model_id, const py::bytes& load_frame) {
                WorkerRingNames names = s.add_worker(worker_id, model_id, load_frame);
                return py::make_tuple(names.requests, names.responses);
            },
            py::arg("worker_id"), py::arg("model_id"), py::arg("load_frame"),
            "Create the worker's rings; returns (request ring name, response ring name).")
        .def("stop_worker", &Scheduler::stop_worker, py::arg("worker_id"),
             py::call_guard<py::gil_scoped_release>())
        .def(
            "worker_exited",
            [](Scheduler& s, uint64_t worker_id, bool timed_out) {
                WorkerExit exit;
                {
                    py::gil_scoped_release unlocked;
                    exit = s.worker_exited(worker_id, timed_out);
                }
                return py::make_tuple(exit.failed, exit.timed_out);
            },
            py::arg("worker_id"), py::arg("timed_out") = false,
            "Re-queue what the dead worker held; returns (failed ids, timed-out ids).")
        .def("running_batch_seconds", &Scheduler::running_batch_seconds, py::arg("worker_id"),
             "Seconds the worker has spent on its running batch; negative when it holds none.")
        .def(
            "submit",
            [](Scheduler& s, uint64_t model_id, uint64_t request_id, const py::bytes& payload) {
                std::string copy(PyBytes_AS_STRING(payload.ptr()), PyBytes_GET_SIZE(payload.ptr()));
                py::gil_scoped_release unlocked;
                return static_cast<int>(s.submit(model_id, request_id, std::move(copy)));
            },
            py::arg("model_id"), py::arg("request_id"), py::arg("payload"),
            "Queue one msgpack-encoded request; returns a SUBMIT_* status.")
        .def(
            "take_completions",
            [](Scheduler& s) {
                std::vector<Completion> taken;
                {
                    py::gil_scoped_release unlocked;
                    taken = s.take_completions();
                }
                py::list out(taken.size());
                for (size_t i = 0; i < taken.size(); ++i) {
                    out[i] = py::make_tuple(taken[i].worker_id, taken[i].kind, py::bytes(taken[i].frame));
                }
                return out;
            },
            "Every (worker_id, kind, frame) collected since the last call.")
        .def("close", &Scheduler::close, py::call_guard<py::gil_scoped_release>());

    bind_load_generator(m);
}
