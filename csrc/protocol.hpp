// Frame kinds exchanged between the server and its workers. pyserve/protocol.py
// holds the same numbers and documents each frame's fields.
#pragma once

#include <cstdint>
#include <string>

#include "msgpack_lite.hpp"

namespace pyserve::protocol {

// Server -> worker, on the worker's request ring.
constexpr uint8_t kLoad = 1;   // [kLoad, settings]
constexpr uint8_t kBatch = 2;  // [kBatch, batch_id, [request, ...]]
constexpr uint8_t kStop = 3;   // [kStop]

// Worker -> server, on the worker's response ring.
constexpr uint8_t kLoaded = 11;      // [kLoaded, info]
constexpr uint8_t kLoadFailed = 12;  // [kLoadFailed, message]
constexpr uint8_t kResults = 13;     // [kResults, batch_id, done, [result, ...], [metric, ...], started_ns]

// Core -> Python only: a worker whose frames could not be read.
constexpr uint8_t kBroken = 100;

// What the core itself needs from a worker's frame.
struct ResponseFrame {
    uint8_t kind;
    uint64_t batch_id;  // kResults only
    bool done;          // kResults only: the batch's last frame
};

namespace detail {

inline void expect_items(msgpack::Reader& reader, uint32_t count, const char* what) {
    if (reader.read_array_header() != count) {
        throw msgpack::FormatError(std::string(what) + " must have " + std::to_string(count) + " items");
    }
}

inline void read_str_array(msgpack::Reader& reader) {
    for (uint32_t n = reader.read_array_header(); n > 0; --n) reader.read_str();
}

// [id, status, phrase, content_type or nil, [[name, value], ...], body]
inline void read_result(msgpack::Reader& reader) {
    expect_items(reader, 6, "a result");
    reader.read_uint();
    reader.skip_int();
    reader.read_str();
    if (!reader.read_nil()) reader.read_str();
    for (uint32_t n = reader.read_array_header(); n > 0; --n) {
        expect_items(reader, 2, "a header");
        reader.read_str();
        reader.read_str();
    }
    reader.read_bin();
}

// [name, unit, type, [dimension names], [dimension values], value]
inline void read_metric(msgpack::Reader& reader) {
    expect_items(reader, 6, "a metric update");
    reader.read_str();
    reader.read_str();
    reader.read_str();
    read_str_array(reader);
    read_str_array(reader);
    reader.skip_number();
}

}  // namespace detail

// Reads a frame a worker wrote and checks all of it against the shapes above (and the
// field types pyserve/protocol.py documents), so that Python can unpack any frame the
// core hands on without checking it again. Throws msgpack::FormatError for anything
// else: bytes that are not msgpack, a wrong type or item count, an unknown kind, a
// declared length past the end, nesting deeper than Reader::kMaxDepth, trailing bytes.
inline ResponseFrame parse_response_frame(const uint8_t* data, size_t size) {
    msgpack::Reader reader(data, size);
    const uint32_t items = reader.read_array_header();
    if (items < 1) throw msgpack::FormatError("empty frame");
    const uint64_t kind = reader.read_uint();
    const uint32_t expected = kind == kResults ? 6 : 2;  // [kind, payload] for the others
    if (items != expected && (kind == kLoaded || kind == kLoadFailed || kind == kResults)) {
        throw msgpack::FormatError("a frame of kind " + std::to_string(kind) + " must have " +
                                   std::to_string(expected) + " items");
    }
    ResponseFrame frame{static_cast<uint8_t>(kind), 0, false};
    switch (kind) {
        case kLoaded:
            reader.skip_map();
            break;
        case kLoadFailed:
            reader.read_str();
            break;
        case kResults:
            frame.batch_id = reader.read_uint();
            frame.done = reader.read_bool();
            for (uint32_t n = reader.read_array_header(); n > 0; --n) detail::read_result(reader);
            for (uint32_t n = reader.read_array_header(); n > 0; --n) detail::read_metric(reader);
            reader.read_uint();
            break;
        default:
            throw msgpack::FormatError("unknown frame kind " + std::to_string(kind));
    }
    if (!reader.at_end()) throw msgpack::FormatError("trailing bytes after the frame");
    return frame;
}

}  // namespace pyserve::protocol
