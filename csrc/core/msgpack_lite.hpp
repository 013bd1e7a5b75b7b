// The few msgpack encodings the core writes and reads itself.
//
// The core never re-encodes a request: it only frames requests that Python already
// packed. It reads every worker frame once, to check it (see protocol.hpp), and passes
// its bytes on untouched. The reader checks every length against the bytes it was
// given, because the frames come from another process, and never allocates what a
// frame declares.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace pyserve::msgpack {

class FormatError : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

// Sizes of the fixed-width encodings used below.
constexpr size_t kUint64Size = 9;
constexpr size_t kArray32HeaderSize = 5;

inline uint8_t* put_fixarray(uint8_t* out, uint8_t count) {
    *out++ = static_cast<uint8_t>(0x90 | count);
    return out;
}

inline uint8_t* put_fixint(uint8_t* out, uint8_t value) {
    *out++ = static_cast<uint8_t>(value & 0x7f);
    return out;
}

inline uint8_t* put_uint64(uint8_t* out, uint64_t value) {
    *out++ = 0xcf;
    for (int shift = 56; shift >= 0; shift -= 8) *out++ = static_cast<uint8_t>(value >> shift);
    return out;
}

inline uint8_t* put_array32(uint8_t* out, uint32_t count) {
    *out++ = 0xdd;
    for (int shift = 24; shift >= 0; shift -= 8) *out++ = static_cast<uint8_t>(count >> shift);
    return out;
}

// Appends msgpack values to a string, always in the shortest form.
class Writer {
   public:
    explicit Writer(std::string& out) : out_(out) {}

    void array_header(size_t count) { sized(count, 0x90, 16, 0xdc, 0xdd); }
    void uint(uint64_t value) {
        if (value <= 0x7f) {
            out_.push_back(static_cast<char>(value));
        } else if (value <= 0xff) {
            tagged(0xcc, value, 1);
        } else if (value <= 0xffff) {
            tagged(0xcd, value, 2);
        } else if (value <= 0xffffffffULL) {
            tagged(0xce, value, 4);
        } else {
            tagged(0xcf, value, 8);
        }
    }
    void str(std::string_view text) {
        if (text.size() < 32) {
            out_.push_back(static_cast<char>(0xa0 | text.size()));
        } else if (text.size() <= 0xff) {
            tagged(0xd9, text.size(), 1);
        } else if (text.size() <= 0xffff) {
            tagged(0xda, text.size(), 2);
        } else {
            tagged(0xdb, text.size(), 4);
        }
        out_.append(text);
    }
    void bin(std::string_view bytes) {
        if (bytes.size() <= 0xff) {
            tagged(0xc4, bytes.size(), 1);
        } else if (bytes.size() <= 0xffff) {
            tagged(0xc5, bytes.size(), 2);
        } else {
            tagged(0xc6, bytes.size(), 4);
        }
        out_.append(bytes);
    }

   private:
    void sized(size_t count, uint8_t fix, size_t fix_limit, uint8_t tag16, uint8_t tag32) {
        if (count < fix_limit) {
            out_.push_back(static_cast<char>(fix | count));
        } else if (count <= 0xffff) {
            tagged(tag16, count, 2);
        } else {
            tagged(tag32, count, 4);
        }
    }
    void tagged(uint8_t tag, uint64_t value, int bytes) {
        out_.push_back(static_cast<char>(tag));
        for (int shift = 8 * (bytes - 1); shift >= 0; shift -= 8) {
            out_.push_back(static_cast<char>(value >> shift));
        }
    }

    std::string& out_;
};

// Whether `data` is UTF-8 as Python's strict decoder reads it: no overlong forms, no
// surrogates, nothing above U+10FFFF. msgpack str values must pass it, because Python
// decodes them with raw=False and would raise on anything else.
inline bool valid_utf8(const uint8_t* data, size_t size) {
    size_t i = 0;
    while (i < size) {
        const uint8_t lead = data[i];
        if (lead < 0x80) {
            ++i;
            continue;
        }
        size_t extra;
        uint8_t low = 0x80, high = 0xbf;  // the allowed range of the first continuation byte
        if (lead >= 0xc2 && lead <= 0xdf) {
            extra = 1;
        } else if (lead >= 0xe0 && lead <= 0xef) {
            extra = 2;
            if (lead == 0xe0) low = 0xa0;   // overlong
            if (lead == 0xed) high = 0x9f;  // surrogates
        } else if (lead >= 0xf0 && lead <= 0xf4) {
            extra = 3;
            if (lead == 0xf0) low = 0x90;   // overlong
            if (lead == 0xf4) high = 0x8f;  // above U+10FFFF
        } else {
            return false;
        }
        if (extra > size - i - 1) return false;
        if (data[i + 1] < low || data[i + 1] > high) return false;
        for (size_t k = 2; k <= extra; ++k) {
            if (data[i + k] < 0x80 || data[i + k] > 0xbf) return false;
        }
        i += extra + 1;
    }
    return true;
}

// Reads msgpack values from a buffer it does not own. Every read either consumes a value
// of the expected type or throws FormatError; a declared length or count is checked
// against the bytes left before anything else looks at it.
class Reader {
   public:
    // Deeper values are refused by skip(); pyserve's frames nest four levels at most.
    static constexpr int kMaxDepth = 32;

    Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

    bool at_end() const { return pos_ == size_; }
    size_t remaining() const { return size_ - pos_; }
    size_t position() const { return pos_; }

    uint32_t read_array_header() {
        const uint8_t tag = byte();
        uint32_t count;
        if ((tag & 0xf0) == 0x90) {
            count = tag & 0x0f;
        } else if (tag == 0xdc) {
            count = static_cast<uint32_t>(big_endian(2));
        } else if (tag == 0xdd) {
            count = static_cast<uint32_t>(big_endian(4));
        } else {
            throw FormatError("expected an array");
        }
        // Each item takes at least one byte.
        if (count > remaining()) throw FormatError("array declares more items than the frame holds");
        return count;
    }

    uint32_t read_map_header() {
        const uint8_t tag = byte();
        uint32_t count;
        if ((tag & 0xf0) == 0x80) {
            count = tag & 0x0f;
        } else if (tag == 0xde) {
            count = static_cast<uint32_t>(big_endian(2));
        } else if (tag == 0xdf) {
            count = static_cast<uint32_t>(big_endian(4));
        } else {
            throw FormatError("expected a map");
        }
        if (count > remaining() / 2) throw FormatError("map declares more entries than the frame holds");
        return count;
    }

    uint64_t read_uint() {
        const uint8_t tag = byte();
        if (tag <= 0x7f) return tag;
        switch (tag) {
            case 0xcc: return big_endian(1);
            case 0xcd: return big_endian(2);
            case 0xce: return big_endian(4);
            case 0xcf: return big_endian(8);
            default: throw FormatError("expected an unsigned integer");
        }
    }

    // Any integer, signed or not; only its encoding is checked.
    void skip_int() {
        const uint8_t tag = peek();
        if (tag <= 0x7f || tag >= 0xe0) {
            ++pos_;
            return;
        }
        switch (tag) {
            case 0xcc: case 0xd0: skip_bytes(1, 1); return;
            case 0xcd: case 0xd1: skip_bytes(1, 2); return;
            case 0xce: case 0xd2: skip_bytes(1, 4); return;
            case 0xcf: case 0xd3: skip_bytes(1, 8); return;
            default: throw FormatError("expected an integer");
        }
    }

    // An integer or a float.
    void skip_number() {
        const uint8_t tag = peek();
        if (tag == 0xca) return skip_bytes(1, 4);
        if (tag == 0xcb) return skip_bytes(1, 8);
        try {
            skip_int();
        } catch (const FormatError&) {
            throw FormatError("expected a number");
        }
    }

    bool read_bool() {
        const uint8_t tag = byte();
        if (tag == 0xc2) return false;
        if (tag == 0xc3) return true;
        throw FormatError("expected a boolean");
    }

    // Consumes a nil if one comes next.
    bool read_nil() {
        if (peek() != 0xc0) return false;
        ++pos_;
        return true;
    }

    std::string_view read_str() {
        const uint8_t tag = byte();
        size_t length;
        if ((tag & 0xe0) == 0xa0) {
            length = tag & 0x1f;
        } else if (tag == 0xd9) {
            length = big_endian(1);
        } else if (tag == 0xda) {
            length = big_endian(2);
        } else if (tag == 0xdb) {
            length = big_endian(4);
        } else {
            throw FormatError("expected a string");
        }
        const uint8_t* start = take(length);
        if (!valid_utf8(start, length)) throw FormatError("string is not valid UTF-8");
        return {reinterpret_cast<const char*>(start), length};
    }

    size_t read_bin() {
        const uint8_t tag = byte();
        size_t length;
        if (tag == 0xc4) {
            length = big_endian(1);
        } else if (tag == 0xc5) {
            length = big_endian(2);
        } else if (tag == 0xc6) {
            length = big_endian(4);
        } else {
            throw FormatError("expected bytes");
        }
        take(length);
        return length;
    }

    // Steps over one value of any type, checking it as Python's msgpack.unpackb (raw=False,
    // strict_map_key=True) would: UTF-8 strings, map keys that are strings or bytes, no
    // byte that msgpack leaves unused. Extension types are refused: pyserve sends none.
    void skip(int depth = kMaxDepth) {
        if (depth <= 0) throw FormatError("values nested too deeply");
        const uint8_t tag = peek();
        if (tag <= 0x7f || tag >= 0xe0 || (tag >= 0xcc && tag <= 0xd3)) return skip_int();
        if ((tag & 0xe0) == 0xa0 || (tag >= 0xd9 && tag <= 0xdb)) {
            read_str();
            return;
        }
        if ((tag & 0xf0) == 0x90 || tag == 0xdc || tag == 0xdd) {
            for (uint32_t n = read_array_header(); n > 0; --n) skip(depth - 1);
            return;
        }
        if ((tag & 0xf0) == 0x80 || tag == 0xde || tag == 0xdf) return skip_map(depth);
        switch (tag) {
            case 0xc0: case 0xc2: case 0xc3: ++pos_; return;
            case 0xc4: case 0xc5: case 0xc6: read_bin(); return;
            case 0xca: case 0xcb: skip_number(); return;
            case 0xc1: throw FormatError("byte 0xc1 is not msgpack");
            default: throw FormatError("msgpack extension types are not accepted");
        }
    }

    // A map, its keys and values checked as skip() checks them.
    void skip_map(int depth = kMaxDepth) {
        if (depth <= 0) throw FormatError("values nested too deeply");
        for (uint32_t n = read_map_header(); n > 0; --n) {
            skip_key();
            skip(depth - 1);
        }
    }

   private:
    void skip_key() {
        const uint8_t tag = peek();
        if (tag == 0xc4 || tag == 0xc5 || tag == 0xc6) {
            read_bin();
        } else {
            read_str();  // throws for any other type
        }
    }
    uint8_t peek() const {
        if (pos_ >= size_) throw FormatError("frame ends early");
        return data_[pos_];
    }
    uint8_t byte() {
        const uint8_t value = peek();
        ++pos_;
        return value;
    }
    // `count` bytes, checked against what is left before the position moves.
    const uint8_t* take(size_t count) {
        if (count > remaining()) throw FormatError("declared length runs past the end of the frame");
        const uint8_t* start = data_ + pos_;
        pos_ += count;
        return start;
    }
    void skip_bytes(size_t tag_size, size_t count) {
        take(tag_size);
        take(count);
    }
    uint64_t big_endian(int count) {
        uint64_t value = 0;
        for (int i = 0; i < count; ++i) value = (value << 8) | byte();
        return value;
    }

    const uint8_t* data_;
    size_t size_;
    size_t pos_ = 0;
};

}  // namespace pyserve::msgpack
