#include "frames.hpp"

namespace pyserve::frames {
namespace {

using msgpack::FormatError;
using msgpack::Reader;

void expect_items(Reader& reader, uint32_t count, const char* what) {
    if (reader.read_array_header() != count) {
        throw FormatError(std::string(what) + " must have " + std::to_string(count) + " items");
    }
}

void read_str_array(Reader& reader) {
    for (uint32_t n = reader.read_array_header(); n > 0; --n) reader.read_str();
}

ResultSpan read_result(Reader& reader) {
    ResultSpan span{};
    span.begin = reader.position();
    const uint32_t items = reader.read_array_header();
    if (items != 6 && items != 7) throw FormatError("a result must have 6 or 7 items");
    span.id = reader.read_uint();
    reader.skip_int();
    reader.read_str();
    if (!reader.read_nil()) reader.read_str();
    for (uint32_t n = reader.read_array_header(); n > 0; --n) {
        expect_items(reader, 2, "a header");
        if (reader.read_str() == kSequenceEndHeader) span.ends_sequence = true;
        reader.read_str();
    }
    reader.read_bin();
    span.more = items == 7 && reader.read_bool();
    span.end = reader.position();
    return span;
}

// [name, unit, type, [dimension names], [dimension values], value]
void read_metric(Reader& reader) {
    expect_items(reader, 6, "a metric update");
    reader.read_str();
    reader.read_str();
    reader.read_str();
    read_str_array(reader);
    read_str_array(reader);
    reader.skip_number();
}

}  // namespace

WorkerFrame parse_worker_frame(const uint8_t* data, size_t size) {
    Reader reader(data, size);
    const uint32_t items = reader.read_array_header();
    if (items < 1) throw FormatError("empty frame");
    const uint64_t kind = reader.read_uint();
    const uint32_t expected = kind == kResults ? 6 : 2;  // [kind, payload] for the others
    if (items != expected &&
        (kind == kLoaded || kind == kLoadFailed || kind == kResults || kind == kMetricUpdates)) {
        throw FormatError("a frame of kind " + std::to_string(kind) + " must have " +
                          std::to_string(expected) + " items");
    }
    WorkerFrame frame;
    frame.kind = static_cast<uint8_t>(kind);
    switch (kind) {
        case kLoaded:
            reader.skip_map();
            break;
        case kLoadFailed:
            reader.read_str();
            break;
        case kResults: {
            frame.batch_id = reader.read_uint();
            frame.done = reader.read_bool();
            const uint32_t count = reader.read_array_header();
            frame.results.reserve(count);
            for (uint32_t n = 0; n < count; ++n) frame.results.push_back(read_result(reader));
            frame.metrics_begin = reader.position();
            frame.metric_count = reader.read_array_header();
            for (size_t n = frame.metric_count; n > 0; --n) read_metric(reader);
            frame.metrics_end = reader.position();
            frame.started_ns = reader.read_uint();
            break;
        }
        case kMetricUpdates:
            frame.metrics_begin = reader.position();
            frame.metric_count = reader.read_array_header();
            for (size_t n = frame.metric_count; n > 0; --n) read_metric(reader);
            frame.metrics_end = reader.position();
            break;
        default:
            throw FormatError("unknown frame kind " + std::to_string(kind));
    }
    if (!reader.at_end()) throw FormatError("trailing bytes after the frame");
    return frame;
}

void begin_reply(std::string& out, uint64_t started_ns, size_t count) {
    msgpack::Writer writer(out);
    writer.array_header(3);
    writer.uint(kReply);
    writer.uint(started_ns);
    writer.array_header(count);
}

void put_error_result(std::string& out, uint64_t id, int status, std::string_view body,
                      const std::vector<std::pair<std::string, std::string>>& headers) {
    msgpack::Writer writer(out);
    writer.array_header(6);
    writer.uint(id);
    writer.uint(static_cast<uint64_t>(status));
    writer.str("");
    writer.str("application/json");
    writer.array_header(headers.size());
    for (const auto& [name, value] : headers) {
        writer.array_header(2);
        writer.str(name);
        writer.str(value);
    }
    writer.bin(body);
}

std::string refused_frame(uint64_t request_id, int reason) {
    std::string out;
    msgpack::Writer writer(out);
    writer.array_header(3);
    writer.uint(kRefused);
    writer.uint(request_id);
    writer.uint(static_cast<uint64_t>(reason));
    return out;
}

}  // namespace pyserve::frames
