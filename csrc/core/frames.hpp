// The frames that cross a channel. pyserve/frames.py holds the same numbers and documents
// each frame's fields for Python.
//
// Worker frames are msgpack: the core frames requests that Python already packed without
// re-encoding them, and reads what a worker writes only to check it and to route each
// result to the process that waits for it. Frontend submissions are a fixed binary header
// in front of the request's msgpack bytes, so the core parses nothing to queue one.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "msgpack_lite.hpp"

namespace pyserve::frames {

// Server -> worker.
constexpr uint8_t kLoad = 1;   // [kLoad, settings]
constexpr uint8_t kBatch = 2;  // [kBatch, batch_id, [request, ...]]
constexpr uint8_t kStop = 3;   // [kStop]
// [kWithdraw, request_id]: its client hung up after its batch was sent; the worker leaves it
// out if it has not started that batch yet (it waits in the ring behind the running one).
constexpr uint8_t kWithdraw = 4;

// Worker -> server.
constexpr uint8_t kLoaded = 11;      // [kLoaded, info]
constexpr uint8_t kLoadFailed = 12;  // [kLoadFailed, message]
constexpr uint8_t kResults = 13;     // [kResults, batch_id, done, [result, ...], [metric, ...], started_ns]
constexpr uint8_t kMetricUpdates = 14;  // [kMetricUpdates, [metric, ...]]: metrics of an idle worker

// Frontend -> server: SubmitHeader or CancelHeader, binary.
constexpr uint8_t kSubmit = 21;
constexpr uint8_t kCancel = 22;

// Server -> the process a request came from (a frontend's down ring, or Core::take()).
constexpr uint8_t kReply = 31;    // [kReply, started_ns, [result, ...]]
constexpr uint8_t kRefused = 32;  // [kRefused, request_id, SubmitStatus]

// Server -> this process's Python only, about a worker.
constexpr uint8_t kBroken = 100;   // its frames could not be read; the frame says why
constexpr uint8_t kMetrics = 101;  // what its handler recorded: the msgpack list of updates

struct SubmitHeader {
    uint8_t kind;  // kSubmit
    uint8_t unused[7];
    uint64_t model_id;
    uint64_t request_id;
    uint64_t worker;    // 0, or the worker the request must run on
    uint64_t sequence;  // 0, or its stateful sequence's key
};
struct CancelHeader {
    uint8_t kind;  // kCancel
    uint8_t unused[7];
    uint64_t model_id;
    uint64_t request_id;
};

// One result in a worker's results frame: [id, status, phrase, content_type or nil,
// [[name, value], ...], body] and, for all but the last part of a streamed answer, a 7th
// item `more` = true.
struct ResultSpan {
    uint64_t id;
    size_t begin;  // its bytes within the frame
    size_t end;
    bool more;
    bool ends_sequence;  // its headers name kSequenceEndHeader: the handler ended its sequence
};

// TorchServe's response header by which a handler ends its sequence.
constexpr std::string_view kSequenceEndHeader = "ts_request_sequence_end";

struct WorkerFrame {
    uint8_t kind = 0;
    // kResults only:
    uint64_t batch_id = 0;
    bool done = false;
    std::vector<ResultSpan> results;
    // kResults and kMetricUpdates:
    size_t metrics_begin = 0;  // the metric list's bytes
    size_t metrics_end = 0;
    size_t metric_count = 0;
    uint64_t started_ns = 0;
};

// Reads a frame a worker wrote and checks all of it, so that Python can unpack any frame the
// core hands on without checking it again. Throws msgpack::FormatError for anything else:
// bytes that are not msgpack, a wrong type or item count, an unknown kind, a declared length
// past the end, nesting deeper than Reader::kMaxDepth, trailing bytes.
WorkerFrame parse_worker_frame(const uint8_t* data, size_t size);

// A reply frame's head: [kReply, started_ns, [ then `count` results follow.
void begin_reply(std::string& out, uint64_t started_ns, size_t count);
// A result the core makes itself: [id, status, "", "application/json", headers, body].
void put_error_result(std::string& out, uint64_t id, int status, std::string_view body,
                      const std::vector<std::pair<std::string, std::string>>& headers);
std::string refused_frame(uint64_t request_id, int reason);

}  // namespace pyserve::frames
