"""Frames that cross shared memory, fuzzed: bad bytes are refused with FrameError, never a
crash, a hang or an allocation sized by a length the bytes declare.

Three decoders read frames another process wrote:

- the core's check of every worker frame (csrc/core/frames.cpp, ``parse_worker_frame``),
  reached directly through ``_core.decode_worker_frame`` and for real through a Core whose
  worker writes garbage into its up ring;
- ``frames.unpack``, which the server's Python uses on the frames the core hands on;
- ``frames.decode_request_frame``, which the worker uses on the server's frames.

A results frame that passes the check must also answer the batch it names: results only
for requests that batch holds and has not had a final answer for, each routed once; a worker
that breaks this is reported BROKEN, and a ``done`` frame has the core answer whatever the
worker left out of the batch.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyserve import _core, frames
from pyserve.worker import main as worker_main
from pyserve.worker.context import Context
from pyserve.worker.loader import EntryPoint
from pyserve.worker.metrics import Dimension, MetricsCache
from pyserve.worker.service import Service

from helpers import RingWorker, core_under_test, loaded_worker, results_in, take_from

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ECHO_DIR = Path(__file__).resolve().parent.parent / "examples" / "echo"

# -- strategies ---------------------------------------------------------------------------

UINT64 = st.integers(0, 2**64 - 1)
INT64ISH = st.integers(-(2**63), 2**64 - 1)  # every int msgpack can carry
TEXT = st.text(max_size=12)
STR_PAIRS = st.lists(st.tuples(TEXT, TEXT).map(list), max_size=3)

RESULT_FIELDS = st.tuples(UINT64, INT64ISH, TEXT, st.none() | TEXT, STR_PAIRS, st.binary(max_size=40))
# Six items, or seven whose last says whether more parts of a streamed answer follow.
RESULT = RESULT_FIELDS.map(list) | st.tuples(RESULT_FIELDS, st.booleans()).map(lambda r: [*r[0], r[1]])
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
    lambda info: [frames.LOADED, info])
LOAD_FAILED_FRAMES = TEXT.map(lambda message: [frames.LOAD_FAILED, message])
RESULTS_FRAMES = st.tuples(UINT64, st.booleans(), st.lists(RESULT, max_size=4), st.lists(METRIC, max_size=3),
                           UINT64).map(lambda f: [frames.RESULTS, *f])
WORKER_FRAMES = LOADED_FRAMES | LOAD_FAILED_FRAMES | RESULTS_FRAMES
ENCODED_WORKER_FRAMES = WORKER_FRAMES.map(frames.pack)

REQUEST = st.builds(frames.encode_request, id=st.integers(0, 2**63), request_id=TEXT, content_type=TEXT,
                    headers=st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)).map(list), max_size=3),
                    body=st.binary(max_size=40))


def batch_frame(batch_id: int, payloads: list[bytes]) -> bytes:
    """A batch as the core frames it: fixarray(3), BATCH, uint64 id, array32, the requests as sent."""
    return (bytes([0x93, frames.BATCH, 0xCF]) + batch_id.to_bytes(8, "big")
            + b"\xdd" + len(payloads).to_bytes(4, "big") + b"".join(payloads))


BATCH_FRAMES = st.builds(batch_frame, UINT64, st.lists(REQUEST, max_size=4))
REQUEST_FRAMES = (BATCH_FRAMES | st.just(frames.pack([frames.STOP]))
                  | st.dictionaries(st.text(max_size=8), PLAIN_VALUES, max_size=4).map(frames.encode_load))


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
    return (type(result) is list and len(result) in (6, 7) and _uint(result[0]) and _int(result[1])
            and _str(result[2]) and (result[3] is None or _str(result[3]))
            and type(result[4]) is list
            and all(type(h) is list and len(h) == 2 and _str(h[0]) and _str(h[1]) for h in result[4])
            and type(result[5]) is bytes
            and (len(result) == 6 or type(result[6]) is bool))


def _metric_ok(metric) -> bool:
    return (type(metric) is list and len(metric) == 6 and all(_str(m) for m in metric[:3])
            and all(type(names) is list and all(map(_str, names)) for names in metric[3:5])
            and (type(metric[5]) is float or _int(metric[5])))


def worker_frame_shape_ok(frame) -> bool:
    if type(frame) is not list or not frame or not _uint(frame[0]):
        return False
    kind = frame[0]
    if kind == frames.LOADED:
        return len(frame) == 2 and type(frame[1]) is dict
    if kind == frames.LOAD_FAILED:
        return len(frame) == 2 and _str(frame[1])
    if kind == frames.RESULTS:
        return (len(frame) == 6 and _uint(frame[1]) and type(frame[2]) is bool
                and type(frame[3]) is list and all(map(_result_ok, frame[3]))
                and type(frame[4]) is list and all(map(_metric_ok, frame[4])) and _uint(frame[5]))
    return False


def python_accepts(frame: bytes) -> bool:
    try:
        return worker_frame_shape_ok(frames.unpack(frame))
    except frames.FrameError:
        return False


def decode_or_none(frame: bytes):
    """(kind, batch_id, done, [(result id, more), ...]), or None when the core refuses the
    frame with FrameError."""
    try:
        return _core.decode_worker_frame(frame)
    except frames.FrameError:
        return None


def assert_python_can_read_results(results: list, started_ns: int) -> None:
    """What serving/client.py does with each result of a reply frame."""
    for result in results:
        assert frames.Result(*result, started_ns=started_ns).id == result[0]


def assert_python_can_read_metrics(metrics: list) -> None:
    """What metrics.py does with a METRICS event."""
    for name, unit, kind, dimension_names, dimension_values, number in metrics:
        hash((*dimension_names, "Hostname"))
        hash((*dimension_values, "host"))
        assert isinstance(number, (int, float)) and not isinstance(number, bool)


def assert_python_can_read(frame: bytes) -> None:
    """A frame the core accepted, read as the server's Python reads its parts: the results
    the core routes in REPLY frames, the metrics it hands on as METRICS events, and LOADED
    and LOAD_FAILED frames as they are (engine/pool.py)."""
    value = frames.unpack(frame)
    assert worker_frame_shape_ok(value)
    if value[0] == frames.RESULTS:
        _, _, _, results, metrics, started_ns = value
        assert_python_can_read_results(results, started_ns)
        assert_python_can_read_metrics(metrics)


def assert_python_can_read_event(kind: int, frame: bytes) -> None:
    if kind == frames.METRICS:
        assert_python_can_read_metrics(frames.unpack(frame))
    elif kind != frames.BROKEN:
        assert_python_can_read(frame)


# -- the core's check of worker frames (_core.decode_worker_frame) -------------------------

@FUZZ
@given(WORKER_FRAMES)
def test_every_well_formed_worker_frame_is_accepted(frame):
    kind, batch_id, done, results = _core.decode_worker_frame(frames.pack(frame))
    assert kind == frame[0]
    if kind == frames.RESULTS:
        assert (batch_id, done) == (frame[1], frame[2])
        assert results == [(result[0], len(result) == 7 and result[6]) for result in frame[3]]


def test_a_result_may_say_that_more_parts_of_its_answer_follow():
    parts = [[4, 200, "", "text/plain", [], b"first", True], [4, 200, "", "text/plain", [], b"second", False],
             [5, 200, "", None, [], b"whole"]]
    frame = frames.encode_results(3, False, parts)
    assert _core.decode_worker_frame(frame) == (frames.RESULTS, 3, False, [(4, True), (4, False), (5, False)])


@FUZZ
@given(st.data(), WORKER_FRAMES, VALUES)
def test_a_frame_is_accepted_exactly_when_it_has_the_documented_shape(data, frame, value):
    candidate = frames.pack(replace_some_part(data, value, frame))
    assert (decode_or_none(candidate) is not None) == python_accepts(candidate)


@FUZZ
@given(st.lists(st.sampled_from([frames.LOADED, frames.LOAD_FAILED, frames.RESULTS, 0, 255, 269, -1])
                | VALUES, max_size=7))
def test_frames_of_unknown_kinds_or_item_counts_are_refused_unless_well_formed(frame):
    candidate = frames.pack(frame)
    assert (decode_or_none(candidate) is not None) == python_accepts(candidate)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_or_readable_by_the_frontend(frame):
    if decode_or_none(frame) is not None:
        assert_python_can_read(frame)


@FUZZ
@given(ENCODED_WORKER_FRAMES, st.data())
def test_a_truncated_frame_is_refused(frame, data):
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(frames.FrameError):
        _core.decode_worker_frame(frame[:cut])


@FUZZ
@given(ENCODED_WORKER_FRAMES, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_after_a_frame_are_refused(frame, tail):
    with pytest.raises(frames.FrameError, match="trailing bytes"):
        _core.decode_worker_frame(frame + tail)


@FUZZ
@given(ENCODED_WORKER_FRAMES, st.lists(st.integers(0, 2**20), min_size=1, max_size=4))
def test_a_frame_with_flipped_bits_is_refused_or_still_readable(frame, positions):
    mutated = flip_bits(frame, positions)
    if decode_or_none(mutated) is not None:
        assert_python_can_read(mutated)


@pytest.mark.parametrize("frame, field", [
    ([frames.RESULTS, -1, True, [], [], 0], "negative batch id"),
    ([frames.RESULTS, 1, 1, [], [], 0], "done as an int"),
    ([frames.RESULTS, 1, True, {}, [], 0], "results as a map"),
    ([frames.RESULTS, 1, True, [[1, "200", "", None, [], b""]], [], 0], "status as a str"),
    ([frames.RESULTS, 1, True, [[1, 200, None, None, [], b""]], [], 0], "phrase as nil"),
    ([frames.RESULTS, 1, True, [[1, 200, "", 5, [], b""]], [], 0], "content type as an int"),
    ([frames.RESULTS, 1, True, [[1, 200, "", None, [["a"]], b""]], [], 0], "a header without value"),
    ([frames.RESULTS, 1, True, [[1, 200, "", None, [[b"a", b"b"]], b""]], [], 0], "header as bytes"),
    ([frames.RESULTS, 1, True, [[1, 200, "", None, [], "body"]], [], 0], "body as a str"),
    ([frames.RESULTS, 1, True, [[-1, 200, "", None, [], b""]], [], 0], "negative request id"),
    ([frames.RESULTS, 1, True, [[1, 200, "", None, []]], [], 0], "a result of five items"),
    ([frames.RESULTS, 1, True, [[1, 200, "", None, [], b"", True, True]], [], 0], "a result of eight items"),
    ([frames.RESULTS, 1, True, [[1, 200, "", None, [], b"", 1]], [], 0], "more as an int"),
    ([frames.RESULTS, 1, True, [[1, 200, "", None, [], b"", None]], [], 0], "more as nil"),
    ([frames.RESULTS, 1, True, [], [["n", "u", "gauge", [], [], "1"]], 0], "metric value as a str"),
    ([frames.RESULTS, 1, True, [], [["n", "u", "gauge", [1], [], 1.0]], 0], "dimension name as an int"),
    ([frames.RESULTS, 1, True, [], [], -5], "negative started_ns"),
    ([frames.RESULTS, 1, True, [], []], "a results frame of five items"),
    ([frames.LOADED, [1, 2]], "loaded info as a list"),
    ([frames.LOADED, {1: 2}], "a map key that is an int"),
    ([frames.LOAD_FAILED, b"message"], "load-failed message as bytes"),
    ([frames.LOAD_FAILED], "load-failed without message"),
    (["13", 1, True, [], [], 0], "kind as a str"),
    ([frames.LOAD, {}], "a server frame kind"),
    ([], "an empty frame"),
    ({"kind": 13}, "a map"),
])
def test_a_field_of_the_wrong_type_is_refused(frame, field):
    with pytest.raises(frames.FrameError):
        _core.decode_worker_frame(frames.pack(frame))


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
    candidates = {
        "frame": header + b"\x0d",
        "results": b"\x96\x0d\x01\xc3" + header + b"\x90\x00",
        "info": b"\x92\x0b\x81\xa1k" + header,
        "body": b"\x96\x0d\x01\xc3\x91\x96\x01\xcc\xc8\xa0\xc0\x90" + header + b"xx\x90\x00",
        "phrase": b"\x96\x0d\x01\xc3\x91\x96\x01\xcc\xc8" + header + b"\xc0\x90\xc4\x00\x90\x00",
    }
    started = time.monotonic()
    with pytest.raises(frames.FrameError):
        _core.decode_worker_frame(candidates[where])
    assert time.monotonic() - started < 1.0


@FUZZ
@given(ENCODED_WORKER_FRAMES, st.data())
def test_any_declared_length_past_the_end_is_refused(frame, data):
    length = data.draw(st.integers(len(frame) + 1, 2**32 - 1))
    tag = data.draw(st.sampled_from([b"\xdd", b"\xdb", b"\xc6", b"\xdf"]))
    for candidate in (tag + length.to_bytes(4, "big") + frame,
                      b"\x92\x0c" + tag + length.to_bytes(4, "big") + frame):
        with pytest.raises(frames.FrameError):
            _core.decode_worker_frame(candidate)


@pytest.mark.parametrize("depth", [40, 1_000, 100_000, 2_000_000])
def test_deep_nesting_is_refused_not_a_stack_overflow(depth):
    nested_lists = b"\x92\x0b\x81\xa1k" + b"\x91" * depth + b"\xc0"
    nested_maps = b"\x92\x0b" + b"\x81\xa1k" * depth + b"\xc0"
    for frame in (nested_lists, nested_maps):
        with pytest.raises(frames.FrameError, match="nested too deeply|declares more"):
            _core.decode_worker_frame(frame)


def test_nesting_a_handler_could_send_is_accepted():
    info = {"pid": 1}
    for _ in range(8):  # 17 levels
        info = {"k": [info]}
    assert _core.decode_worker_frame(frames.encode_loaded(info))[0] == frames.LOADED


@pytest.mark.parametrize("ext", [
    b"\xd6\xff\x00\x00\x00\x01",  # a timestamp
    b"\xd4\x05\x00",
    b"\xc7\x01\x05\x00",
    b"\xc8\x00\x01\x05\x00",
    b"\xc9\x00\x00\x00\x01\x05\x00",
])
def test_msgpack_extension_types_are_refused(ext):
    with pytest.raises(frames.FrameError, match="extension"):
        _core.decode_worker_frame(b"\x92\x0b\x81\xa1k" + ext)


def test_the_byte_msgpack_never_uses_is_refused():
    with pytest.raises(frames.FrameError):
        _core.decode_worker_frame(b"\x92\x0b\x81\xa1k\xc1")


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
    with pytest.raises(frames.FrameError, match="UTF-8"):
        _core.decode_worker_frame(frame)


# -- Python's msgpack reading (frames.unpack) -----------------------------------------------

@FUZZ
@given(st.binary(max_size=200))
def test_unpack_raises_frame_error_for_bytes_that_are_not_one_msgpack_value(frame):
    try:
        frames.unpack(frame)
    except frames.FrameError:
        pass


@pytest.mark.parametrize("frame", [
    b"", b"\xc1", b"\x92\x01", b"\x90\x90", b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
    b"\x91" * 100_000 + b"\xc0", b"\xa2\xff\xfe", b"\x81\x90\x90",
])
def test_unpack_refuses_malformed_msgpack_with_frame_error(frame):
    with pytest.raises(frames.FrameError):
        frames.unpack(frame)


def test_frame_error_is_a_value_error_shared_with_the_core():
    assert issubclass(frames.FrameError, ValueError)
    assert frames.FrameError is _core.FrameError


# -- the worker's reading of the server's frames (frames.decode_request_frame) ------------

def assert_checked_request_frame(frame: list) -> None:
    assert isinstance(frame, list) and frame and type(frame[0]) is int
    if frame[0] == frames.BATCH:
        _, batch_id, requests = frame
        assert type(batch_id) is int and batch_id >= 0
        for request in requests:
            assert type(request["id"]) is int and isinstance(request["request_id"], str)
            assert isinstance(request["content_type"], str) and isinstance(request["body"], bytes)
            assert all(isinstance(name, bytes) and isinstance(value, bytes)
                       for name, value in request["headers"])
    elif frame[0] == frames.LOAD:
        assert isinstance(frame[1], dict)
    elif frame[0] == frames.STOP:
        assert frame == [frames.STOP]


@FUZZ
@given(BATCH_FRAMES)
def test_batch_frames_as_the_core_writes_them_are_decoded(frame):
    kind, batch_id, requests = frames.decode_request_frame(frame)
    assert kind == frames.BATCH
    assert batch_id == int.from_bytes(frame[3:11], "big")
    assert_checked_request_frame([kind, batch_id, requests])


@FUZZ
@given(st.binary(max_size=200) | REQUEST_FRAMES.map(lambda f: f[: len(f) // 2]))
def test_random_or_truncated_server_frames_are_refused_or_decoded_whole(frame):
    try:
        decoded = frames.decode_request_frame(frame)
    except frames.FrameError:
        return
    assert_checked_request_frame(decoded)


@FUZZ
@given(REQUEST_FRAMES, st.lists(st.integers(0, 2**20), min_size=1, max_size=4))
def test_server_frames_with_flipped_bits_are_refused_or_decoded_whole(frame, positions):
    try:
        decoded = frames.decode_request_frame(flip_bits(frame, positions))
    except frames.FrameError:
        return
    assert_checked_request_frame(decoded)


@FUZZ
@given(st.data(), REQUEST_FRAMES.map(frames.unpack), VALUES)
def test_server_frames_with_a_part_replaced_are_refused_or_decoded_whole(data, frame, value):
    try:
        decoded = frames.decode_request_frame(frames.pack(replace_some_part(data, value, frame)))
    except frames.FrameError:
        return
    assert_checked_request_frame(decoded)


GOOD_REQUEST = {"id": 1, "request_id": "r", "content_type": "", "headers": [], "body": b""}


@pytest.mark.parametrize("change", [
    {"id": -1}, {"id": "1"}, {"id": True}, {"request_id": 1}, {"content_type": None},
    {"body": "text"}, {"headers": {}}, {"headers": [["a", "b"]]}, {"headers": [[b"a"]]},
])
def test_a_request_with_a_field_of_the_wrong_type_is_refused(change):
    frame = frames.pack([frames.BATCH, 1, [GOOD_REQUEST, {**GOOD_REQUEST, **change}]])
    with pytest.raises(frames.FrameError, match="request"):
        frames.decode_request_frame(frame)


@pytest.mark.parametrize("frame", [
    [frames.BATCH, 1], [frames.BATCH, -1, []], [frames.BATCH, 1, {}], [frames.BATCH, 1, [1]],
    [frames.LOAD], [frames.LOAD, []], [frames.STOP, 1], ["load", {}], [], 3, None,
])
def test_a_server_frame_of_the_wrong_shape_is_refused(frame):
    with pytest.raises(frames.FrameError):
        frames.decode_request_frame(frames.pack(frame))


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
    frame = frames.encode_results(9, True, results, context.metrics.drain(), 5)
    assert _core.decode_worker_frame(frame) == (frames.RESULTS, 9, True, [(1, False)])
    assert_python_can_read(frame)


# -- a worker that gets unreadable frames -----------------------------------------------------

class FakeChannel:
    """The worker's channel, played in-process: frames go in as a list, answers are collected."""

    max_frame_size = 1 << 20

    def __init__(self, incoming: list[bytes]):
        self.incoming = list(incoming)
        self.sent: list[bytes] = []

    def receive(self, timeout=None):
        if timeout == 0 and not self.incoming:
            return None  # a look at an empty ring
        assert self.incoming, "the worker waited for a frame after the test's last one"
        return self.incoming.pop(0)

    def send(self, data: bytes, timeout=None) -> int:
        self.sent.append(data)
        return _core.WRITTEN


ECHO_LOAD = frames.encode_load({"model_dir": str(ECHO_DIR), "model_name": "echo",
                                "handler": "echo_handler", "batch_size": 1})


@SLOW_FUZZ
@given(st.binary(max_size=64))
def test_a_worker_whose_first_frame_is_garbage_exits_with_a_code_not_a_traceback(frame):
    try:
        assume(frames.decode_request_frame(frame)[0] != frames.LOAD)  # that would load a model
    except frames.FrameError:
        pass
    channel = FakeChannel([frame])
    assert worker_main.serve(channel) in (2, 3)
    assert channel.sent == []


def test_a_worker_answers_what_it_got_then_exits_with_code_3_on_a_garbage_frame(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    batch = batch_frame(7, [frames.encode_request(1, "r1", "text/plain", [], b"hi")])
    channel = FakeChannel([ECHO_LOAD, batch, b"\x93\x02\xcf\x00", batch])
    assert worker_main.serve(channel) == 3
    loaded, results = (frames.unpack(frame) for frame in channel.sent)
    assert loaded[0] == frames.LOADED
    assert results[:3] == [frames.RESULTS, 7, True] and results[3][0][5] == b"hi"


# -- the real path: a Core and workers that write garbage into their rings ------------------

GONE = (500, "the worker is gone")


def exited(core, worker_id: int) -> None:
    """What the server does once it killed a worker: the core answers or queues again what
    the worker held, and forgets it."""
    core.worker_exited(worker_id, False, GONE, GONE, GONE)


def beside_a_healthy_worker(core) -> RingWorker:
    """Models 1 and 2; a loaded worker serves model 1, so harm done by model 2's shows."""
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=10)
    core.add_model(2, batch_size=1, max_batch_delay=0, max_queue_size=10)
    return loaded_worker(core, worker_id=1, model_id=1)


def assert_round_trip(core, worker: RingWorker, request_id: int) -> list:
    """The healthy worker still gets a request and its answer still reaches Python; returns
    the events taken meanwhile."""
    payload = frames.encode_request(request_id, str(request_id), "", [], b"x")
    assert core.submit(1, request_id, payload) == _core.SUBMIT_QUEUED
    batch_id, ids = worker.next_batch()
    assert ids == [request_id]
    worker.answer(batch_id, ids)
    replies, events = take_from(core, lambda replies, events: results_in(replies))
    (result,) = results_in(replies)
    assert (result[0], result[1], result[5]) == (request_id, 200, b"ok")
    assert_python_can_read_results([result], replies[0][1])
    return events


@SLOW_FUZZ
@given(garbage=st.lists(st.binary(max_size=100) | ENCODED_WORKER_FRAMES
                        | ENCODED_WORKER_FRAMES.map(lambda f: f[:-1]), min_size=1, max_size=3))
def test_a_worker_writing_garbage_is_reported_broken_and_the_core_keeps_serving(garbage):
    with core_under_test(1 << 16) as core:
        healthy = beside_a_healthy_worker(core)
        garbler = RingWorker(core, 2, model_id=2)
        for frame in garbage:
            assert garbler.channel.send(frame) == _core.WRITTEN
        # Frames the core accepts are handed on until the first one it cannot read.
        expected = []
        for frame in garbage:
            decoded = decode_or_none(frame)
            if decoded is None or decoded[0] == frames.RESULTS:  # it holds no batch
                expected.append(frames.BROKEN)
                break
            expected.append(decoded[0])

        def garbler_kinds(events: list) -> list:
            return [kind for worker_id, kind, _ in events if worker_id == garbler.id]

        _, events = take_from(core, lambda replies, events: garbler_kinds(events) == expected
                              or frames.BROKEN in garbler_kinds(events))
        assert garbler_kinds(events) == expected
        for _, kind, frame in events:
            assert_python_can_read_event(kind, frame)
        exited(core, garbler.id)
        assert_round_trip(core, healthy, 1)


@SLOW_FUZZ
@given(writes=st.lists(st.tuples(st.integers(0, 4096 + 512), st.binary(min_size=1, max_size=16)),
                       min_size=1, max_size=8))
def test_a_worker_scribbling_over_its_up_ring_cannot_crash_the_core(writes):
    """Its ring's layout, positions, frame headers and frames, overwritten at random in shared
    memory: the first page holds the layout and positions, the frames follow."""
    with core_under_test(1 << 16) as core:
        healthy = beside_a_healthy_worker(core)
        _, up_ring, up_event, _ = core.add_worker(2, 2, frames.encode_load({}))
        ring = _core.Ring.attach(os.dup(up_ring))
        for _ in range(3):  # written without waking the core
            assert ring.write(frames.encode_loaded({"pid": 1}))[0] == _core.WRITTEN
        for offset, data in writes:
            os.pwrite(ring.fd, data, offset)
        os.eventfd_write(up_event, 1)  # now it reads them
        events = assert_round_trip(core, healthy, 1)
        events += assert_round_trip(core, healthy, 2)  # by now the core has read the scribbled ring
        for _, kind, frame in events:
            assert_python_can_read_event(kind, frame)
        exited(core, 2)


def test_a_worker_process_exits_with_code_3_on_a_garbage_request_frame():
    with core_under_test(1 << 16) as core:
        core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=10)
        fds = core.add_worker(1, 1, ECHO_LOAD)
        process = subprocess.Popen(
            [sys.executable, "-m", "pyserve.worker", "--channel", ",".join(map(str, fds)),
             "--parent-pid", str(os.getpid())],
            cwd=ECHO_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, pass_fds=fds,
        )
        try:
            take_from(core, lambda replies, events: any(kind == frames.LOADED for _, kind, _ in events),
                      timeout=60)
            down = _core.Ring.attach(os.dup(fds[0]))  # the core writes nothing to it meanwhile
            assert down.write(b"\x93\x02\xcf\x00\x01")[0] == _core.WRITTEN  # a batch cut short
            os.eventfd_write(fds[3], 1)
            assert process.wait(timeout=30) == 3
            assert b"giving up on the rings shared with the server" in process.stdout.read()  # its log
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
            exited(core, 1)


def test_struct_layout_matches_the_batch_the_core_writes():
    """batch_frame() above must be what the core writes, or the batch tests prove nothing."""
    with core_under_test(1 << 16) as core:
        core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=10)
        worker = loaded_worker(core)
        payload = frames.encode_request(5, "r5", "text/plain", [[b"a", b"b"]], b"body")
        assert core.submit(1, 5, payload) == _core.SUBMIT_QUEUED
        frame = worker.channel.receive(timeout=5)
        batch_id = struct.unpack(">Q", frame[3:11])[0]
        assert frame == batch_frame(batch_id, [payload])


# -- results answer the batch they name ------------------------------------------------------

STARTED_NS = 12345  # the worker's results frames carry it; the core's own answers carry 0
LEFT_OUT = {"code": 500, "type": "InternalServerException",
            "message": "The worker finished this request's batch without answering it"}


def holding_a_batch(core, size: int) -> tuple[RingWorker, int, list[int]]:
    """A loaded worker holding one batch, of the requests 1..size."""
    core.add_model(1, batch_size=size, max_batch_delay=0, max_queue_size=100)
    worker = RingWorker(core, 1)
    for id in range(1, size + 1):
        assert core.submit(1, id, frames.encode_request(id, str(id), "", [], b"x")) == _core.SUBMIT_QUEUED
    worker.load()  # ready now, it takes all of them as one batch
    batch_id, ids = worker.next_batch()
    assert ids == list(range(1, size + 1))
    return worker, batch_id, ids


def result(id: int, part: int, more: bool, seven_items: bool = True) -> list:
    return [id, 200, "", None, [], f"{id}.{part}".encode(), *([more] if more or seven_items else [])]


def is_final(result: list) -> bool:
    return not (len(result) == 7 and result[6])


@st.composite
def answers(draw, ids: list[int]) -> list:
    """Results for some of `ids`, interleaved in any order: for each, a few parts of a
    streamed answer (more=True), then its final result or not."""
    counts = {}
    finals = {}
    for id in draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []:
        finals[id] = draw(st.booleans())
        counts[id] = draw(st.integers(0, 2)) + finals[id]
    order = draw(st.permutations([id for id, count in counts.items() for _ in range(count)]))
    results = []
    for part, id in enumerate(order):
        counts[id] -= 1
        final = finals[id] and counts[id] == 0
        results.append(result(id, part, more=not final, seven_items=draw(st.booleans())))
    return results


def send_results(worker: RingWorker, batch_id: int, done: bool, results: list, started_ns: int) -> None:
    frame = frames.encode_results(batch_id, done, results, [], started_ns)
    assert worker.channel.send(frame) == _core.WRITTEN


def settled(core, worker: RingWorker) -> tuple[list, list]:
    """Replies and events so far: the worker writes one more LOADED frame, and the core, which
    reads a worker's frames in order and routes each frame's results before the next, hands
    it on after them."""
    assert worker.channel.send(frames.encode_loaded({"pid": 0})) == _core.WRITTEN
    return take_from(core, lambda replies, events: any(
        worker_id == worker.id and kind == frames.LOADED for worker_id, kind, _ in events))


def assert_refused_whole(core, worker: RingWorker, routed_before: list) -> None:
    """The worker is reported BROKEN, and none of the refused frame's results reach Python:
    only `routed_before`, the results of frames it accepted."""
    replies, events = take_from(core, lambda replies, events: any(
        kind == frames.BROKEN for _, kind, _ in events))
    exited(core, worker.id)  # it waits for the core thread to be done with the worker's frames
    later_replies, later_events = core.take()
    replies += [frames.unpack(reply) for reply in later_replies]
    assert [(worker_id, kind) for worker_id, kind, _ in events + later_events] == [
        (worker.id, frames.BROKEN)]
    assert results_in(replies) == routed_before


@SLOW_FUZZ
@given(st.integers(1, 4), st.booleans(), st.data())
def test_results_for_requests_of_a_held_batch_are_accepted_and_each_reaches_python_once(size, done, data):
    with core_under_test(1 << 16) as core:
        worker, batch_id, ids = holding_a_batch(core, size)
        sent = data.draw(answers(ids))
        send_results(worker, batch_id, done, sent, STARTED_NS)
        replies, events = settled(core, worker)
        assert [kind for _, kind, _ in events] == [frames.LOADED]
        routed = [result for reply in replies if reply[:2] == [frames.REPLY, STARTED_NS]
                  for result in reply[2]]
        assert routed == sent


@SLOW_FUZZ
@given(st.integers(1, 4), st.booleans(), st.data())
def test_a_results_frame_with_a_result_for_a_request_outside_its_batch_is_refused_whole(size, done, data):
    with core_under_test(1 << 16) as core:
        worker, batch_id, ids = holding_a_batch(core, size)
        sent = data.draw(answers(ids))
        stranger = data.draw(UINT64.filter(lambda id: id not in ids))
        sent.insert(data.draw(st.integers(0, len(sent))),
                    result(stranger, 0, more=data.draw(st.booleans())))
        send_results(worker, batch_id, done, sent, STARTED_NS)
        assert_refused_whole(core, worker, routed_before=[])


@SLOW_FUZZ
@given(st.integers(1, 4), st.booleans(), st.booleans(), st.data())
def test_a_results_frame_with_a_result_after_a_final_one_is_refused_whole(size, done, in_an_earlier_frame,
                                                                          data):
    """Whether the request's final result came earlier in the same frame or in an earlier one."""
    with core_under_test(1 << 16) as core:
        worker, batch_id, ids = holding_a_batch(core, size)
        answered = data.draw(st.sampled_from(ids))
        final = result(answered, 100, more=False)
        sent = data.draw(answers([id for id in ids if id != answered]))
        if in_an_earlier_frame:
            send_results(worker, batch_id, False, [final], STARTED_NS)
            routed_before, first_after = [final], 0
        else:
            routed_before, first_after = [], data.draw(st.integers(0, len(sent))) + 1
            sent.insert(first_after - 1, final)
        sent.insert(data.draw(st.integers(first_after, len(sent))),
                    result(answered, 101, more=data.draw(st.booleans())))
        send_results(worker, batch_id, done, sent, STARTED_NS + 1)
        assert_refused_whole(core, worker, routed_before)


@pytest.mark.parametrize("batch", ["never sent", "already finished"])
def test_results_for_a_batch_the_worker_does_not_hold_are_refused(batch):
    with core_under_test(1 << 16) as core:
        worker, batch_id, ids = holding_a_batch(core, 2)
        routed_before = []
        if batch == "already finished":
            worker.answer(batch_id, ids)
            routed_before = [[id, 200, "", None, [], b"ok"] for id in ids]
        else:
            batch_id += 1
        send_results(worker, batch_id, False, [result(ids[0], 0, more=False)], STARTED_NS)
        assert_refused_whole(core, worker, routed_before)


def test_a_worker_reported_broken_gets_no_more_batches():
    with core_under_test(1 << 16) as core:
        worker, batch_id, ids = holding_a_batch(core, 1)
        send_results(worker, batch_id + 1, True, [], STARTED_NS)
        take_from(core, lambda replies, events: any(kind == frames.BROKEN for _, kind, _ in events))
        assert core.submit(1, 9, frames.encode_request(9, "9", "", [], b"x")) == _core.SUBMIT_QUEUED
        assert core.queued(1) == 1  # it holds one batch and could take another, were it sound


@SLOW_FUZZ
@given(st.integers(1, 5), st.data())
def test_a_done_frame_has_the_core_answer_every_request_it_left_without_a_final_result(size, data):
    with core_under_test(1 << 16) as core:
        worker, batch_id, ids = holding_a_batch(core, size)
        sent = data.draw(answers(ids))
        left_out = [id for id in ids if id not in {result[0] for result in sent if is_final(result)}]
        send_results(worker, batch_id, True, sent, STARTED_NS)
        replies, _ = take_from(core, lambda replies, events:
                               len(results_in(replies)) >= len(sent) + len(left_out))
        later_replies, events = settled(core, worker)
        assert [kind for _, kind, _ in events] == [frames.LOADED]
        answered_by_core = [result for reply in replies + later_replies if reply[:2] == [frames.REPLY, 0]
                            for result in reply[2]]
        assert sorted(result[0] for result in answered_by_core) == left_out
        for id, status, phrase, content_type, headers, body in answered_by_core:
            assert (status, content_type) == (500, "application/json")
            assert json.loads(body) == LEFT_OUT
        assert core.in_flight(worker.id) == 0
