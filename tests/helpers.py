"""Shared test utilities: archives made with torch-model-archiver, live servers.

Every server in the tests is a real `pyserve` process on 127.0.0.1 that binds port 0 and
reports the ports it got on the same pipe `pyserve start` waits on: no port is picked first
and bound later, so tests never race other processes for one.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pyserve import _core, frames
from pyserve.control import listening_ports, spawn_server, stop_process, write_loopback_config
from pyserve.processes import alive as pid_alive  # noqa: F401 - the tests import it from here
from pyserve.processes import children, command_has

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HANDLERS = Path(__file__).resolve().parent / "handlers"  # test handlers, archived per test


def child_pids(pid: int) -> set[int]:
    """The processes a server started, but for its gRPC process (tests/test_grpc_inference.py
    follows that one): its workers, and its HTTP frontend processes if it has any."""
    return {child for child in children(pid) if not is_grpc_process(child)}


def is_grpc_process(pid: int) -> bool:
    return command_has(pid, b"pyserve.grpc.process")


@contextlib.contextmanager
def closed_port():
    """A loopback port nothing listens on, held (bound, never listening) until the block ends,
    so that no other process can start listening on it meanwhile."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def archive_model(
    export_path: Path,
    name: str,
    handler: str | Path,
    version: str = "1.0",
    extra: list[str] | None = None,
) -> Path:
    """Runs the real torch-model-archiver, exactly as a user would."""
    export_path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "torch-model-archiver", "--model-name", name, "--version", version,
            "--handler", str(handler), "--export-path", str(export_path), "--force",
            *(extra or []),
        ],
        check=True, capture_output=True,
    )
    return export_path / f"{name}.mar"


def archive_load_attempts(store: Path, name: str, yaml_text: str) -> None:
    """An archive of tests/handlers/load_attempts.py whose model-config yaml is `yaml_text`
    (it says how the handler's loads fail, and the model's retry and timeout settings)."""
    config = store.parent / f"{name}-config.yaml"
    config.write_text(yaml_text)
    archive_model(store, name, HANDLERS / "load_attempts.py", extra=["--config-file", str(config)])


def described_workers(api, model: str) -> list[dict]:
    """The workers GET /models/{model} describes."""
    return api.get(f"/models/{model}").json()[0]["workers"]


@dataclass
class Server:
    process: subprocess.Popen
    inference_port: int
    management_port: int
    metrics_port: int
    log_path: Path
    grpc_inference_port: int = 0
    grpc_management_port: int = 0

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def grpc_inference_target(self) -> str:
        return f"127.0.0.1:{self.grpc_inference_port}"

    @property
    def grpc_management_target(self) -> str:
        return f"127.0.0.1:{self.grpc_management_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        return stop_process(self.process, timeout)


def start_server(
    tmp_path: Path,
    model_store: Path,
    models: list[str],
    env: dict[str, str] | None = None,
    launcher: list[str] | None = None,
    **config: object,
) -> Server:
    """`pyserve start --foreground` on free ports; returns once it reports ready.

    Token authorization is off unless the caller sets disable_token_authorization itself, and
    metrics_mode is prometheus unless it sets metrics_mode (most tests read the metrics API).
    The log files go to `tmp_path/logs`. `launcher`: a command the server runs under (see
    control.spawn_server).
    """
    config_file = tmp_path / "config.properties"
    config.setdefault("metrics_mode", "prometheus")
    write_loopback_config(config_file, **config)
    log_path = tmp_path / "server.log"
    logs = tmp_path / "logs"
    arguments = ["--model-store", str(model_store), "--ts-config", str(config_file)]
    if models:
        arguments += ["--models", *models]
    with open(log_path, "wb") as log:
        process, report = spawn_server(
            arguments, log=log, env=dict(os.environ, TMPDIR=str(tmp_path), LOG_LOCATION=str(logs),
                                         METRICS_LOCATION=str(logs)) | (env or {}),
            cwd=tmp_path, launcher=launcher,
        )
    ports = listening_ports(report)
    server = Server(process, ports.get("inference", 0), ports.get("management", 0),
                    ports.get("metrics", 0), log_path, ports.get("grpc_inference", 0),
                    ports.get("grpc_management", 0))
    if not report.startswith("ready"):
        server.stop()
        raise RuntimeError(f"server did not start: {report!r}\n{server.log()}")
    return server


def wait_until(condition, timeout: float = 60.0) -> None:
    """Polls `condition` until it holds; fails the test if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def take_from(core, until, timeout: float = 10.0) -> tuple[list, list]:
    """A core's (replies, events), waiting on its notify fd until `until(replies, events)` holds;
    replies are unpacked."""
    replies: list = []
    events: list = []
    deadline = time.monotonic() + timeout
    while not until(replies, events):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; got {replies} {events}"
        if select.select([core.notify_fd], [], [], remaining)[0]:
            taken_replies, taken_events = core.take()
            replies += [frames.unpack(reply) for reply in taken_replies]
            events += taken_events
    return replies, events


def results_in(replies: list) -> list:
    """Every result of the REPLY frames among `replies`."""
    return [result for reply in replies if reply[0] == frames.REPLY for result in reply[2]]


@contextlib.contextmanager
def core_under_test(ring_capacity: int = 1 << 20):
    """A _core.Core, closed afterwards."""
    core = _core.Core(ring_capacity)
    try:
        yield core
    finally:
        core.close()


def channel_fds(fds) -> list[int]:
    """Copies of a channel's descriptors for the test's end: the core keeps its own."""
    return [os.dup(fd) for fd in fds]


class RingWorker:
    """The worker's side of a core's channel, played by the test."""

    def __init__(self, core, worker_id: int, model_id: int = 1):
        self.core = core
        self.id = worker_id
        fds = core.add_worker(worker_id, model_id, frames.encode_load({}))
        self.channel = _core.WorkerChannel(*channel_fds(fds))
        self.withdrawn: list[int] = []  # the request ids of the withdraw frames read
        assert frames.unpack(self.channel.receive(timeout=5))[0] == frames.LOAD

    def load(self) -> None:
        self.channel.send(frames.encode_loaded({"pid": os.getpid()}))
        take_from(self.core, lambda replies, events: any(
            kind == frames.LOADED and worker == self.id for worker, kind, _ in events))

    def next_batch(self, timeout: float = 5.0):
        """(batch id, request ids) of the next batch; withdraw frames on the way are noted."""
        while True:
            frame = self.channel.receive(timeout=timeout)
            if frame is None:
                return None
            frame = frames.unpack(frame)
            if frame[0] != frames.WITHDRAW:
                break
            self.withdrawn.append(frame[1])
        kind, batch_id, requests = frame
        assert kind == frames.BATCH
        return batch_id, [request["id"] for request in requests]

    def answer(self, batch_id: int, ids: list[int], done: bool = True) -> None:
        results = [[id, 200, "", None, [], b"ok"] for id in ids]
        assert self.channel.send(frames.encode_results(batch_id, done, results)) == _core.WRITTEN


def loaded_worker(core, worker_id: int = 1, model_id: int = 1) -> RingWorker:
    worker = RingWorker(core, worker_id, model_id)
    worker.load()
    return worker


class HttpReader:
    """Reads HTTP/1.1 responses off a raw socket, one at a time (Content-Length framed), for
    tests that speak HTTP byte by byte."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes] | None:
        """(status, headers, body), or None when the server closed before answering."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                assert not self.buffer, f"connection closed mid-response: {self.buffer[:200]!r}"
                return None
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            assert self._fill(), "connection closed mid-body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def closed(self) -> bool:
        """True when the server closes the connection with nothing more to read."""
        return not self.buffer and not self._fill()


async def whole_body(receive) -> bytes | None:
    """An ASGI request's whole body, for the small apps tests serve; None if the client left."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)
