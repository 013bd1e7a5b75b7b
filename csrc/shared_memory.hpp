// A named POSIX shared-memory segment, mapped so that its data area is mirrored.
//
// The data area is mapped twice, back to back, so that a frame which wraps past the
// end of a ring is still one contiguous range of bytes: readers and writers never
// split a frame in two, and a frame can be as large as the whole ring.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyserve {

class ShmError : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

// Owns one file descriptor.
class UniqueFd {
   public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) : fd_(fd) {}
    UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
    UniqueFd& operator=(UniqueFd&& other) noexcept;
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd();

    int get() const { return fd_; }
    int release() {
        int fd = fd_;
        fd_ = -1;
        return fd;
    }

   private:
    int fd_ = -1;
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
    size_t size() const { return size_; }

   private:
    void* address_ = nullptr;
    size_t size_ = 0;
};

class SharedMemory {
   public:
    // Creates `name` (which must not exist yet) with a control area of at least
    // `control_size` bytes and a data area of `data_size` bytes, rounded up to pages.
    // The creator owns the name and unlinks it when destroyed.
    static SharedMemory create(const std::string& name, size_t control_size, size_t data_size);
    // Maps an existing segment made by `create`, checking its layout first.
    static SharedMemory open(const std::string& name);

    SharedMemory(SharedMemory&& other) noexcept;
    SharedMemory& operator=(SharedMemory&&) noexcept;
    SharedMemory(const SharedMemory&) = delete;
    SharedMemory& operator=(const SharedMemory&) = delete;
    ~SharedMemory();

    const std::string& name() const { return name_; }
    uint8_t* control() const;
    uint8_t* data() const;
    size_t data_size() const { return data_size_; }
    // Removes the name now; the mapping stays valid until this object is destroyed.
    void unlink();

   private:
    SharedMemory(std::string name, Mapping mapping, size_t control_offset, size_t data_offset,
                 size_t data_size, bool owner);
    static Mapping map_mirrored(int fd, size_t data_offset, size_t data_size);

    std::string name_;
    Mapping mapping_;
    size_t control_offset_ = 0;
    size_t data_offset_ = 0;
    size_t data_size_ = 0;
    bool owner_ = false;
};

size_t page_size();

}  // namespace pyserve
