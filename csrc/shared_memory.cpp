#include "shared_memory.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace pyserve {
namespace {

constexpr uint64_t kSegmentMagic = 0x7079736572766531ULL;  // "pyserve1"

// Written at offset 0 so that `open` can find the layout the creator chose.
struct SegmentInfo {
    uint64_t magic;
    uint64_t control_offset;
    uint64_t data_offset;
    uint64_t data_size;
};

[[noreturn]] void fail(const std::string& what, const std::string& name) {
    throw ShmError(what + " '" + name + "': " + std::strerror(errno));
}

size_t round_up(size_t value, size_t multiple) { return (value + multiple - 1) / multiple * multiple; }

}  // namespace

size_t page_size() {
    static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return size;
}

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = other.release();
    }
    return *this;
}

UniqueFd::~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
}

Mapping::Mapping(Mapping&& other) noexcept
    : address_(std::exchange(other.address_, nullptr)), size_(std::exchange(other.size_, 0)) {}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
    if (this != &other) {
        if (address_) ::munmap(address_, size_);
        address_ = std::exchange(other.address_, nullptr);
        size_ = std::exchange(other.size_, 0);
    }
    return *this;
}

Mapping::~Mapping() {
    if (address_) ::munmap(address_, size_);
}

SharedMemory::SharedMemory(std::string name, Mapping mapping, size_t control_offset,
                           size_t data_offset, size_t data_size, bool owner)
    : name_(std::move(name)),
      mapping_(std::move(mapping)),
      control_offset_(control_offset),
      data_offset_(data_offset),
      data_size_(data_size),
      owner_(owner) {}

SharedMemory::SharedMemory(SharedMemory&& other) noexcept
    : name_(std::move(other.name_)),
      mapping_(std::move(other.mapping_)),
      control_offset_(other.control_offset_),
      data_offset_(other.data_offset_),
      data_size_(other.data_size_),
      owner_(std::exchange(other.owner_, false)) {}

SharedMemory& SharedMemory::operator=(SharedMemory&& other) noexcept {
    if (this != &other) {
        if (owner_) ::shm_unlink(name_.c_str());
        name_ = std::move(other.name_);
        mapping_ = std::move(other.mapping_);
        control_offset_ = other.control_offset_;
        data_offset_ = other.data_offset_;
        data_size_ = other.data_size_;
        owner_ = std::exchange(other.owner_, false);
    }
    return *this;
}

SharedMemory::~SharedMemory() {
    if (owner_) ::shm_unlink(name_.c_str());
}

uint8_t* SharedMemory::control() const { return mapping_.data() + control_offset_; }
uint8_t* SharedMemory::data() const { return mapping_.data() + data_offset_; }

void SharedMemory::unlink() {
    if (owner_) {
        ::shm_unlink(name_.c_str());
        owner_ = false;
    }
}

Mapping SharedMemory::map_mirrored(int fd, size_t data_offset, size_t data_size) {
    // Reserve the whole range first so that the two views land side by side.
    size_t total = data_offset + 2 * data_size;
    void* base = ::mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw ShmError(std::string("mmap reserve: ") + std::strerror(errno));
    Mapping reserved(base, total);
    auto* bytes = static_cast<uint8_t*>(base);
    if (::mmap(bytes, data_offset + data_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
               0) == MAP_FAILED) {
        throw ShmError(std::string("mmap segment: ") + std::strerror(errno));
    }
    if (data_size > 0 &&
        ::mmap(bytes + data_offset + data_size, data_size, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_FIXED, fd, static_cast<off_t>(data_offset)) == MAP_FAILED) {
        throw ShmError(std::string("mmap mirror: ") + std::strerror(errno));
    }
    return reserved;
}

SharedMemory SharedMemory::create(const std::string& name, size_t control_size, size_t data_size) {
    const size_t page = page_size();
    const size_t control_offset = round_up(sizeof(SegmentInfo), 64);
    const size_t data_offset = round_up(control_offset + control_size, page);
    data_size = round_up(data_size, page);

    UniqueFd fd(::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600));
    if (fd.get() < 0) fail("shm_open(create)", name);
    // From here on a failure must not leave the name behind.
    struct Unlinker {
        const std::string& name;
        bool armed = true;
        ~Unlinker() {
            if (armed) ::shm_unlink(name.c_str());
        }
    } unlinker{name};

    if (::ftruncate(fd.get(), static_cast<off_t>(data_offset + data_size)) != 0) {
        fail("ftruncate", name);
    }
    Mapping mapping = map_mirrored(fd.get(), data_offset, data_size);
    auto* info = reinterpret_cast<SegmentInfo*>(mapping.data());
    info->control_offset = control_offset;
    info->data_offset = data_offset;
    info->data_size = data_size;
    __atomic_store_n(&info->magic, kSegmentMagic, __ATOMIC_RELEASE);
    unlinker.armed = false;
    return SharedMemory(name, std::move(mapping), control_offset, data_offset, data_size, true);
}

SharedMemory SharedMemory::open(const std::string& name) {
    UniqueFd fd(::shm_open(name.c_str(), O_RDWR, 0600));
    if (fd.get() < 0) fail("shm_open(open)", name);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) fail("fstat", name);
    const auto file_size = static_cast<uint64_t>(st.st_size);
    if (file_size < sizeof(SegmentInfo)) throw ShmError("not a pyserve segment: '" + name + "'");

    SegmentInfo info{};
    if (::pread(fd.get(), &info, sizeof(info), 0) != static_cast<ssize_t>(sizeof(info))) {
        fail("read segment header", name);
    }
    const size_t page = page_size();
    if (info.magic != kSegmentMagic || info.data_offset % page != 0 || info.data_size % page != 0 ||
        info.control_offset >= info.data_offset || info.data_offset > file_size ||
        info.data_size != file_size - info.data_offset) {
        throw ShmError("not a pyserve segment, or a damaged one: '" + name + "'");
    }
    Mapping mapping = map_mirrored(fd.get(), info.data_offset, info.data_size);
    return SharedMemory(name, std::move(mapping), info.control_offset, info.data_offset,
                        info.data_size, false);
}

}  // namespace pyserve
