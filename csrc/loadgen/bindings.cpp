// pyserve.bench._loadgen: the native engine of `pyserve bench`, apart from the serving core so
// that the server's extension knows nothing of HTTP.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "load_generator.hpp"

namespace py = pybind11;
using namespace pyserve;

namespace {

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

}  // namespace

PYBIND11_MODULE(_loadgen, m) {
    m.doc() = "The native HTTP/1.1 load generator behind `pyserve bench`.";

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
                return generator.wait(deadline_after(timeout.value_or(-1.0)));
            },
            py::arg("timeout") = py::none(), "Block until the run ends; False if `timeout` came first.")
        .def_property_readonly("completed", &LoadGenerator::completed,
                               "Requests answered so far; readable while running.")
        .def(
            "result", [](LoadGenerator& generator) { return load_result_to_dict(generator.result()); },
            "{latencies_us: bytes of doubles, statuses, errors, seconds, cpu_seconds, completed};\n"
            "RuntimeError while the run is still going.");
}
