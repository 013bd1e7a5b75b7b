// Frame kinds exchanged between the server and its workers. pyserve/protocol.py
// holds the same numbers and documents each frame's fields.
#pragma once

#include <cstdint>

namespace pyserve::protocol {

// Server -> worker, on the worker's request ring.
constexpr uint8_t kLoad = 1;   // [kLoad, settings]
constexpr uint8_t kBatch = 2;  // [kBatch, batch_id, [request, ...]]
constexpr uint8_t kStop = 3;   // [kStop]

// Worker -> server, on the worker's response ring.
constexpr uint8_t kLoaded = 11;      // [kLoaded, info]
constexpr uint8_t kLoadFailed = 12;  // [kLoadFailed, message]
constexpr uint8_t kResults = 13;     // [kResults, batch_id, done, [result, ...]]

// Core -> Python only: a worker whose frames could not be read.
constexpr uint8_t kBroken = 100;

}  // namespace pyserve::protocol
