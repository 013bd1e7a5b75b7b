// One queued or running request, as the core keeps it.
#pragma once

#include <cstdint>
#include <string>

#include "../common/clock.hpp"

namespace pyserve {

struct Request {
    uint64_t id = 0;
    uint32_t origin = 0;  // the frontend it came from (0: the server process itself)
    uint64_t worker = 0;  // the worker it must run on; 0: any
    std::string payload;  // the request's own msgpack bytes, sent to the worker as they are
    Clock::time_point arrival{};
    uint64_t sequence = 0;   // its stateful sequence's key; 0: none
    int attempts = 0;        // dispatches lost because their worker died
    bool answered = false;   // in flight: its (last) answer came
    bool cancelled = false;  // in flight: nobody waits for its answer any more
    bool moved_on = false;   // in flight: its sequence's next request was let go
};

}  // namespace pyserve
