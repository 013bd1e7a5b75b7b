// The few msgpack encodings the core writes and reads itself.
//
// The core never re-encodes a request: it only frames requests that Python already
// packed, and reads the fixed prefix of each worker frame (kind, batch id). Everything
// else in a frame is passed on untouched. The reader checks every length against the
// bytes it was given, because the frames come from another process.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

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

class Reader {
   public:
    Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

    uint32_t read_array_header() {
        const uint8_t tag = byte();
        if ((tag & 0xf0) == 0x90) return tag & 0x0f;
        if (tag == 0xdc) return static_cast<uint32_t>(big_endian(2));
        if (tag == 0xdd) return static_cast<uint32_t>(big_endian(4));
        throw FormatError("expected an array");
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

    bool read_bool() {
        const uint8_t tag = byte();
        if (tag == 0xc2) return false;
        if (tag == 0xc3) return true;
        throw FormatError("expected a boolean");
    }

   private:
    uint8_t byte() {
        if (pos_ >= size_) throw FormatError("frame ends early");
        return data_[pos_++];
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
