"""The shared-memory ring: frames in order, any size up to the ring, never overwritten."""

from __future__ import annotations

import mmap
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from pyserve import _core
from pyserve.processes import cpu_seconds


@pytest.fixture
def ring_name():
    return f"/pyserve.test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def ring(ring_name):
    ring = _core.ShmRing.create(ring_name, 64 * 1024)
    yield ring
    ring.unlink()


def test_frame_round_trips_unchanged(ring, ring_name):
    writer = _core.ShmRing.open(ring_name)
    assert writer.try_write(b"hello")
    assert ring.read(timeout=1) == b"hello"


def test_empty_frame_is_a_frame(ring, ring_name):
    writer = _core.ShmRing.open(ring_name)
    assert writer.try_write(b"")
    assert ring.read(timeout=1) == b""
    assert ring.try_read() is None


def test_frames_of_odd_sizes_survive_wrap_around(ring, ring_name):
    writer = _core.ShmRing.open(ring_name)
    rng = random.Random(7)
    sent = []
    received = []
    total = 0
    while total < 20 * ring.capacity:  # many trips round the ring
        frame = rng.randbytes(rng.choice([1, 3, 7, 9, 13, 4095, 4097, 20011]))
        if writer.try_write(frame):
            sent.append(frame)
            total += len(frame)
        else:
            received.append(ring.read(timeout=1))
    while (frame := ring.try_read()) is not None:
        received.append(frame)
    assert received == sent


def test_frame_as_large_as_the_ring_fits_even_when_it_wraps(ring, ring_name):
    writer = _core.ShmRing.open(ring_name)
    assert writer.try_write(b"x" * 1001)
    assert ring.read(timeout=1) == b"x" * 1001  # the next frame starts mid-ring
    big = random.Random(1).randbytes(ring.max_frame_size)
    assert writer.try_write(big)
    assert ring.read(timeout=1) == big


def test_frame_larger_than_the_ring_is_refused(ring, ring_name):
    writer = _core.ShmRing.open(ring_name)
    with pytest.raises(_core.RingError, match="exceeds"):
        writer.try_write(b"x" * (ring.max_frame_size + 1))


def test_full_ring_refuses_new_frames_and_keeps_old_ones(ring, ring_name):
    writer = _core.ShmRing.open(ring_name)
    frames = [bytes([n]) * 10_000 for n in range(6)]
    for frame in frames:
        assert writer.try_write(frame)
    assert not writer.try_write(b"y" * 10_000)
    assert [ring.read(timeout=1) for _ in frames] == frames


def test_write_to_a_full_ring_times_out(ring, ring_name):
    writer = _core.ShmRing.open(ring_name)
    assert writer.try_write(b"z" * ring.max_frame_size)
    assert writer.write(b"more", timeout=0.05) is False


def test_blocked_writer_resumes_when_the_reader_frees_space(ring, ring_name):
    writer = _core.ShmRing.open(ring_name)
    assert writer.try_write(b"a" * ring.max_frame_size)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("ok", writer.write(b"b", timeout=30)))
    thread.start()
    assert ring.read(timeout=1) == b"a" * ring.max_frame_size
    thread.join(30)
    assert outcome == {"ok": True}
    assert ring.read(timeout=1) == b"b"


def test_read_of_an_empty_ring_times_out(ring):
    assert ring.read(timeout=0.05) is None


def test_close_wakes_a_blocked_reader(ring, ring_name):
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(ring.read(timeout=30)))
    thread.start()
    _core.ShmRing.open(ring_name).close()
    thread.join(30)
    assert outcome == [None]
    assert ring.closed


READER = textwrap.dedent(
    """
    import hashlib, sys
    from pyserve import _core
    ring = _core.ShmRing.open(sys.argv[1])
    digest = hashlib.sha256()
    count = int(sys.argv[2])
    for _ in range(count):
        digest.update(ring.read())
    print(digest.hexdigest(), flush=True)
    """
)


def test_a_second_process_reads_what_the_first_wrote(ring_name):
    import hashlib

    writer = _core.ShmRing.create(ring_name, 16 * 1024)
    try:
        frames = [random.Random(n).randbytes(n * 37 % 9000) for n in range(500)]
        reader = subprocess.Popen([sys.executable, "-P", "-c", READER, ring_name, str(len(frames))],
                                  stdout=subprocess.PIPE, text=True)
        for frame in frames:  # 500 frames through a 16 KiB ring: the writer must wait
            assert writer.write(frame, timeout=30)
        output, _ = reader.communicate(timeout=60)
    finally:
        writer.unlink()
    expected = hashlib.sha256(b"".join(frames)).hexdigest()
    assert output.strip() == expected


def test_a_reader_in_another_process_sleeps_instead_of_spinning(ring_name):
    writer = _core.ShmRing.create(ring_name, 4096)
    try:
        reader = subprocess.Popen([sys.executable, "-P", "-c", READER, ring_name, "1"],
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # let it start and block
        before = cpu_seconds([reader.pid])
        time.sleep(1.0)
        spent = cpu_seconds([reader.pid]) - before
        assert writer.try_write(b"wake up")
        output, _ = reader.communicate(timeout=30)
    finally:
        writer.unlink()
    assert output.strip()  # it was woken and read the frame
    assert spent < 0.2, f"the blocked reader used {spent:.2f} s of CPU in 1 s: it spins"


def test_a_damaged_frame_header_is_reported_not_read(ring, ring_name):
    writer = _core.ShmRing.open(ring_name)
    assert writer.try_write(b"payload")
    with open(f"/dev/shm/{ring_name.lstrip('/')}", "r+b") as segment:
        view = mmap.mmap(segment.fileno(), 0)
        data_offset = len(view) - ring.capacity
        view[data_offset:data_offset + 4] = (10**9).to_bytes(4, "little")  # absurd length
        view.close()
    with pytest.raises(_core.RingError, match="damaged"):
        ring.try_read()


def test_opening_a_segment_that_is_not_a_ring_fails(ring_name):
    path = f"/dev/shm/{ring_name.lstrip('/')}"
    with open(path, "wb") as segment:
        segment.write(os.urandom(8192))
    try:
        with pytest.raises(OSError, match="not a pyserve segment"):
            _core.ShmRing.open(ring_name)
    finally:
        os.unlink(path)


def test_opening_a_missing_ring_fails(ring_name):
    with pytest.raises(OSError, match="No such file"):
        _core.ShmRing.open(ring_name)


def test_the_ring_name_goes_away_with_its_creator(ring_name):
    ring = _core.ShmRing.create(ring_name, 4096)
    assert os.path.exists(f"/dev/shm/{ring_name.lstrip('/')}")
    del ring
    assert not os.path.exists(f"/dev/shm/{ring_name.lstrip('/')}")


def test_an_opened_ring_does_not_remove_the_name(ring, ring_name):
    opened = _core.ShmRing.open(ring_name)
    del opened
    assert os.path.exists(f"/dev/shm/{ring_name.lstrip('/')}")


def test_doorbell_wakes_a_waiting_thread(ring_name):
    bell = _core.Doorbell.create(ring_name)
    seen = bell.seq
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(bell.wait(seen, timeout=30)))
    thread.start()
    _core.Doorbell.open(ring_name).ring()
    thread.join(30)
    assert outcome == [True]


def test_doorbell_wait_times_out_when_nobody_rings(ring_name):
    bell = _core.Doorbell.create(ring_name)
    assert bell.wait(bell.seq, timeout=0.05) is False


def test_doorbell_rung_before_the_wait_returns_at_once(ring_name):
    bell = _core.Doorbell.create(ring_name)
    seen = bell.seq
    bell.ring()
    assert bell.wait(seen, timeout=30) is True
