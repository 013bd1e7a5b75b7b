// Anonymous shared memory (a memfd) with its data area mapped twice, back to back.
//
// A memfd has no name: another process reaches it only by inheriting its descriptor, so a
// worker can map its own channel and nobody else's, and nothing is left in /dev/shm when a
// server dies. It is not limited by the size of /dev/shm either (Docker gives 64 MiB).
//
// The file is sparse. Memory is committed (fallocate) before it is written, from the start of
// the data area up, so a shortage is an error the writer can answer, never a SIGBUS in the
// middle of a copy. Mirroring the data area lets a ring frame that wraps past the end stay
// one contiguous range of bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common/unique_fd.hpp"

namespace pyserve {

class ShmError : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

// Owns one range of address space (and whatever is mapped into it).
class Mapping {
   public:
    Mapping() = default;
    Mapping(void* address, size_t size) : address_(address), size_(size) {}
    Mapping(Mapping&& other) noexcept;
    Mapping& operator=(Mapping&& other) noexcept;
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping();

    uint8_t* data() const { return static_cast<uint8_t*>(address_); }

   private:
    void* address_ = nullptr;
    size_t size_ = 0;
};

class SharedRegion {
   public:
    // A new region with a control area of at least `control_size` bytes and a data area of
    // `data_size` bytes, both rounded up to pages; the control area and the first
    // `initial_commit` bytes of data are committed at once. ShmError (with errno's message)
    // if the descriptor, the memory or the address space cannot be had.
    static SharedRegion create(size_t control_size, size_t data_size, size_t initial_commit);
    // Maps a region another process created, from its inherited descriptor (taken over),
    // checking its layout first.
    static SharedRegion attach(UniqueFd fd);

    int fd() const { return fd_.get(); }
    uint8_t* control() const { return mapping_.data() + control_offset_; }
    uint8_t* data() const { return mapping_.data() + data_offset_; }
    size_t data_size() const { return data_size_; }
    // Bytes of the data area committed, from its start; what the writer of this process
    // knows of: the creator's initial commit, then its own.
    size_t committed() const { return committed_; }

    // Commits the data area up to `end`; false, with errno set, when memory is short.
    bool commit(size_t end);
    // Gives back what is committed past `keep`. Only while nobody reads those bytes.
    void decommit(size_t keep);

   private:
    SharedRegion(UniqueFd fd, Mapping mapping, size_t control_offset, size_t data_offset,
                 size_t data_size, size_t committed)
        : fd_(std::move(fd)),
          mapping_(std::move(mapping)),
          control_offset_(control_offset),
          data_offset_(data_offset),
          data_size_(data_size),
          committed_(committed) {}
    static Mapping map_mirrored(int fd, size_t data_offset, size_t data_size);

    UniqueFd fd_;
    Mapping mapping_;
    size_t control_offset_;
    size_t data_offset_;
    size_t data_size_;
    size_t committed_;
};

size_t page_size();

}  // namespace pyserve
