// Reads HTTP/1.1 responses off a byte stream for the load generator: status, keep-alive,
// Content-Length, chunked and read-until-close bodies, however the stream is cut into reads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pyserve {

// Reads one HTTP/1.1 response at a time from a byte stream, however the stream is cut into
// reads. Only the head and chunk-size lines are kept: body bytes are counted off and dropped,
// so a body of any size costs no memory.
class ResponseParser {
   public:
    enum class Step { kMore, kDone, kBad };

    // Gets ready for the answer to the next request.
    void reset(bool head_request) {
        state_ = State::kHead;
        line_.clear();
        remaining_ = 0;
        trailer_bytes_ = 0;
        status_ = 0;
        keep_alive_ = true;
        head_request_ = head_request;
        received_any_ = false;
    }

    // Consumes bytes up to the end of the response; `used` says how many. Before kDone it
    // always uses everything it is given.
    Step feed(const char* data, size_t size, size_t& used);

    // The peer closed the stream: only a body that runs until the close ends well there.
    Step peer_closed() const { return state_ == State::kUntilClose ? Step::kDone : Step::kBad; }

    int status() const { return status_; }
    bool keep_alive() const { return keep_alive_; }
    // Whether any byte of this response arrived: a keep-alive connection the server closed
    // while we were sending shows up as a close before the first byte.
    bool received_any() const { return received_any_; }

   private:
    enum class State { kHead, kBody, kUntilClose, kChunkSize, kChunkData, kChunkEnd, kTrailers, kDone };

    Step read_head(const char* data, size_t size, size_t& used);
    bool parse_head();
    bool parse_chunk_size();
    // Appends to line_ up to and including the next '\n'; true once line_ is a whole line.
    bool take_line(const char* data, size_t size, size_t& used);

    State state_ = State::kHead;
    std::string line_;  // the head so far, or the current chunk-size line or trailer
    uint64_t remaining_ = 0;  // body or chunk bytes still to come
    size_t trailer_bytes_ = 0;
    int status_ = 0;
    bool keep_alive_ = true;
    bool head_request_ = false;
    bool received_any_ = false;
};

}  // namespace pyserve
