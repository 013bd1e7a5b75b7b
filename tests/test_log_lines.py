"""What the logs hold: one line per message whatever a client put in it, and an error that
repeats logged in full once, then counted."""

from __future__ import annotations

import io
import logging

import httpx
import pytest

from helpers import HANDLERS, archive_model, start_server
from pyserve.logs import EscapeControlCharacters, RepeatedErrors, escape_control_characters


@pytest.mark.parametrize("text, escaped", [
    ("a\nb\r\tc", "a\\nb\\r\\tc"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("\x00\x7f\x85", "\\x00\\x7f\\x85"),
    ("line\u2028separator", "line\\u2028separator"),
])
def test_control_characters_are_written_as_escapes(text, escaped):
    assert escape_control_characters(text) == escaped


def test_text_without_control_characters_is_left_as_it_is():
    text = "model caf\u00e9-1.0 \u2603"
    assert escape_control_characters(text) is text


def logger_into(stream: io.StringIO, name: str) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.addFilter(EscapeControlCharacters())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger(name)
    log.propagate = False
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    return log


def test_a_logged_argument_cannot_start_a_line_of_its_own():
    stream = io.StringIO()
    logger_into(stream, "test.escape").error("cannot load %s", "x.mar\nINFO all is well")
    assert stream.getvalue() == "ERROR cannot load x.mar\\nINFO all is well\n"


def test_a_traceback_keeps_its_lines():
    stream = io.StringIO()
    try:
        raise ValueError("boom")
    except ValueError:
        logger_into(stream, "test.traceback").exception("failed")
    assert stream.getvalue().startswith("ERROR failed\nTraceback (most recent call last):\n")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def repeated():
    stream = io.StringIO()
    clock = Clock()
    return RepeatedErrors(logger_into(stream, "test.repeated"), clock=clock), clock, stream


def fail(errors: RepeatedErrors, message: str = "bad input") -> None:
    try:
        raise ValueError(message)
    except ValueError:
        errors.error("handler failed on a batch of %d", 1, exc_info=True)


def test_the_first_failure_is_logged_with_its_traceback(repeated):
    errors, _, stream = repeated
    fail(errors)
    assert stream.getvalue().count("Traceback") == 1
    assert "ValueError: bad input" in stream.getvalue()


def test_the_same_failure_within_a_minute_is_not_logged_again(repeated):
    errors, clock, stream = repeated
    for second in range(100):
        clock.now = 1000.0 + second * 0.5
        fail(errors, f"bad input {second}")  # another message, the same error
    assert stream.getvalue().count("Traceback") == 1
    assert len(stream.getvalue().splitlines()) < 20


def test_after_a_minute_the_repeats_are_counted_in_one_line(repeated):
    errors, clock, stream = repeated
    for _ in range(100):
        fail(errors)
    clock.now += 61
    fail(errors, "the latest")
    last = stream.getvalue().splitlines()[-1]
    assert last == ("ERROR handler failed on a batch of 1: ValueError: the latest (the same error "
                    "100 more times in the last 61 s; the first is logged in full above)")
    assert stream.getvalue().count("Traceback") == 1


def test_a_failure_elsewhere_is_logged_in_full(repeated):
    errors, _, stream = repeated
    fail(errors)
    try:
        raise KeyError("other")
    except KeyError:
        errors.error("handler failed on a batch of %d", 1, exc_info=True)
    assert stream.getvalue().count("Traceback") == 2


def test_a_failure_not_seen_for_a_minute_is_logged_in_full_again(repeated):
    errors, clock, stream = repeated
    fail(errors)
    clock.now += 120
    fail(errors)
    assert stream.getvalue().count("Traceback") == 2


def test_a_model_failing_every_request_logs_its_traceback_once(tmp_path):
    archive_model(tmp_path / "store", "failures", HANDLERS / "failures.py")
    server = start_server(tmp_path, tmp_path / "store", ["failures=failures.mar"],
                          default_workers_per_model=1)
    try:
        with httpx.Client(base_url=server.inference_url, timeout=60) as client:
            for _ in range(50):
                response = client.post("/predictions/failures", content=b"x",
                                       headers={"X-Fail": "raise"})
                assert response.status_code == 503
        log = server.log()
    finally:
        server.stop()
    assert log.count("RuntimeError: the handler broke") == 1
    assert log.count("Traceback") == 1
