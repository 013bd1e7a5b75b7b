#include "shared_region.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

namespace pyserve {
namespace {

constexpr uint64_t kRegionMagic = 0x7079736572766532ULL;  // "pyserve2"

// Written at offset 0 so that `attach` finds the layout the creator chose.
struct RegionInfo {
    uint64_t magic;
    uint64_t control_offset;
    uint64_t data_offset;
    uint64_t data_size;
    uint64_t initial_commit;
};

[[noreturn]] void fail(const char* what) { throw ShmError(std::string(what) + ": " + std::strerror(errno)); }

size_t round_up(size_t value, size_t multiple) { return (value + multiple - 1) / multiple * multiple; }

}  // namespace

size_t page_size() {
    static const size_t size = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    return size;
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

Mapping SharedRegion::map_mirrored(int fd, size_t data_offset, size_t data_size) {
    // Reserve the whole range first so that the two views land side by side.
    const size_t total = data_offset + 2 * data_size;
    void* base = ::mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) fail("mmap (reserve)");
    Mapping reserved(base, total);
    auto* bytes = static_cast<uint8_t*>(base);
    if (::mmap(bytes, data_offset + data_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) ==
        MAP_FAILED) {
        fail("mmap (region)");
    }
    if (::mmap(bytes + data_offset + data_size, data_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
               fd, static_cast<off_t>(data_offset)) == MAP_FAILED) {
        fail("mmap (mirror)");
    }
    return reserved;
}

SharedRegion SharedRegion::create(size_t control_size, size_t data_size, size_t initial_commit) {
    const size_t page = page_size();
    const size_t control_offset = round_up(sizeof(RegionInfo), 64);
    const size_t data_offset = round_up(control_offset + control_size, page);
    data_size = round_up(std::max(data_size, page), page);
    initial_commit = std::min(round_up(initial_commit, page), data_size);

    UniqueFd fd(::memfd_create("pyserve-channel", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) fail("memfd_create");
    if (::ftruncate(fd.get(), static_cast<off_t>(data_offset + data_size)) != 0) fail("ftruncate");
    // Nobody may shrink the file under a mapping: touching a page past its end is a SIGBUS.
    if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) fail("seal");
    if (::fallocate(fd.get(), 0, 0, static_cast<off_t>(data_offset + initial_commit)) != 0) {
        fail("committing the channel's first pages");
    }
    Mapping mapping = map_mirrored(fd.get(), data_offset, data_size);
    auto* info = reinterpret_cast<RegionInfo*>(mapping.data());
    info->control_offset = control_offset;
    info->data_offset = data_offset;
    info->data_size = data_size;
    info->initial_commit = initial_commit;
    __atomic_store_n(&info->magic, kRegionMagic, __ATOMIC_RELEASE);
    return SharedRegion(std::move(fd), std::move(mapping), control_offset, data_offset, data_size,
                        initial_commit);
}

SharedRegion SharedRegion::attach(UniqueFd fd) {
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) fail("fstat");
    const auto file_size = static_cast<uint64_t>(st.st_size);
    RegionInfo info{};
    if (file_size < sizeof(info) ||
        ::pread(fd.get(), &info, sizeof(info), 0) != static_cast<ssize_t>(sizeof(info))) {
        throw ShmError("not a pyserve channel: too short");
    }
    const int seals = ::fcntl(fd.get(), F_GET_SEALS);
    const size_t page = page_size();
    if (info.magic != kRegionMagic || info.data_offset % page != 0 || info.data_size % page != 0 ||
        info.control_offset < sizeof(RegionInfo) || info.control_offset >= info.data_offset ||
        info.data_offset > file_size || info.data_size != file_size - info.data_offset ||
        info.initial_commit > info.data_size || seals < 0 || !(seals & F_SEAL_SHRINK)) {
        throw ShmError("not a pyserve channel, or a damaged one");
    }
    Mapping mapping = map_mirrored(fd.get(), info.data_offset, info.data_size);
    return SharedRegion(std::move(fd), std::move(mapping), info.control_offset, info.data_offset,
                        info.data_size, info.initial_commit);
}

bool SharedRegion::commit(size_t end) {
    end = std::min(end, data_size_);
    if (end <= committed_) return true;
    const size_t grown = std::min(round_up(end, page_size()), data_size_);
    if (::fallocate(fd_.get(), 0, static_cast<off_t>(data_offset_ + committed_),
                    static_cast<off_t>(grown - committed_)) != 0) {
        return false;
    }
    committed_ = grown;
    return true;
}

void SharedRegion::decommit(size_t keep) {
    keep = round_up(keep, page_size());
    if (keep >= committed_) return;
    if (::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>(data_offset_ + keep), static_cast<off_t>(committed_ - keep)) == 0) {
        committed_ = keep;
    }
}

}  // namespace pyserve
