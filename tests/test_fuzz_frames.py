"""Frames that cross shared memory, fuzzed: bad bytes are refused with FrameError, never a
crash, a hang or an allocation sized by a length the bytes declare.

Three decoders read frames another process wrote:

- the core's check of every worker frame (csrc/protocol.hpp, ``parse_response_frame``),
  reached directly through ``_core.decode_response_frame`` and for real through a
  Scheduler whose worker writes garbage into its response ring;
- ``protocol.unpack``, which the frontend uses on the frames the core accepted;
- ``protocol.decode_request_frame``, which the worker uses on the server's frames.
"""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyserve import _core, protocol
from pyserve.worker import main as worker_main
from pyserve.worker.context import Context
from pyserve.worker.loader import EntryPoint
from pyserve.worker.metrics import Dimension, MetricsCache
from pyserve.worker.service import Service

from helpers import RingWorker, loaded_worker, scheduler_under_test, take_completions

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ECHO_DIR = Path(__file__).resolve().parent.parent / "examples" / "echo"

# -- strategies ---------------------------------------------------------------------------

UINT64 = st.integers(0, 2**64 - 1)
INT64ISH = st.integers(-(2**63), 2**64 - 1)  # every int msgpack can carry
TEXT = st.text(max_size=12)
STR_PAIRS = st.lists(st.tuples(TEXT, TEXT).map(list), max_size=3)

RESULT = st.tuples(UINT64, INT64ISH, TEXT, st.none() | TEXT, STR_PAIRS, st.binary(max_size=40)).map(list)
METRIC = st.tuples(TEXT, TEXT, TEXT, st.lists(TEXT, max_size=3), st.lists(TEXT, max_size=3),
                   st.floats() | INT64ISH).map(list)
SCALARS = st.none() | st.booleans() | INT64ISH | st.floats() | TEXT | st.binary(max_size=16)


def nested(keys):
    return st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                        | st.dictionaries(keys, children, max_size=4), max_leaves=12)


# Values Python unpacks (map keys str or bytes: strict_map_key), and values that may not be.
PLAIN_VALUES = nested(st.text(max_size=6) | st.binary(max_size=6))
VALUES = nested(st.text(max_size=6) | st.binary(max_size=6) | st.integers(-5, 5))

LOADED_FRAMES = st.dictionaries(st.text(max_size=8), PLAIN_VALUES, max_size=4).map(
    lambda info: [protocol.LOADED, info])
LOAD_FAILED_FRAMES = TEXT.map(lambda message: [protocol.LOAD_FAILED, message])
RESULTS_FRAMES = st.tuples(UINT64, st.booleans(), st.lists(RESULT, max_size=4), st.lists(METRIC, max_size=3),
                           UINT64).map(lambda f: [protocol.RESULTS, *f])
RESPONSE_FRAMES = LOADED_FRAMES | LOAD_FAILED_FRAMES | RESULTS_FRAMES
ENCODED_RESPONSES = RESPONSE_FRAMES.map(protocol.pack)

REQUEST = st.builds(protocol.encode_request, id=st.integers(0, 2**63), request_id=TEXT, content_type=TEXT,
                    headers=st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)).map(list), max_size=3),
                    body=st.binary(max_size=40))


def batch_frame(batch_id: int, payloads: list[bytes]) -> bytes:
    """A batch as the scheduler frames it: fixarray(3), BATCH, uint64 id, array32, the requests as sent."""
    return (bytes([0x93, protocol.BATCH, 0xCF]) + batch_id.to_bytes(8, "big")
            + b"\xdd" + len(payloads).to_bytes(4, "big") + b"".join(payloads))


BATCH_FRAMES = st.builds(batch_frame, UINT64, st.lists(REQUEST, max_size=4))
REQUEST_FRAMES = (BATCH_FRAMES | st.just(protocol.pack([protocol.STOP]))
                  | st.dictionaries(st.text(max_size=8), PLAIN_VALUES, max_size=4).map(protocol.encode_load))


def flip_bits(frame: bytes, positions: list[int]) -> bytes:
    data = bytearray(frame)
    for position in positions:
        data[(position // 8) % len(data)] ^= 1 << (position % 8)
    return bytes(data)


def replace_some_part(data, value: object, frame: list) -> list:
    """`frame` with one of its parts (the frame itself, an item, an item of an item...) replaced."""
    def walk(node):
        if isinstance(node, list) and node and data.draw(st.booleans()):
            index = data.draw(st.integers(0, len(node) - 1))
            return [*node[:index], walk(node[index]), *node[index + 1:]]
        return value
    return walk(frame)


# -- the documented shapes, restated as the spec the core's check must match ----------------

def _uint(value) -> bool:
    return type(value) is int and 0 <= value < 2**64


def _int(value) -> bool:
    return type(value) is int and -(2**63) <= value < 2**64


def _str(value) -> bool:
    return type(value) is str


def _result_ok(result) -> bool:
    return (type(result) is list and len(result) == 6 and _uint(result[0]) and _int(result[1])
            and _str(result[2]) and (result[3] is None or _str(result[3]))
            and type(result[4]) is list
            and all(type(h) is list and len(h) == 2 and _str(h[0]) and _str(h[1]) for h in result[4])
            and type(result[5]) is bytes)


def _metric_ok(metric) -> bool:
    return (type(metric) is list and len(metric) == 6 and all(_str(m) for m in metric[:3])
            and all(type(names) is list and all(map(_str, names)) for names in metric[3:5])
            and (type(metric[5]) is float or _int(metric[5])))


def response_shape_ok(frame) -> bool:
    if type(frame) is not list or not frame or not _uint(frame[0]):
        return False
    kind = frame[0]
    if kind == protocol.LOADED:
        return len(frame) == 2 and type(frame[1]) is dict
    if kind == protocol.LOAD_FAILED:
        return len(frame) == 2 and _str(frame[1])
    if kind == protocol.RESULTS:
        return (len(frame) == 6 and _uint(frame[1]) and type(frame[2]) is bool
                and type(frame[3]) is list and all(map(_result_ok, frame[3]))
                and type(frame[4]) is list and all(map(_metric_ok, frame[4])) and _uint(frame[5]))
    return False


def python_accepts(frame: bytes) -> bool:
    try:
        return response_shape_ok(protocol.unpack(frame))
    except protocol.FrameError:
        return False


def decode_or_none(frame: bytes):
    """(kind, batch_id, done), or None when the core refuses the frame with FrameError."""
    try:
        return _core.decode_response_frame(frame)
    except protocol.FrameError:
        return None


def assert_frontend_can_read(frame: bytes) -> None:
    """What the engine does with an accepted frame (engine/core.py, engine/pool.py, metrics.py)."""
    value = protocol.unpack(frame)
    assert response_shape_ok(value)
    if value[0] == protocol.RESULTS:
        _, _, _, results, metrics, started_ns = value
        for result in results:
            assert protocol.Result(*result, started_ns).id == result[0]
        for name, unit, kind, dimension_names, dimension_values, number in metrics:
            hash((*dimension_names, "Hostname"))
            hash((*dimension_values, "host"))
            assert isinstance(number, (int, float)) and not isinstance(number, bool)


# -- the core's check of worker frames (_core.decode_response_frame) -----------------------

@FUZZ
@given(RESPONSE_FRAMES)
def test_every_well_formed_worker_frame_is_accepted(frame):
    kind, batch_id, done = _core.decode_response_frame(protocol.pack(frame))
    assert kind == frame[0]
    if kind == protocol.RESULTS:
        assert (batch_id, done) == (frame[1], frame[2])


@FUZZ
@given(st.data(), RESPONSE_FRAMES, VALUES)
def test_a_frame_is_accepted_exactly_when_it_has_the_documented_shape(data, frame, value):
    candidate = protocol.pack(replace_some_part(data, value, frame))
    assert (decode_or_none(candidate) is not None) == python_accepts(candidate)


@FUZZ
@given(st.lists(st.sampled_from([protocol.LOADED, protocol.LOAD_FAILED, protocol.RESULTS, 0, 255, 269, -1])
                | VALUES, max_size=7))
def test_frames_of_unknown_kinds_or_item_counts_are_refused_unless_well_formed(frame):
    candidate = protocol.pack(frame)
    assert (decode_or_none(candidate) is not None) == python_accepts(candidate)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_or_readable_by_the_frontend(frame):
    if decode_or_none(frame) is not None:
        assert_frontend_can_read(frame)


@FUZZ
@given(ENCODED_RESPONSES, st.data())
def test_a_truncated_frame_is_refused(frame, data):
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(protocol.FrameError):
        _core.decode_response_frame(frame[:cut])


@FUZZ
@given(ENCODED_RESPONSES, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_after_a_frame_are_refused(frame, tail):
    with pytest.raises(protocol.FrameError, match="trailing bytes"):
        _core.decode_response_frame(frame + tail)


@FUZZ
@given(ENCODED_RESPONSES, st.lists(st.integers(0, 2**20), min_size=1, max_size=4))
def test_a_frame_with_flipped_bits_is_refused_or_still_readable(frame, positions):
    mutated = flip_bits(frame, positions)
    if decode_or_none(mutated) is not None:
        assert_frontend_can_read(mutated)


@pytest.mark.parametrize("frame, field", [
    ([protocol.RESULTS, -1, True, [], [], 0], "negative batch id"),
    ([protocol.RESULTS, 1, 1, [], [], 0], "done as an int"),
    ([protocol.RESULTS, 1, True, {}, [], 0], "results as a map"),
    ([protocol.RESULTS, 1, True, [[1, "200", "", None, [], b""]], [], 0], "status as a str"),
    ([protocol.RESULTS, 1, True, [[1, 200, None, None, [], b""]], [], 0], "phrase as nil"),
    ([protocol.RESULTS, 1, True, [[1, 200, "", 5, [], b""]], [], 0], "content type as an int"),
    ([protocol.RESULTS, 1, True, [[1, 200, "", None, [["a"]], b""]], [], 0], "a header without value"),
    ([protocol.RESULTS, 1, True, [[1, 200, "", None, [[b"a", b"b"]], b""]], [], 0], "header as bytes"),
    ([protocol.RESULTS, 1, True, [[1, 200, "", None, [], "body"]], [], 0], "body as a str"),
    ([protocol.RESULTS, 1, True, [[-1, 200, "", None, [], b""]], [], 0], "negative request id"),
    ([protocol.RESULTS, 1, True, [[1, 200, "", None, []]], [], 0], "a result of five items"),
    ([protocol.RESULTS, 1, True, [], [["n", "u", "gauge", [], [], "1"]], 0], "metric value as a str"),
    ([protocol.RESULTS, 1, True, [], [["n", "u", "gauge", [1], [], 1.0]], 0], "dimension name as an int"),
    ([protocol.RESULTS, 1, True, [], [], -5], "negative started_ns"),
    ([protocol.RESULTS, 1, True, [], []], "a results frame of five items"),
    ([protocol.LOADED, [1, 2]], "loaded info as a list"),
    ([protocol.LOADED, {1: 2}], "a map key that is an int"),
    ([protocol.LOAD_FAILED, b"message"], "load-failed message as bytes"),
    ([protocol.LOAD_FAILED], "load-failed without message"),
    (["13", 1, True, [], [], 0], "kind as a str"),
    ([protocol.LOAD, {}], "a server frame kind"),
    ([], "an empty frame"),
    ({"kind": 13}, "a map"),
])
def test_a_field_of_the_wrong_type_is_refused(frame, field):
    with pytest.raises(protocol.FrameError):
        _core.decode_response_frame(protocol.pack(frame))


@pytest.mark.parametrize("header", [
    b"\xdd\xff\xff\xff\xff",  # array32 of 4G items
    b"\xdc\xff\xff",          # array16 of 64K items
    b"\xdf\xff\xff\xff\xff",  # map32
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
    b"\xc6\x7f\xff\xff\xff",
])
@pytest.mark.parametrize("where", ["frame", "results", "info", "body", "phrase"])
def test_a_huge_declared_length_is_refused_without_allocating_it(header, where):
    frames = {
        "frame": header + b"\x0d",
        "results": b"\x96\x0d\x01\xc3" + header + b"\x90\x00",
        "info": b"\x92\x0b\x81\xa1k" + header,
        "body": b"\x96\x0d\x01\xc3\x91\x96\x01\xcc\xc8\xa0\xc0\x90" + header + b"xx\x90\x00",
        "phrase": b"\x96\x0d\x01\xc3\x91\x96\x01\xcc\xc8" + header + b"\xc0\x90\xc4\x00\x90\x00",
    }
    started = time.monotonic()
    with pytest.raises(protocol.FrameError):
        _core.decode_response_frame(frames[where])
    assert time.monotonic() - started < 1.0


@FUZZ
@given(ENCODED_RESPONSES, st.data())
def test_any_declared_length_past_the_end_is_refused(frame, data):
    length = data.draw(st.integers(len(frame) + 1, 2**32 - 1))
    tag = data.draw(st.sampled_from([b"\xdd", b"\xdb", b"\xc6", b"\xdf"]))
    for candidate in (tag + length.to_bytes(4, "big") + frame,
                      b"\x92\x0c" + tag + length.to_bytes(4, "big") + frame):
        with pytest.raises(protocol.FrameError):
            _core.decode_response_frame(candidate)


@pytest.mark.parametrize("depth", [40, 1_000, 100_000, 2_000_000])
def test_deep_nesting_is_refused_not_a_stack_overflow(depth):
    nested_lists = b"\x92\x0b\x81\xa1k" + b"\x91" * depth + b"\xc0"
    nested_maps = b"\x92\x0b" + b"\x81\xa1k" * depth + b"\xc0"
    for frame in (nested_lists, nested_maps):
        with pytest.raises(protocol.FrameError, match="nested too deeply|declares more"):
            _core.decode_response_frame(frame)


def test_nesting_a_handler_could_send_is_accepted():
    info = {"pid": 1}
    for _ in range(8):  # 17 levels
        info = {"k": [info]}
    assert _core.decode_response_frame(protocol.encode_loaded(info))[0] == protocol.LOADED


@pytest.mark.parametrize("ext", [
    b"\xd6\xff\x00\x00\x00\x01",  # a timestamp
    b"\xd4\x05\x00",
    b"\xc7\x01\x05\x00",
    b"\xc8\x00\x01\x05\x00",
    b"\xc9\x00\x00\x00\x01\x05\x00",
])
def test_msgpack_extension_types_are_refused(ext):
    with pytest.raises(protocol.FrameError, match="extension"):
        _core.decode_response_frame(b"\x92\x0b\x81\xa1k" + ext)


def test_the_byte_msgpack_never_uses_is_refused():
    with pytest.raises(protocol.FrameError):
        _core.decode_response_frame(b"\x92\x0b\x81\xa1k\xc1")


@FUZZ
@given(st.binary(max_size=12))
def test_strings_are_accepted_exactly_when_python_can_decode_them_as_utf8(raw):
    frame = b"\x92\x0c\xdb" + len(raw).to_bytes(4, "big") + raw  # [LOAD_FAILED, str32]
    try:
        raw.decode("utf-8")
        python_can = True
    except UnicodeDecodeError:
        python_can = False
    assert (decode_or_none(frame) is not None) == python_can


@pytest.mark.parametrize("raw", [
    b"\xc0\x80", b"\xe0\x80\x80", b"\xf0\x80\x80\x80",  # overlong
    b"\xed\xa0\x80", b"\xed\xbf\xbf",                     # surrogates
    b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff",    # past U+10FFFF, never valid
    b"\xe2\x82", b"\x80",                                  # cut short, stray continuation
])
def test_strings_that_are_not_utf8_are_refused(raw):
    frame = b"\x92\x0c" + bytes([0xA0 | len(raw)]) + raw
    with pytest.raises(protocol.FrameError, match="UTF-8"):
        _core.decode_response_frame(frame)


# -- the frontend's msgpack reading (protocol.unpack) ---------------------------------------

@FUZZ
@given(st.binary(max_size=200))
def test_unpack_raises_frame_error_for_bytes_that_are_not_one_msgpack_value(frame):
    try:
        protocol.unpack(frame)
    except protocol.FrameError:
        pass


@pytest.mark.parametrize("frame", [
    b"", b"\xc1", b"\x92\x01", b"\x90\x90", b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
    b"\x91" * 100_000 + b"\xc0", b"\xa2\xff\xfe", b"\x81\x90\x90",
])
def test_unpack_refuses_malformed_msgpack_with_frame_error(frame):
    with pytest.raises(protocol.FrameError):
        protocol.unpack(frame)


def test_frame_error_is_a_value_error_shared_with_the_core():
    assert issubclass(protocol.FrameError, ValueError)
    assert protocol.FrameError is _core.FrameError


# -- the worker's reading of the server's frames (protocol.decode_request_frame) ------------

def assert_checked_request_frame(frame: list) -> None:
    assert isinstance(frame, list) and frame and type(frame[0]) is int
    if frame[0] == protocol.BATCH:
        _, batch_id, requests = frame
        assert type(batch_id) is int and batch_id >= 0
        for request in requests:
            assert type(request["id"]) is int and isinstance(request["request_id"], str)
            assert isinstance(request["content_type"], str) and isinstance(request["body"], bytes)
            assert all(isinstance(name, bytes) and isinstance(value, bytes)
                       for name, value in request["headers"])
    elif frame[0] == protocol.LOAD:
        assert isinstance(frame[1], dict)
    elif frame[0] == protocol.STOP:
        assert frame == [protocol.STOP]


@FUZZ
@given(BATCH_FRAMES)
def test_batch_frames_as_the_scheduler_writes_them_are_decoded(frame):
    kind, batch_id, requests = protocol.decode_request_frame(frame)
    assert kind == protocol.BATCH
    assert batch_id == int.from_bytes(frame[3:11], "big")
    assert_checked_request_frame([kind, batch_id, requests])


@FUZZ
@given(st.binary(max_size=200) | REQUEST_FRAMES.map(lambda f: f[: len(f) // 2]))
def test_random_or_truncated_server_frames_are_refused_or_decoded_whole(frame):
    try:
        decoded = protocol.decode_request_frame(frame)
    except protocol.FrameError:
        return
    assert_checked_request_frame(decoded)


@FUZZ
@given(REQUEST_FRAMES, st.lists(st.integers(0, 2**20), min_size=1, max_size=4))
def test_server_frames_with_flipped_bits_are_refused_or_decoded_whole(frame, positions):
    try:
        decoded = protocol.decode_request_frame(flip_bits(frame, positions))
    except protocol.FrameError:
        return
    assert_checked_request_frame(decoded)


@FUZZ
@given(st.data(), REQUEST_FRAMES.map(protocol.unpack), VALUES)
def test_server_frames_with_a_part_replaced_are_refused_or_decoded_whole(data, frame, value):
    try:
        decoded = protocol.decode_request_frame(protocol.pack(replace_some_part(data, value, frame)))
    except protocol.FrameError:
        return
    assert_checked_request_frame(decoded)


GOOD_REQUEST = {"id": 1, "request_id": "r", "content_type": "", "headers": [], "body": b""}


@pytest.mark.parametrize("change", [
    {"id": -1}, {"id": "1"}, {"id": True}, {"request_id": 1}, {"content_type": None},
    {"body": "text"}, {"headers": {}}, {"headers": [["a", "b"]]}, {"headers": [[b"a"]]},
])
def test_a_request_with_a_field_of_the_wrong_type_is_refused(change):
    frame = protocol.pack([protocol.BATCH, 1, [GOOD_REQUEST, {**GOOD_REQUEST, **change}]])
    with pytest.raises(protocol.FrameError, match="request"):
        protocol.decode_request_frame(frame)


@pytest.mark.parametrize("frame", [
    [protocol.BATCH, 1], [protocol.BATCH, -1, []], [protocol.BATCH, 1, {}], [protocol.BATCH, 1, [1]],
    [protocol.LOAD], [protocol.LOAD, []], [protocol.STOP, 1], ["load", {}], [], 3, None,
])
def test_a_server_frame_of_the_wrong_shape_is_refused(frame):
    with pytest.raises(protocol.FrameError):
        protocol.decode_request_frame(protocol.pack(frame))


# -- what a worker writes always passes the core's check ----------------------------------------

@SLOW_FUZZ
@given(status=INT64ISH | st.integers() | VALUES, phrase=VALUES, header=st.tuples(VALUES, VALUES),
       content_type=VALUES, metric=st.tuples(VALUES, VALUES, VALUES), output=VALUES)
def test_whatever_a_handler_sets_the_worker_answers_with_frames_the_core_accepts(
        status, phrase, header, content_type, metric, output):
    """Odd statuses, phrases, headers and metric names must not get a worker killed as broken."""
    def handle(data, context):
        context.set_response_status(status, phrase, 0)
        context.set_response_header(0, *header)
        context.set_response_content_type(0, content_type)
        name, unit, dimension = metric
        context.metrics.add_metric(name, 1.0, unit, dimensions=[Dimension(dimension, "v")])
        return [output]

    context = Context("m", str(ECHO_DIR), None, 1, None, "0.12.0", metrics=MetricsCache("m"))
    service = Service(EntryPoint(handle, lambda context: None), context)
    request = {"id": 1, "request_id": "r", "content_type": "", "headers": [], "body": b""}
    results = service.predict([request])
    frame = protocol.encode_results(9, True, results, context.metrics.drain(), 5)
    assert _core.decode_response_frame(frame) == (protocol.RESULTS, 9, True)
    assert_frontend_can_read(frame)


# -- a worker that gets unreadable frames -----------------------------------------------------

class FakeChannel:
    """The worker's rings, played in-process: frames go in as a list, answers are collected."""

    max_frame_size = 1 << 20

    def __init__(self, frames: list[bytes]):
        self.frames = list(frames)
        self.sent: list[bytes] = []

    def receive(self, timeout=None):
        return self.frames.pop(0) if self.frames else None

    def send(self, data: bytes, timeout=None) -> bool:
        self.sent.append(data)
        return True


ECHO_LOAD = protocol.encode_load({"model_dir": str(ECHO_DIR), "model_name": "echo",
                                  "handler": "echo_handler", "batch_size": 1})


@SLOW_FUZZ
@given(st.binary(max_size=64))
def test_a_worker_whose_first_frame_is_garbage_exits_with_a_code_not_a_traceback(frame):
    try:
        assume(protocol.decode_request_frame(frame)[0] != protocol.LOAD)  # that would load a model
    except protocol.FrameError:
        pass
    channel = FakeChannel([frame])
    assert worker_main.serve(channel) in (2, 3)
    assert channel.sent == []


def test_a_worker_answers_what_it_got_then_exits_with_code_3_on_a_garbage_frame(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    batch = batch_frame(7, [protocol.encode_request(1, "r1", "text/plain", [], b"hi")])
    channel = FakeChannel([ECHO_LOAD, batch, b"\x93\x02\xcf\x00", batch])
    assert worker_main.serve(channel) == 3
    loaded, results = (protocol.unpack(frame) for frame in channel.sent)
    assert loaded[0] == protocol.LOADED
    assert results[:3] == [protocol.RESULTS, 7, True] and results[3][0][5] == b"hi"


def test_a_worker_told_nothing_more_by_a_closed_ring_exits_cleanly(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert worker_main.serve(FakeChannel([ECHO_LOAD])) == 0


# -- the real path: a Scheduler and workers that write garbage into their rings ------------

def beside_a_healthy_worker(scheduler) -> RingWorker:
    """Models 1 and 2; a loaded worker serves model 1, so harm done by model 2's shows."""
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=10)
    scheduler.add_model(2, batch_size=1, max_batch_delay=0, max_queue_size=10)
    return loaded_worker(scheduler, worker_id=1, model_id=1)


def assert_round_trip(scheduler, channel, request_id: int) -> list:
    """The healthy worker still gets a request and its answer still reaches Python; returns
    every completion taken meanwhile."""
    payload = protocol.encode_request(request_id, str(request_id), "", [], b"x")
    assert scheduler.submit(1, request_id, payload) == _core.SUBMIT_QUEUED
    _, batch_id, requests = protocol.decode_request_frame(channel.receive(timeout=5))
    assert [request["id"] for request in requests] == [request_id]
    channel.send(protocol.encode_results(batch_id, True, [[request_id, 200, "", None, [], b"ok"]]))
    got = take_completions(scheduler, lambda got: any(k == protocol.RESULTS for _, k, _ in got))
    assert_frontend_can_read(next(frame for _, kind, frame in got if kind == protocol.RESULTS))
    return got


@SLOW_FUZZ
@given(frames=st.lists(st.binary(max_size=100) | ENCODED_RESPONSES | ENCODED_RESPONSES.map(lambda f: f[:-1]),
                      min_size=1, max_size=3))
def test_a_worker_writing_garbage_is_reported_broken_and_the_scheduler_keeps_serving(frames):
    with scheduler_under_test(1 << 16) as scheduler:
        healthy_channel = beside_a_healthy_worker(scheduler).channel
        garbler_end = RingWorker(scheduler, 2, model_id=2)
        garbler, channel = garbler_end.id, garbler_end.channel
        for frame in frames:
            channel.send(frame)
        # Frames the core accepts are handed on until the first one it cannot read.
        expected = []
        for frame in frames:
            decoded = decode_or_none(frame)
            if decoded is None or decoded[0] == protocol.RESULTS:  # it holds no batch
                expected.append(protocol.BROKEN)
                break
            expected.append(decoded[0])
        got = take_completions(scheduler, lambda got: [k for w, k, _ in got if w == garbler] == expected
                       or protocol.BROKEN in [k for w, k, _ in got if w == garbler])
        assert [k for w, k, _ in got if w == garbler] == expected
        for worker_id, kind, frame in got:
            if kind != protocol.BROKEN:
                assert_frontend_can_read(frame)
        scheduler.worker_exited(garbler)
        assert_round_trip(scheduler, healthy_channel, 1)


@SLOW_FUZZ
@given(writes=st.lists(st.tuples(st.integers(0, 4096 + 512), st.binary(min_size=1, max_size=16)),
                       min_size=1, max_size=8))
def test_a_worker_scribbling_over_its_response_ring_cannot_crash_the_scheduler(writes):
    """Its ring's positions, frame headers and frames, overwritten at random in shared memory."""
    with scheduler_under_test(1 << 16) as scheduler:
        healthy_channel = beside_a_healthy_worker(scheduler).channel
        scribbler_end = RingWorker(scheduler, 2, model_id=2)
        scribbler, responses = scribbler_end.id, scribbler_end.responses
        ring = _core.ShmRing.open(responses)  # writes frames without ringing the doorbell
        for _ in range(3):
            ring.try_write(protocol.encode_loaded({"pid": 1}))
        with open(f"/dev/shm/{responses.lstrip('/')}", "r+b") as file, mmap.mmap(file.fileno(), 0) as memory:
            for offset, data in writes:
                memory[offset:offset + len(data)] = data
        _core.Doorbell.open(scheduler.doorbell_name).ring()
        got = assert_round_trip(scheduler, healthy_channel, 1)  # the core thread read every ring since
        for worker_id, kind, frame in got + scheduler.take_completions():
            if kind != protocol.BROKEN:
                assert_frontend_can_read(frame)
        del ring
        scheduler.worker_exited(scribbler)


def test_a_worker_process_exits_with_code_3_on_a_garbage_request_frame():
    with scheduler_under_test(1 << 16) as scheduler:
        scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=10)
        requests, responses = scheduler.add_worker(1, 1, ECHO_LOAD)
        process = subprocess.Popen(
            [sys.executable, "-m", "pyserve.worker", "--requests", requests, "--responses", responses,
             "--doorbell", scheduler.doorbell_name, "--parent-pid", str(os.getpid())],
            cwd=ECHO_DIR, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            take_completions(scheduler, lambda got: any(k == protocol.LOADED for _, k, _ in got), timeout=60)
            assert _core.ShmRing.open(requests).try_write(b"\x93\x02\xcf\x00\x01")  # a batch cut short
            assert process.wait(timeout=30) == 3
            assert b"giving up on the rings shared with the server" in process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stderr.close()
            scheduler.worker_exited(1)


def test_struct_layout_matches_the_batch_the_scheduler_writes():
    """batch_frame() above must be what the core writes, or the batch tests prove nothing."""
    with scheduler_under_test(1 << 16) as scheduler:
        scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=10)
        worker = loaded_worker(scheduler)
        worker_id, channel = worker.id, worker.channel
        payload = protocol.encode_request(5, "r5", "text/plain", [[b"a", b"b"]], b"body")
        assert scheduler.submit(1, 5, payload) == _core.SUBMIT_QUEUED
        frame = channel.receive(timeout=5)
        batch_id = struct.unpack(">Q", frame[3:11])[0]
        assert frame == batch_frame(batch_id, [payload])
        scheduler.worker_exited(worker_id)
