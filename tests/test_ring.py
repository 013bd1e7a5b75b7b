"""The ring: frames in order, any size up to the ring, never overwritten, in anonymous memory.

A ring is a memfd that one process writes and another reads; the reader reaches it only
through an inherited descriptor. Neither side waits inside the ring: a write into a full
ring is refused and a read of an empty one returns None, and a WorkerChannel sleeps on an
eventfd instead. A ring that carries small frames keeps to its first pages, and memory a
large frame needed is given back once only small frames come.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import textwrap
import time

import pytest

from pyserve import _core, frames
from pyserve.processes import cpu_seconds

from helpers import core_under_test

RING_CAPACITY = 64 * 1024


@pytest.fixture
def ring():
    """A new ring; the test writes through this handle."""
    return _core.Ring.create(RING_CAPACITY)


@pytest.fixture
def reader(ring):
    """A second handle on the same ring, as the process that reads it would attach it."""
    return _core.Ring.attach(os.dup(ring.fd))


def written(ring, frame: bytes) -> bool:
    status, _ = ring.write(frame)
    return status == _core.WRITTEN


def resident_bytes(ring) -> int:
    """Memory the ring's memfd holds, whoever committed it."""
    return os.fstat(ring.fd).st_blocks * 512


def test_frame_round_trips_unchanged(ring, reader):
    assert written(ring, b"hello")
    assert reader.read() == b"hello"
    assert reader.read() is None


def test_empty_frame_is_a_frame(ring, reader):
    assert written(ring, b"")
    assert reader.read() == b""
    assert reader.read() is None


def test_frames_of_odd_sizes_survive_wrap_around(ring, reader):
    """Many trips round the ring, read a few frames at a time, so that frames wrap past its
    end and, whenever it was read empty, start again at its front."""
    rng = random.Random(7)
    sent = []
    received = []
    total = 0
    while total < 20 * ring.capacity:
        frame = rng.randbytes(rng.choice([1, 3, 7, 9, 13, 4095, 4097, 20011]))
        status, _ = ring.write(frame)
        if status == _core.WRITTEN:
            sent.append(frame)
            total += len(frame)
        else:
            assert status == _core.NO_ROOM
            for _ in range(rng.randint(1, len(sent) - len(received))):
                received.append(reader.read())
    while (frame := reader.read()) is not None:
        received.append(frame)
    assert received == sent


def test_frame_as_large_as_the_ring_fits_even_when_it_wraps(ring, reader):
    assert written(ring, b"x" * 1001)
    assert reader.read() == b"x" * 1001
    big = random.Random(1).randbytes(ring.max_frame_size)
    assert written(ring, big)  # too large to go back to the front: it starts mid-ring and wraps
    assert reader.read() == big


def test_frame_larger_than_the_ring_is_refused(ring, reader):
    assert ring.max_frame_size == ring.capacity - 16
    assert ring.write(b"x" * (ring.max_frame_size + 1)) == (_core.TOO_LARGE, False)
    assert ring.empty and reader.read() is None


def test_full_ring_refuses_new_frames_and_keeps_old_ones(ring, reader):
    sent = [bytes([n]) * 10_000 for n in range(6)]
    for frame in sent:
        assert written(ring, frame)
    assert ring.write(b"y" * 10_000) == (_core.NO_ROOM, False)
    assert [reader.read() for _ in sent] == sent
    assert reader.read() is None


def test_the_reader_must_be_woken_only_for_a_frame_written_into_an_empty_ring(ring, reader):
    assert ring.write(b"a") == (_core.WRITTEN, True)
    assert ring.write(b"b") == (_core.WRITTEN, False)
    assert reader.read() == b"a"
    assert ring.write(b"c") == (_core.WRITTEN, False)  # b is still unread
    assert reader.read() == b"b" and reader.read() == b"c"
    assert ring.empty
    assert ring.write(b"d") == (_core.WRITTEN, True)


def test_small_frames_keep_a_ring_small():
    """Each frame written into an empty ring starts again at its front, so 20 MB of small
    frames through an 8 MiB ring never touch more than its first pages."""
    ring = _core.Ring.create(8 << 20)
    reader = _core.Ring.attach(os.dup(ring.fd))
    frame = b"s" * 200
    for _ in range(100_000):
        assert ring.write(frame) == (_core.WRITTEN, True)
        assert reader.read() == frame
    assert ring.committed_bytes == _core.RING_INITIAL_COMMIT
    assert resident_bytes(ring) < 1 << 20  # rings that ran round ended with all 8 MiB resident


def test_a_small_frame_fits_behind_one_written_into_an_empty_ring_while_it_is_unread():
    """A worker's next batch waits unread while the worker runs the one before; its
    withdrawals must still fit behind it."""
    ring = _core.Ring.create(8 << 20)
    reader = _core.Ring.attach(os.dup(ring.fd))
    assert written(ring, b"a" * 1000)
    assert reader.read() == b"a" * 1000
    assert written(ring, b"b" * 1000)  # into the empty ring: as long as all that came before
    assert written(ring, b"withdraw")
    assert reader.read() == b"b" * 1000 and reader.read() == b"withdraw"


def test_a_large_frame_commits_the_memory_it_needs():
    ring = _core.Ring.create(8 << 20)
    assert ring.committed_bytes == _core.RING_INITIAL_COMMIT
    assert written(ring, b"x" * (1 << 20))
    assert ring.committed_bytes >= (1 << 20) + 16
    assert resident_bytes(ring) >= (1 << 20) + 16


def test_memory_a_large_frame_needed_is_given_back_once_only_small_frames_came_for_a_second():
    ring = _core.Ring.create(8 << 20)
    reader = _core.Ring.attach(os.dup(ring.fd))
    assert written(ring, b"x" * (1 << 20))
    assert reader.read() == b"x" * (1 << 20)
    assert written(ring, b"small")  # back at the front of the ring
    assert reader.read() == b"small"
    assert ring.committed_bytes > _core.RING_INITIAL_COMMIT
    time.sleep(1.1)
    assert written(ring, b"small")
    assert reader.read() == b"small"
    assert ring.committed_bytes == _core.RING_INITIAL_COMMIT
    assert resident_bytes(ring) < 1 << 20


def test_the_second_before_memory_is_given_back_counts_from_the_last_large_frame():
    ring = _core.Ring.create(8 << 20)
    reader = _core.Ring.attach(os.dup(ring.fd))
    assert written(ring, b"x" * (1 << 20))
    assert reader.read() == b"x" * (1 << 20)
    time.sleep(1.1)
    for _ in range(2):  # the first goes back to the front, behind a skip frame it cannot free
        assert written(ring, b"small")
        assert reader.read() == b"small"
    assert ring.committed_bytes == _core.RING_INITIAL_COMMIT


def pyserve_entries_in_dev_shm() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if "pyserve" in name}


def test_making_rings_leaves_nothing_in_dev_shm():
    before = pyserve_entries_in_dev_shm()
    rings = [_core.Ring.create(RING_CAPACITY) for _ in range(4)]
    with core_under_test() as core:
        core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=10)
        worker_fds = core.add_worker(1, 1, frames.encode_load({}))
        made = pyserve_entries_in_dev_shm()
        for fd in [ring.fd for ring in rings] + [worker_fds[0], worker_fds[1]]:
            assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    assert made == before


READER = textwrap.dedent(
    """
    import hashlib, sys, time
    from pyserve import _core
    ring = _core.Ring.attach(int(sys.argv[1]))
    digest = hashlib.sha256()
    deadline = time.monotonic() + 60
    for _ in range(int(sys.argv[2])):
        while (frame := ring.read()) is None:
            assert time.monotonic() < deadline, "no frame came"
            time.sleep(0.0005)
        digest.update(frame)
    print(digest.hexdigest(), flush=True)
    """
)


def test_a_second_process_reads_what_the_first_wrote():
    ring = _core.Ring.create(16 * 1024)
    sent = [random.Random(n).randbytes(n * 37 % 9000) for n in range(500)]
    reader = subprocess.Popen([sys.executable, "-P", "-c", READER, str(ring.fd), str(len(sent))],
                              stdout=subprocess.PIPE, text=True, pass_fds=[ring.fd])
    try:
        deadline = time.monotonic() + 60
        for frame in sent:  # 500 frames through a 16 KiB ring: the writer must wait for room
            while (status := ring.write(frame)[0]) == _core.NO_ROOM:
                assert time.monotonic() < deadline, "the reader freed no room"
                time.sleep(0.0005)
            assert status == _core.WRITTEN
        output, _ = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert output.strip() == hashlib.sha256(b"".join(sent)).hexdigest()


RECEIVER = textwrap.dedent(
    """
    import sys
    from pyserve import _core, frames
    channel = _core.WorkerChannel(*(int(fd) for fd in sys.argv[1].split(",")))
    assert frames.unpack(channel.receive(timeout=30))[0] == frames.LOAD
    print("waiting", flush=True)
    frame = channel.receive(timeout=60)
    print("timed out" if frame is None else frames.unpack(frame)[0], flush=True)
    """
)


def test_a_worker_blocked_in_receive_sleeps_instead_of_spinning():
    with core_under_test() as core:
        core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=10)
        fds = core.add_worker(1, 1, frames.encode_load({}))
        receiver = subprocess.Popen(
            [sys.executable, "-P", "-c", RECEIVER, ",".join(map(str, fds))],
            stdout=subprocess.PIPE, text=True, pass_fds=fds)
        try:
            assert receiver.stdout.readline().strip() == "waiting"
            time.sleep(0.5)  # let it give up spinning and sleep
            before = cpu_seconds([receiver.pid])
            time.sleep(1.0)
            spent = cpu_seconds([receiver.pid]) - before
            core.stop_worker(1)  # a STOP frame wakes it
            output, _ = receiver.communicate(timeout=30)
        finally:
            if receiver.poll() is None:
                receiver.kill()
                receiver.wait()
            receiver.stdout.close()
    assert output.strip() == str(frames.STOP)  # it was woken and read the frame
    assert spent < 0.2, f"the blocked receiver used {spent:.2f} s of CPU in 1 s: it spins"


@pytest.mark.parametrize("offset, damage", [
    (0, (10**9).to_bytes(8, "little")),  # an absurd length
    (8, b"\0\0\0\0"),                    # no frame marker
    (12, (7).to_bytes(4, "little")),     # a kind of frame rings do not have
])
def test_a_damaged_frame_header_is_reported_not_read(ring, reader, offset, damage):
    assert written(ring, b"payload")
    data_offset = os.fstat(ring.fd).st_size - ring.capacity  # the data area ends the memfd
    os.pwrite(ring.fd, damage, data_offset + offset)
    with pytest.raises(_core.RingError, match="damaged"):
        reader.read()


def memfd_of(data: bytes) -> int:
    fd = os.memfd_create("not-a-ring")
    os.write(fd, data)
    return fd


def copy_of_a_ring() -> bytes:
    ring = _core.Ring.create(RING_CAPACITY)
    return os.pread(ring.fd, os.fstat(ring.fd).st_size, 0)


@pytest.mark.parametrize("contents", [
    lambda: os.urandom(8192),
    lambda: b"",
    copy_of_a_ring,  # a ring's bytes, in a memfd that anyone could shrink under its mapping
], ids=["random bytes", "empty", "a ring's bytes, unsealed"])
def test_attaching_a_memfd_that_is_not_a_ring_fails(contents):
    with pytest.raises((_core.ShmError, _core.RingError), match="not a pyserve"):
        _core.Ring.attach(memfd_of(contents()))  # it takes the descriptor over, and closes it


def test_attaching_a_pipe_fails():
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(OSError, match="not a pyserve"):
            _core.Ring.attach(read_end)
    finally:
        os.close(write_end)
