// The worker's end of its two rings: it reads batches and writes answers, ringing the
// server's doorbell after each answer so that the server's core thread wakes up.
#pragma once

#include <optional>
#include <string>

#include "doorbell.hpp"
#include "shm_ring.hpp"

namespace pyserve {

class WorkerChannel {
   public:
    WorkerChannel(const std::string& requests, const std::string& responses,
                  const std::string& doorbell)
        : requests_(ShmRing::open(requests)),
          responses_(ShmRing::open(responses)),
          doorbell_(Doorbell::open(doorbell)) {}

    // The next frame from the server, valid until done_with_frame(). It spins a little
    // first: the next batch of a busy model comes quickly.
    std::optional<FrameView> next_frame(const Deadline& deadline) {
        return requests_.peek(deadline, kDefaultSpin);
    }
    void done_with_frame() { requests_.release(); }

    // False when the server did not make room before the deadline.
    bool send(const uint8_t* data, size_t size, const Deadline& deadline) {
        if (!responses_.write(data, size, deadline)) return false;
        doorbell_.ring();
        return true;
    }

    size_t max_frame_size() const { return responses_.max_frame_size(); }

   private:
    ShmRing requests_;
    ShmRing responses_;
    Doorbell doorbell_;
};

}  // namespace pyserve
