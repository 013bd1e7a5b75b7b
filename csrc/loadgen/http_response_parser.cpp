#include "http_response_parser.hpp"

#include <cstring>
#include <limits>
#include <optional>
#include <string_view>

namespace pyserve {
namespace {

constexpr size_t kMaxHeadBytes = 64 * 1024;
constexpr size_t kMaxLineBytes = 4 * 1024;      // one chunk-size line or one trailer
constexpr size_t kMaxTrailerBytes = 64 * 1024;

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view text, std::string_view lowercase) {
    if (text.size() != lowercase.size()) return false;
    for (size_t i = 0; i < text.size(); ++i) {
        if (lower(text[i]) != lowercase[i]) return false;
    }
    return true;
}

std::string_view trim(std::string_view text) {
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r')) {
        text.remove_suffix(1);
    }
    return text;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Calls `visit` with each trimmed, non-empty token of a comma-separated header value.
template <typename Visit>
void for_each_token(std::string_view value, Visit visit) {
    while (!value.empty()) {
        const size_t comma = value.find(',');
        std::string_view token = trim(value.substr(0, comma));
        if (!token.empty()) visit(token);
        if (comma == std::string_view::npos) break;
        value.remove_prefix(comma + 1);
    }
}

}  // namespace

ResponseParser::Step ResponseParser::feed(const char* data, size_t size, size_t& used) {
    used = 0;
    if (size > 0) received_any_ = true;
    while (state_ != State::kDone) {
        const char* at = data + used;
        const size_t left = size - used;
        if (left == 0) return Step::kMore;
        size_t took = 0;
        switch (state_) {
            case State::kHead:
                if (read_head(at, left, took) == Step::kBad) return Step::kBad;
                break;
            case State::kBody:
            case State::kChunkData:
                took = static_cast<size_t>(std::min<uint64_t>(remaining_, left));
                remaining_ -= took;
                if (remaining_ == 0) {
                    state_ = state_ == State::kBody ? State::kDone : State::kChunkEnd;
                }
                break;
            case State::kUntilClose:
                took = left;
                break;
            case State::kChunkSize:
                if (take_line(at, left, took)) {
                    if (!parse_chunk_size()) return Step::kBad;
                } else if (line_.size() > kMaxLineBytes) {
                    return Step::kBad;
                }
                break;
            case State::kChunkEnd:  // the CRLF after a chunk's data
                if (take_line(at, left, took)) {
                    if (line_ != "\r\n" && line_ != "\n") return Step::kBad;
                    line_.clear();
                    state_ = State::kChunkSize;
                } else if (line_.size() > 2) {
                    return Step::kBad;
                }
                break;
            case State::kTrailers:
                if (take_line(at, left, took)) {
                    trailer_bytes_ += line_.size();
                    if (line_ == "\r\n" || line_ == "\n") {
                        state_ = State::kDone;
                    } else if (trailer_bytes_ > kMaxTrailerBytes) {
                        return Step::kBad;
                    }
                    line_.clear();
                } else if (line_.size() > kMaxLineBytes) {
                    return Step::kBad;
                }
                break;
            case State::kDone:
                break;
        }
        used += took;
    }
    return Step::kDone;
}

bool ResponseParser::take_line(const char* data, size_t size, size_t& used) {
    const void* newline = std::memchr(data, '\n', size);
    used = newline ? static_cast<size_t>(static_cast<const char*>(newline) - data) + 1 : size;
    line_.append(data, used);
    return newline != nullptr;
}

ResponseParser::Step ResponseParser::read_head(const char* data, size_t size, size_t& used) {
    const size_t before = line_.size();
    const size_t taken = std::min(size, kMaxHeadBytes - before);
    line_.append(data, taken);
    const size_t end = line_.find("\r\n\r\n", before >= 3 ? before - 3 : 0);
    if (end == std::string::npos) {
        used = taken;
        return line_.size() >= kMaxHeadBytes ? Step::kBad : Step::kMore;
    }
    const size_t head_size = end + 4;
    used = head_size - before;  // the rest belongs to the body
    line_.resize(head_size);
    if (!parse_head()) return Step::kBad;
    line_.clear();
    return Step::kMore;
}

bool ResponseParser::parse_head() {
    const std::string_view head(line_);
    // "HTTP/1.x NNN reason\r\n"; the reason may be empty, and so may the space before it.
    if (head.size() < 14 || head.compare(0, 7, "HTTP/1.") != 0 || !is_digit(head[7]) || head[8] != ' ' ||
        !is_digit(head[9]) || !is_digit(head[10]) || !is_digit(head[11]) || (head[12] != ' ' && head[12] != '\r')) {
        return false;
    }
    const bool http10 = head[7] == '0';
    status_ = (head[9] - '0') * 100 + (head[10] - '0') * 10 + (head[11] - '0');
    if (status_ < 100) return false;

    std::optional<uint64_t> content_length;
    bool has_transfer_encoding = false, chunked = false, close = false, keep_alive = false;
    size_t pos = head.find("\r\n") + 2;
    for (;;) {
        const size_t eol = head.find("\r\n", pos);
        if (eol == pos) break;  // the empty line that ends the head
        const std::string_view line = head.substr(pos, eol - pos);
        pos = eol + 2;
        if (line.front() == ' ' || line.front() == '\t') return false;  // obsolete line folding
        const size_t colon = line.find(':');
        if (colon == std::string_view::npos || colon == 0) return false;
        const std::string_view name = line.substr(0, colon);
        const std::string_view value = trim(line.substr(colon + 1));
        if (iequals(name, "content-length")) {
            if (value.empty() || value.size() > 19) return false;  // 19 digits cannot overflow
            uint64_t length = 0;
            for (char c : value) {
                if (!is_digit(c)) return false;
                length = length * 10 + static_cast<uint64_t>(c - '0');
            }
            if (content_length && *content_length != length) return false;
            content_length = length;
        } else if (iequals(name, "transfer-encoding")) {
            // Chunked framing applies only when chunked is the last coding.
            has_transfer_encoding = true;
            chunked = false;
            for_each_token(value, [&](std::string_view coding) { chunked = iequals(coding, "chunked"); });
        } else if (iequals(name, "connection")) {
            for_each_token(value, [&](std::string_view option) {
                close = close || iequals(option, "close");
                keep_alive = keep_alive || iequals(option, "keep-alive");
            });
        }
    }

    keep_alive_ = !close && (!http10 || keep_alive);
    if (status_ < 200) {
        // 101 would switch to a protocol we do not speak; other 1xx are interim answers with
        // no body, and the real one follows.
        if (status_ == 101) return false;
        state_ = State::kHead;
    } else if (head_request_ || status_ == 204 || status_ == 304) {
        state_ = State::kDone;
    } else if (has_transfer_encoding) {
        state_ = chunked ? State::kChunkSize : State::kUntilClose;
    } else if (content_length) {
        remaining_ = *content_length;
        state_ = remaining_ > 0 ? State::kBody : State::kDone;
    } else {
        state_ = State::kUntilClose;
    }
    if (state_ == State::kUntilClose) keep_alive_ = false;
    return true;
}

bool ResponseParser::parse_chunk_size() {
    std::string_view line(line_);
    line.remove_suffix(1);  // the '\n'; trim() takes the '\r'
    line = trim(line);
    uint64_t size = 0;
    size_t digits = 0;
    for (; digits < line.size(); ++digits) {
        const char c = lower(line[digits]);
        int value;
        if (is_digit(c)) {
            value = c - '0';
        } else if (c >= 'a' && c <= 'f') {
            value = c - 'a' + 10;
        } else {
            break;
        }
        if (size > (std::numeric_limits<uint64_t>::max() >> 4)) return false;
        size = size * 16 + static_cast<uint64_t>(value);
    }
    if (digits == 0) return false;
    const std::string_view rest = trim(line.substr(digits));
    if (!rest.empty() && rest.front() != ';') return false;  // only a chunk extension may follow
    line_.clear();
    remaining_ = size;
    state_ = size > 0 ? State::kChunkData : State::kTrailers;
    return true;
}

}  // namespace pyserve
