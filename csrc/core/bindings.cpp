// pyserve._core: the only file of the core that knows about Python.
//
// Every call that can block or copy a large buffer releases the GIL. C++ errors reach
// Python as ShmError (an OSError), RingError, FrameError (a ValueError) or the builtin
// exceptions pybind11 maps std::invalid_argument (ValueError), std::out_of_range (IndexError)
// and every other std::exception (RuntimeError) to; nothing else crosses the boundary.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <malloc.h>
#include <sys/prctl.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <optional>

#include "channel.hpp"
#include "core.hpp"
#include "frames.hpp"
#include "msgpack_lite.hpp"
#include "ring.hpp"

namespace py = pybind11;
using namespace pyserve;

namespace {

// TorchServe reads batch settings as Java ints; larger values are refused, not wrapped.
constexpr double kMaxSetting = 2147483647.0;

Deadline to_deadline(std::optional<double> timeout) { return deadline_after(timeout.value_or(-1.0)); }

const uint8_t* bytes_data(const py::bytes& data) {
    return reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(data.ptr()));
}
size_t bytes_size(const py::bytes& data) { return static_cast<size_t>(PyBytes_GET_SIZE(data.ptr())); }

// Copies the frame into a Python bytes object, then lets the ring reuse its space.
template <typename Release>
py::object frame_to_bytes(const std::optional<FrameView>& frame, Release release) {
    if (!frame) return py::none();
    py::bytes copy(reinterpret_cast<const char*>(frame->data), frame->size);
    release();
    return std::move(copy);
}

BatchPolicy make_policy(int64_t batch_size, double max_batch_delay_ms, int64_t max_queue_size,
                        int64_t client_timeout_ms, bool wait_for_full_batch) {
    if (batch_size < 1 || batch_size > kMaxSetting) {
        throw std::invalid_argument("batch_size must be between 1 and 2147483647");
    }
    if (!(max_batch_delay_ms >= 0 && max_batch_delay_ms <= kMaxSetting)) {
        throw std::invalid_argument("max_batch_delay must be between 0 and 2147483647 ms");
    }
    if (max_queue_size < 0 || max_queue_size > kMaxSetting) {
        throw std::invalid_argument("max_queue_size must be between 0 and 2147483647");
    }
    if (client_timeout_ms < 0) throw std::invalid_argument("client_timeout must not be negative");
    BatchPolicy policy;
    policy.client_timeout = std::chrono::milliseconds(client_timeout_ms);
    policy.wait_for_full_batch = wait_for_full_batch;
    policy.batch_size = static_cast<size_t>(batch_size);
    policy.max_batch_delay = std::chrono::microseconds(std::llround(max_batch_delay_ms * 1000));
    policy.max_queue_size = static_cast<size_t>(max_queue_size);
    return policy;
}

// (status, body) or (status, body, [(header name, value), ...]).
Answer make_answer(const py::tuple& answer) {
    Answer made{answer[0].cast<int>(), answer[1].cast<std::string>(), {}};
    if (answer.size() > 2) {
        made.headers = answer[2].cast<std::vector<std::pair<std::string, std::string>>>();
    }
    return made;
}

py::tuple fds_tuple(const PeerFds& fds) {
    return py::make_tuple(fds.down_ring, fds.up_ring, fds.up_event, fds.down_event);
}

PeerFds fds_from(int down_ring, int up_ring, int up_event, int down_event) {
    return PeerFds{down_ring, up_ring, up_event, down_event};
}

py::tuple histogram(const Histogram& h) {
    return py::make_tuple(std::vector<uint64_t>(h.counts.begin(), h.counts.end()), h.sum);
}

ModelStats stats_unlocked(const Core& core, uint64_t model_id) {
    py::gil_scoped_release unlocked;  // the model's mutex may be held by a dispatch
    return core.stats(model_id);
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

// A frontend's end of its channel: submissions up, replies down.
class FrontendChannel {
   public:
    FrontendChannel(PeerFds fds) : channel_(fds) {}

    int wait_fd() const { return channel_.wait_fd(); }

    int submit(uint64_t model_id, uint64_t request_id, const py::bytes& payload, uint64_t worker,
               uint64_t sequence) {
        const size_t size = bytes_size(payload);
        uint8_t* room = nullptr;
        const WriteStatus status = channel_.reserve(sizeof(frames::SubmitHeader) + size, &room);
        if (status != WriteStatus::kWritten) return static_cast<int>(status);
        frames::SubmitHeader header{};
        header.kind = frames::kSubmit;
        header.model_id = model_id;
        header.request_id = request_id;
        header.worker = worker;
        header.sequence = sequence;
        std::memcpy(room, &header, sizeof(header));
        std::memcpy(room + sizeof(header), bytes_data(payload), size);
        channel_.commit();
        return static_cast<int>(status);
    }

    int cancel(uint64_t model_id, uint64_t request_id) {
        frames::CancelHeader header{};
        header.kind = frames::kCancel;
        header.model_id = model_id;
        header.request_id = request_id;
        return static_cast<int>(channel_.try_send(reinterpret_cast<const uint8_t*>(&header), sizeof(header)));
    }

    bool wait_for_room(size_t size) { return channel_.wait_for_room(sizeof(frames::SubmitHeader) + size); }

    py::list take() {
        py::list replies;
        channel_.clear_wakeups();
        while (auto frame = channel_.try_receive()) {
            replies.append(py::bytes(reinterpret_cast<const char*>(frame->data), frame->size));
            channel_.release();
        }
        return replies;
    }

   private:
    PeerChannel channel_;
};

void bind_constants(py::module_& m) {
    m.attr("FRAME_LOAD") = frames::kLoad;
    m.attr("FRAME_BATCH") = frames::kBatch;
    m.attr("FRAME_STOP") = frames::kStop;
    m.attr("FRAME_WITHDRAW") = frames::kWithdraw;
    m.attr("FRAME_LOADED") = frames::kLoaded;
    m.attr("FRAME_LOAD_FAILED") = frames::kLoadFailed;
    m.attr("FRAME_RESULTS") = frames::kResults;
    m.attr("FRAME_METRIC_UPDATES") = frames::kMetricUpdates;
    m.attr("FRAME_REPLY") = frames::kReply;
    m.attr("FRAME_REFUSED") = frames::kRefused;
    m.attr("FRAME_BROKEN") = frames::kBroken;
    m.attr("FRAME_METRICS") = frames::kMetrics;
    m.attr("SUBMIT_QUEUED") = static_cast<int>(SubmitStatus::kQueued);
    m.attr("SUBMIT_QUEUE_FULL") = static_cast<int>(SubmitStatus::kQueueFull);
    m.attr("SUBMIT_UNKNOWN_MODEL") = static_cast<int>(SubmitStatus::kUnknownModel);
    m.attr("SUBMIT_TOO_LARGE") = static_cast<int>(SubmitStatus::kTooLarge);
    m.attr("SUBMIT_UNKNOWN_WORKER") = static_cast<int>(SubmitStatus::kUnknownWorker);
    m.attr("SUBMIT_TOO_MANY_SEQUENCES") = static_cast<int>(SubmitStatus::kTooManySequences);
    m.attr("SUBMIT_SEQUENCE_CLOSED") = static_cast<int>(SubmitStatus::kSequenceClosed);
    m.attr("SUBMIT_SEQUENCE_FULL") = static_cast<int>(SubmitStatus::kSequenceFull);
    m.attr("WRITTEN") = static_cast<int>(WriteStatus::kWritten);
    m.attr("NO_ROOM") = static_cast<int>(WriteStatus::kNoRoom);
    m.attr("NO_MEMORY") = static_cast<int>(WriteStatus::kNoMemory);
    m.attr("TOO_LARGE") = static_cast<int>(WriteStatus::kTooLarge);
    m.attr("CANCEL_UNKNOWN") = static_cast<int>(CancelResult::kUnknown);
    m.attr("CANCEL_REMOVED") = static_cast<int>(CancelResult::kRemoved);
    m.attr("CANCEL_RUNNING") = static_cast<int>(CancelResult::kRunning);
    m.attr("MAX_BATCHES_IN_FLIGHT") = ModelBatcher::kMaxBatchesInFlight;
    m.attr("MAX_ATTEMPTS") = Core::kMaxAttempts;
    m.attr("ORIGIN_SHIFT") = Core::kOriginShift;
    m.attr("RING_INITIAL_COMMIT") = Ring::kInitialCommit;
}

void bind_core(py::module_& m) {
    py::class_<Core>(m, "Core", "Every model's batcher and every worker's and frontend's channel.")
        .def(py::init<size_t>(), py::arg("ring_capacity"))
        .def_property_readonly("notify_fd", &Core::notify_fd,
                               "Readable when take() has something; handler metrics (METRICS events)\n"
                               "do not make it readable, they wait for the next take().")
        .def_property_readonly("max_request_size", &Core::max_request_size)
        .def(
            "add_model",
            [](Core& core, uint64_t model_id, int64_t batch_size, double max_batch_delay, int64_t max_queue_size,
               int64_t client_timeout, bool wait_for_full_batch) {
                core.add_model(model_id, make_policy(batch_size, max_batch_delay, max_queue_size, client_timeout,
                                                     wait_for_full_batch));
            },
            py::arg("model_id"), py::arg("batch_size"), py::arg("max_batch_delay"), py::arg("max_queue_size"),
            py::arg("client_timeout") = 0, py::arg("wait_for_full_batch") = false,
            "max_batch_delay and client_timeout are in milliseconds (client_timeout 0: none); ValueError\n"
            "for settings out of range. wait_for_full_batch: TorchServe's policy, no batch before it is\n"
            "full or max_batch_delay old, even for an idle worker.")
        .def(
            "set_policy",
            [](Core& core, uint64_t model_id, int64_t batch_size, double max_batch_delay, int64_t max_queue_size,
               int64_t client_timeout, bool wait_for_full_batch) {
                const BatchPolicy policy =
                    make_policy(batch_size, max_batch_delay, max_queue_size, client_timeout, wait_for_full_batch);
                py::gil_scoped_release unlocked;
                core.set_policy(model_id, policy);
            },
            py::arg("model_id"), py::arg("batch_size"), py::arg("max_batch_delay"), py::arg("max_queue_size"),
            py::arg("client_timeout") = 0, py::arg("wait_for_full_batch") = false)
        .def(
            "set_sequences",
            [](Core& core, uint64_t model_id, int64_t max_sequences, int64_t max_queue, int64_t max_idle_ms,
               int64_t timeout_ms, bool continuous) {
                if (max_sequences < 0 || max_queue < 0 || max_idle_ms < 0 || timeout_ms < 0) {
                    throw std::invalid_argument("sequence settings must not be negative");
                }
                SequencePolicy policy;
                policy.max_sequences = static_cast<size_t>(max_sequences);
                policy.max_queue = static_cast<size_t>(max_queue);
                policy.max_idle = std::chrono::milliseconds(max_idle_ms);
                policy.timeout = std::chrono::milliseconds(timeout_ms);
                policy.continuous = continuous;
                py::gil_scoped_release unlocked;
                core.set_sequences(model_id, policy);
            },
            py::arg("model_id"), py::arg("max_sequences"), py::arg("max_queue"), py::arg("max_idle"),
            py::arg("timeout"), py::arg("continuous"),
            "Make the model stateful: requests submitted with the same `sequence` key run one at a\n"
            "time, in order, on one worker (see sequences.hpp). Times in milliseconds; max_sequences 0\n"
            "turns it off.")
        .def(
            "expire_sequences",
            [](Core& core, uint64_t model_id) {
                py::gil_scoped_release unlocked;
                return core.expire_sequences(model_id);
            },
            py::arg("model_id"), "Close idle and timed-out sequences; returns how many stay open.")
        .def(
            "remove_model",
            [](Core& core, uint64_t model_id, int status, std::string body) {
                py::gil_scoped_release unlocked;
                core.remove_model(model_id, Answer{status, std::move(body), {}});
            },
            py::arg("model_id"), py::arg("status"), py::arg("body"),
            "Answer what the model still queues with (status, body) and forget it.")
        .def(
            "fail_queued",
            [](Core& core, uint64_t model_id, int status, std::string body) {
                py::gil_scoped_release unlocked;
                return core.fail_queued(model_id, Answer{status, std::move(body), {}});
            },
            py::arg("model_id"), py::arg("status"), py::arg("body"),
            "Answer and empty the model's queue; returns how many requests it held.")
        .def(
            "expire_queued",
            [](Core& core, uint64_t model_id, double seconds, const py::tuple& answer) {
                const Answer made = make_answer(answer);
                py::gil_scoped_release unlocked;
                return core.expire_queued(model_id, seconds, made);
            },
            py::arg("model_id"), py::arg("seconds"), py::arg("answer"),
            "Answer the queued requests that waited longer than `seconds` with `answer`, a\n"
            "(status, body[, headers]) tuple; returns how many.")
        .def("queued", &Core::queued, py::arg("model_id"), py::call_guard<py::gil_scoped_release>())
        .def("oldest_queued_seconds", &Core::oldest_queued_seconds, py::arg("model_id"),
             py::call_guard<py::gil_scoped_release>(),
             "How long the oldest request queued for a worker has waited; 0.0 if none.")
        .def(
            "stats",
            [](Core& core, uint64_t model_id) {
                const ModelStats stats = stats_unlocked(core, model_id);
                return py::make_tuple(histogram(stats.batch_sizes), histogram(stats.queue_depths));
            },
            py::arg("model_id"),
            "((batch size counts, sum), (queue depth counts, sum)); count i > 0 is of values in\n"
            "(2^(i-2), 2^(i-1)], count 0 of zeros.")
        .def(
            "withdrawn",
            [](Core& core, uint64_t model_id) {
                const ModelStats stats = stats_unlocked(core, model_id);
                return py::make_tuple(stats.hung_up, stats.withdrawn_client_gone,
                                      stats.withdrawn_client_timeout, stats.dropped_answers);
            },
            py::arg("model_id"),
            "(requests whose client hung up before their answer; of those, the ones withdrawn\n"
            "unrun and the ones that ran, their answer dropped, counted once their batch ended;\n"
            "requests withdrawn unrun because they waited past clientTimeoutInMills), in the\n"
            "order (hung up, withdrawn: client gone, withdrawn: client timeout, answers dropped).")
        .def(
            "add_worker",
            [](Core& core, uint64_t worker_id, uint64_t model_id, const py::bytes& load_frame) {
                std::string frame(PyBytes_AS_STRING(load_frame.ptr()), bytes_size(load_frame));
                PeerFds fds;
                {
                    py::gil_scoped_release unlocked;
                    fds = core.add_worker(worker_id, model_id, frame);
                }
                return fds_tuple(fds);
            },
            py::arg("worker_id"), py::arg("model_id"), py::arg("load_frame"),
            "Make the worker's channel; returns the four descriptors its process inherits\n"
            "(down ring, up ring, up event, down event). ShmError when descriptors or memory run out.")
        .def("stop_worker", &Core::stop_worker, py::arg("worker_id"), py::call_guard<py::gil_scoped_release>())
        .def(
            "worker_exited",
            [](Core& core, uint64_t worker_id, bool timed_out, const py::tuple& died_twice,
               const py::tuple& timed_out_answer, const py::tuple& lost) {
                const Answer died = make_answer(died_twice), late = make_answer(timed_out_answer),
                             gone = make_answer(lost);
                ExitReport report;
                {
                    py::gil_scoped_release unlocked;
                    report = core.worker_exited(worker_id, timed_out, died, late, gone);
                }
                return py::make_tuple(report.failed, report.timed_out, report.requeued, report.was_running);
            },
            py::arg("worker_id"), py::arg("timed_out"), py::arg("died_twice"), py::arg("timed_out_answer"),
            py::arg("lost"),
            "Answer or queue again what the worker held, and forget it. Answers are (status, body)\n"
            "tuples. Returns (failed, timed_out, requeued, was_running).")
        .def("in_flight", &Core::in_flight, py::arg("worker_id"), py::call_guard<py::gil_scoped_release>())
        .def("running_batch_seconds", &Core::running_batch_seconds, py::arg("worker_id"),
             py::call_guard<py::gil_scoped_release>(),
             "Seconds the worker has spent on its running batch; negative when it holds none.")
        .def(
            "add_frontend",
            [](Core& core) {
                std::pair<uint32_t, PeerFds> added;
                {
                    py::gil_scoped_release unlocked;
                    added = core.add_frontend();
                }
                return py::make_tuple(added.first, fds_tuple(added.second));
            },
            "A channel for a frontend process: (origin, descriptors it inherits).")
        .def("remove_frontend", &Core::remove_frontend, py::arg("origin"),
             py::call_guard<py::gil_scoped_release>())
        .def(
            "submit",
            [](Core& core, uint64_t model_id, uint64_t request_id, const py::bytes& payload, uint64_t worker,
               uint64_t sequence) {
                std::string copy(PyBytes_AS_STRING(payload.ptr()), bytes_size(payload));
                py::gil_scoped_release unlocked;
                return static_cast<int>(core.submit(model_id, request_id, std::move(copy), worker, sequence));
            },
            py::arg("model_id"), py::arg("request_id"), py::arg("payload"), py::arg("worker") = 0,
            py::arg("sequence") = 0,
            "Queue one msgpack-encoded request; returns a SUBMIT_* status.")
        .def(
            "cancel",
            [](Core& core, uint64_t model_id, uint64_t request_id) {
                py::gil_scoped_release unlocked;
                return static_cast<int>(core.cancel(model_id, request_id));
            },
            py::arg("model_id"), py::arg("request_id"),
            "Take a queued request out, or drop the answer of a running one; a CANCEL_* status.")
        .def(
            "take",
            [](Core& core) {
                Taken taken;
                {
                    py::gil_scoped_release unlocked;
                    taken = core.take();
                }
                py::list replies(taken.replies.size());
                for (size_t i = 0; i < taken.replies.size(); ++i) replies[i] = py::bytes(taken.replies[i]);
                py::list events(taken.events.size());
                for (size_t i = 0; i < taken.events.size(); ++i) {
                    const Event& event = taken.events[i];
                    events[i] = py::make_tuple(event.worker_id, event.kind, py::bytes(event.frame));
                }
                return py::make_tuple(replies, events);
            },
            "(reply frames, (worker_id, kind, frame) events) collected since the last call.")
        .def("close", &Core::close, py::call_guard<py::gil_scoped_release>());
}

void bind_channels(py::module_& m) {
    py::class_<PeerChannel>(m, "WorkerChannel", "A worker's end of its channel.")
        .def(py::init([](int down_ring, int up_ring, int up_event, int down_event) {
                 return std::make_unique<PeerChannel>(fds_from(down_ring, up_ring, up_event, down_event));
             }),
             py::arg("down_ring"), py::arg("up_ring"), py::arg("up_event"), py::arg("down_event"),
             "Takes over the four inherited descriptors.")
        .def_property_readonly("max_frame_size", &PeerChannel::max_frame_size)
        .def(
            "receive",
            [](PeerChannel& channel, std::optional<double> timeout) {
                std::optional<FrameView> frame;
                {
                    py::gil_scoped_release unlocked;
                    frame = channel.receive(to_deadline(timeout), default_spin());
                }
                return frame_to_bytes(frame, [&] { channel.release(); });
            },
            py::arg("timeout") = py::none(), "The next frame from the server; None on timeout.")
        .def(
            "send",
            [](PeerChannel& channel, const py::bytes& data, std::optional<double> timeout) {
                py::gil_scoped_release unlocked;
                return static_cast<int>(channel.send(bytes_data(data), bytes_size(data), to_deadline(timeout)));
            },
            py::arg("data"), py::arg("timeout") = py::none(),
            "Write one frame, waiting for room; a write status (WRITTEN, NO_ROOM after the\n"
            "timeout, NO_MEMORY, TOO_LARGE).");

    py::class_<FrontendChannel>(m, "FrontendChannel", "A frontend's end of its channel.")
        .def(py::init([](int down_ring, int up_ring, int up_event, int down_event) {
                 return std::make_unique<FrontendChannel>(fds_from(down_ring, up_ring, up_event, down_event));
             }),
             py::arg("down_ring"), py::arg("up_ring"), py::arg("up_event"), py::arg("down_event"))
        .def_property_readonly("wait_fd", &FrontendChannel::wait_fd,
                               "Readable when replies came, or room for submissions.")
        .def("submit", &FrontendChannel::submit, py::arg("model_id"), py::arg("request_id"), py::arg("payload"),
             py::arg("worker") = 0, py::arg("sequence") = 0, "Queue one request with the server; a write status.")
        .def("cancel", &FrontendChannel::cancel, py::arg("model_id"), py::arg("request_id"))
        .def("wait_for_room", &FrontendChannel::wait_for_room, py::arg("size"),
             "After NO_ROOM: be woken through wait_fd when there is room; True if there is already.")
        .def("take", &FrontendChannel::take, "Every reply frame waiting, as bytes.");

    py::class_<Ring>(m, "Ring", "A one-writer, one-reader ring of frames in anonymous shared memory.")
        .def_static("create", &Ring::create, py::arg("capacity"))
        .def_static(
            "attach", [](int fd) { return Ring::attach(UniqueFd(fd)); }, py::arg("fd"),
            "Map a ring from a descriptor, which it takes over.")
        .def_property_readonly("fd", &Ring::fd)
        .def_property_readonly("capacity", &Ring::capacity)
        .def_property_readonly("max_frame_size", &Ring::max_frame_size)
        .def_property_readonly("committed_bytes", &Ring::committed_bytes,
                               "Memory the writer of this process committed in the data area.")
        .def_property_readonly("empty", &Ring::empty)
        .def(
            "write",
            [](Ring& ring, const py::bytes& data) {
                bool wake = false;
                const WriteStatus status = ring.write(bytes_data(data), bytes_size(data), &wake);
                return py::make_tuple(static_cast<int>(status), wake);
            },
            py::arg("data"), "(write status, whether the reader must be woken).")
        .def(
            "read", [](Ring& ring) { return frame_to_bytes(ring.peek(), [&] { ring.release(); }); },
            "The next frame as bytes, or None if there is none.");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "pyserve's C++ core: channels over anonymous shared memory, batchers and their thread.";

    py::register_exception<ShmError>(m, "ShmError", PyExc_OSError);
    py::register_exception<RingError>(m, "RingError", PyExc_RuntimeError);
    py::register_exception<msgpack::FormatError>(m, "FrameError", PyExc_ValueError);

    bind_constants(m);
    bind_core(m);
    bind_channels(m);

    m.def(
        "decode_worker_frame",
        [](const py::bytes& frame) {
            const auto parsed = frames::parse_worker_frame(bytes_data(frame), bytes_size(frame));
            py::list results;
            for (const auto& span : parsed.results) results.append(py::make_tuple(span.id, span.more));
            return py::make_tuple(parsed.kind, parsed.batch_id, parsed.done, results);
        },
        py::arg("frame"),
        "Check a frame as the core checks every frame a worker writes, with the same decoder,\n"
        "and return (kind, batch_id, done, [(result id, more), ...]). FrameError says what is\n"
        "wrong with any other frame. The server never calls it: it exists so that the decoder\n"
        "can be tested and fuzzed.");
    m.def("set_parent_death_signal", &set_parent_death_signal, py::arg("signal"),
          "Have the kernel send `signal` to this process when its parent exits.");
    m.def("tune_allocator", &tune_allocator, py::arg("mmap_threshold"), py::arg("trim_threshold"),
          "Set glibc malloc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD, in bytes, for this process.");
}
