"""TorchServe's log files: ts_log.log, model_log.log, access_log.log, ts_metrics.log and
model_metrics.log, with TorchServe's line shapes, and the console on stdout."""

from __future__ import annotations

import re
import socket

import httpx
import pytest
from helpers import HANDLERS, archive_model, start_server

from pyserve.metrics_log import metric_line

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3}"  # log4j2's %d{ISO8601}
TIMEOUT = 60
# Runs the server with its stderr in stderr.log (in its working directory), its stdout in
# server.log as always.
STDERR_APART = ["sh", "-c", 'exec "$@" 2>>stderr.log', "sh"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A log-mode server that answered three predictions (?n=0..2), a ping, a prediction for
    a model it does not have and a management call, then stopped: its files are complete."""
    work = tmp_path_factory.mktemp("log_files")
    archive_model(work / "store", "chatty", HANDLERS / "chatty.py")
    server = start_server(work, work / "store", ["chatty=chatty.mar"], default_workers_per_model=1,
                          metrics_mode="log", env={"METRICS_LOCATION": str(work / "metrics")},
                          launcher=STDERR_APART)
    try:
        with httpx.Client(base_url=server.inference_url, timeout=TIMEOUT) as client:
            for n in range(3):
                assert client.post(f"/predictions/chatty?n={n}", content=b"x").status_code == 200
            assert client.get("/ping").status_code == 200
            assert client.post("/predictions/nope", content=b"x").status_code == 404
        assert httpx.get(f"{server.management_url}/models", timeout=TIMEOUT).status_code == 200
    finally:
        server.stop()
    return work, server


def lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_logs_go_to_log_location_and_metrics_to_metrics_location_with_torchserve_names(served):
    work, _ = served
    assert sorted(p.name for p in (work / "logs").iterdir()) == [
        "access_log.log", "model_log.log", "ts_log.log"]
    assert sorted(p.name for p in (work / "metrics").iterdir()) == [
        "model_metrics.log", "ts_metrics.log"]


def test_the_access_log_has_one_line_per_request_in_torchserve_shape(served):
    work, _ = served
    logged = lines(work / "logs" / "access_log.log")
    expected = [*(f"POST /predictions/chatty?n={n} HTTP/1.1\" 200" for n in range(3)),
                'GET /ping HTTP/1.1" 200', 'POST /predictions/nope HTTP/1.1" 404',
                'GET /models HTTP/1.1" 200']
    assert len(logged) == len(expected), logged
    for request in expected:
        shape = re.compile(rf'{STAMP} - /127\.0\.0\.1:\d+ "{re.escape(request)} \d+')
        assert sum(bool(shape.fullmatch(line)) for line in logged) == 1, (request, logged)


def test_what_a_handler_prints_or_logs_is_in_model_log(served):
    work, _ = served
    logged = lines(work / "logs" / "model_log.log")

    def count(level: str, stream: str, message: str) -> int:
        shape = re.compile(rf"{STAMP} \[{level}\] W-9000-chatty_1\.0-{stream} MODEL_LOG - {message}")
        return sum(bool(shape.fullmatch(line)) for line in logged)

    assert count("INFO ", "stdout", "chatty loaded") == 1
    assert count("INFO ", "stdout", "chatty printed") == 3
    assert count("INFO ", "stdout", "chatty logged") == 3  # a worker logs to stdout, as TorchServe's
    assert count("WARN ", "stderr", "chatty wrote to stderr") == 3


def test_the_server_log_and_what_workers_print_are_in_ts_log(served):
    work, _ = served
    logged = (work / "logs" / "ts_log.log").read_text()
    assert re.search(rf"^{STAMP} \[INFO \] server-\d+ pyserve - listening: inference ", logged, re.MULTILINE)
    assert re.search(rf"^{STAMP} \[INFO \] W-9000-chatty_1\.0-stdout MODEL_LOG - chatty printed$",
                     logged, re.MULTILINE)


def test_the_foreground_console_log_is_on_stdout(served):
    work, server = served
    assert re.search(rf"^{STAMP} \[INFO \] server-\d+ pyserve - listening: inference ", server.log(), re.MULTILINE)
    assert "listening:" not in (work / "stderr.log").read_text()


def test_a_handler_metric_is_written_to_model_metrics_log(served):
    work, _ = served
    shape = re.compile(rf"{STAMP} - ChattyRequests\.Count:(\d+\.\d+)\|#ModelName:chatty,Level:Model"
                       rf"\|#hostname:{re.escape(socket.gethostname())},timestamp:\d+")
    counted = [shape.fullmatch(line) for line in lines(work / "metrics" / "model_metrics.log")]
    assert sum(float(found[1]) for found in counted if found) == 3


def test_every_frontend_process_writes_whole_access_log_lines(model_store, tmp_path):
    server = start_server(tmp_path, model_store, ["echo=echo.mar"], default_workers_per_model=1,
                          frontend_processes=2)
    try:
        for n in range(40):  # a connection each, spread over both frontends by the kernel
            response = httpx.post(f"{server.inference_url}/predictions/echo?n={n}", content=b"x",
                                  timeout=TIMEOUT)
            assert response.status_code == 200
    finally:
        server.stop()
    logged = lines(tmp_path / "logs" / "access_log.log")
    shape = re.compile(rf'{STAMP} - /127\.0\.0\.1:\d+ "POST /predictions/echo\?n=(\d+) HTTP/1\.1" 200 \d+')
    assert sorted(int(shape.fullmatch(line)[1]) for line in logged) == list(range(40))



def test_a_control_character_in_a_handler_metric_cannot_start_a_line():
    line = metric_line("2024-05-01T12:00:00,123", "Forged\nRequests2XX", "Count", 1,
                       [("Kind", "a\rb")], "host", 1714557600)
    assert line.count("\n") == 1 and line.endswith("\n")
    assert "Forged\\nRequests2XX.Count:1.0|#Kind:a\\rb|#hostname:host" in line
