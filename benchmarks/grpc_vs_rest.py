"""gRPC Predictions against REST predictions on echo, side by side: what each costs the server.

One pyserve serves examples/echo with one worker. REST is driven by pyserve's native load
client (64 keep-alive connections); gRPC by a grpc.aio client in this process (64 calls in
flight on one channel, each request serialized once beforehand, so that the client spends
as little as it can). Both send 64 random bytes. The CPU time of the server process (its
event loop, which serves HTTP, and the core thread), of the gRPC process
(pyserve.grpc.process) and of the worker is read from /proc around each run and divided by
the requests served: CPU per request is what the protocol costs, whatever rate the client
reaches on a shared machine.

    python benchmarks/grpc_vs_rest.py --duration 3 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import servers

from pyserve.bench.loadgen import build_request, run_native
from pyserve.control import free_ports
from pyserve.grpc.protos import inference_pb2
from pyserve.processes import command_has, cpu_seconds, descendants

PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
BODY_SIZE = 64


def start(work: Path, store: Path) -> tuple[servers.Server, int]:
    (grpc_port,) = free_ports(1)
    port = servers.loopback_config(work / "config.properties", default_workers_per_model=1,
                                   grpc_inference_port=grpc_port)
    with open(work / "pyserve.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", "pyserve", "start", "--foreground", "--model-store",
             str(store), "--ts-config", str(work / "config.properties"), "--models",
             "echo=echo.mar"],
            stdout=log, stderr=subprocess.STDOUT, cwd=work, env=dict(os.environ, TMPDIR=str(work)))
    return servers.Server("pyserve", process, port), grpc_port


async def grpc_load(port: int, body: bytes, concurrency: int, duration: float) -> tuple[int, int]:
    """(answers, failures) of `concurrency` Predictions calls kept in flight for `duration` s."""
    request = inference_pb2.PredictionsRequest(model_name="echo",
                                               input={"data": body}).SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(PREDICTIONS)  # bytes in, bytes out: no client-side protobuf
        deadline = time.monotonic() + duration
        answered = failed = 0

        async def caller() -> None:
            nonlocal answered, failed
            while time.monotonic() < deadline:
                try:
                    await call(request)
                    answered += 1
                except grpc.RpcError:
                    failed += 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return answered, failed


def measured(server: servers.Server, run) -> tuple[float, int, int, list[float]]:
    """(seconds, answers, failures, CPU s of the server process, the gRPC process and the
    worker) of one run."""
    below = [pid for pid in descendants(server.process.pid) if pid != server.process.pid]
    grpc_process = [pid for pid in below if command_has(pid, b"pyserve.grpc.process")]
    groups = [[server.process.pid], grpc_process, [pid for pid in below if pid not in grpc_process]]
    before = [cpu_seconds(pids) for pids in groups]
    started = time.perf_counter()
    answered, failed = run()
    seconds = time.perf_counter() - started
    return seconds, answered, failed, [cpu_seconds(pids) - was for pids, was in zip(groups, before)]


def report(label: str, row: tuple[float, int, int, list[float]]) -> None:
    seconds, answered, failed, cpu = row
    failures = f"  ({failed} failed)" if failed else ""
    per_request = "".join(f" {used * 1e6 / answered:>8.1f}" for used in cpu)
    print(f"{label:<24} {answered / seconds:>7.0f}{per_request}{failures}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="REST connections, and gRPC calls in flight")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternating")
    args = parser.parse_args()
    body = os.urandom(BODY_SIZE)
    with tempfile.TemporaryDirectory(prefix="pyserve-grpc-") as temporary:
        work = Path(temporary)
        store = work / "store"
        store.mkdir()
        subprocess.run(["torch-model-archiver", "--model-name", "echo", "--handler",
                        str(servers.ROOT / "examples" / "echo" / "echo_handler.py"), "--version",
                        "1.0", "--export-path", str(store), "--force"], check=True)
        server, grpc_port = start(work, store)
        try:
            server.wait_first_prediction(time.perf_counter(), "echo", body, "application/octet-stream")
            url = server.url("echo")
            request = build_request(url, body)

            def rest() -> tuple[int, int]:
                result = run_native(url, request, args.concurrency, args.duration, None, 1, 30.0)
                return result.requests, result.failed

            def grpc_run() -> tuple[int, int]:
                return asyncio.run(grpc_load(grpc_port, body, args.concurrency, args.duration))

            grpc_run()  # warms up the channel and the server's gRPC side
            print(f"echo, {BODY_SIZE} B, {args.concurrency} in flight, {args.duration:g} s per run, "
                  f"{os.cpu_count()} cores shared by client and server")
            print(f"{'CPU us per request:':<24} {'req/s':>7} {'server':>8} {'gRPC':>8} {'worker':>8}")
            for _ in range(args.rounds):
                report("REST (pyserve bench)", measured(server, rest))
                report("gRPC Predictions (aio)", measured(server, grpc_run))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
