// Error bodies the core writes itself, in TorchServe's shape: pyserve/errors.py writes the
// same bytes for the same error.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace pyserve {

// {"code": ..., "type": ..., "message": ...} with a two-space indent and a trailing newline,
// as Python's json.dumps(..., indent=2) writes it. The core's messages are ASCII: any other
// byte is written as '?'.
inline std::string json_string(std::string_view text) {
    std::string out = "\"";
    for (unsigned char c : text) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            default:
                if (c < 0x20) {
                    char escaped[8];
                    std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
                    out += escaped;
                } else if (c >= 0x80) {
                    out += '?';
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    return out + "\"";
}

inline std::string error_body(int code, std::string_view type, std::string_view message) {
    return "{\n  \"code\": " + std::to_string(code) + ",\n  \"type\": " + json_string(type) +
           ",\n  \"message\": " + json_string(message) + "\n}\n";
}

}  // namespace pyserve
