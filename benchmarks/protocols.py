"""Every protocol side by side in one run: REST, gRPC (TorchServe's Predictions), KServe v2
JSON and v2 binary, on echo and on the batched MLP, at 64 requests in flight.

KServe v2 needs `service_envelope=kservev2`, which is server-wide and changes what REST
bodies mean, so two servers run at once: one plain (REST and gRPC), one with the envelope
(v2 JSON and binary), each serving both models with one worker each. The rows alternate
between them, so that each protocol meets the same machine. Echo gets 16 FP32 values (64 B),
the MLP 64 (its input).

    python benchmarks/protocols.py --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
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

PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
SIZES = {"echo": 16, "mlp": 64}


def values(model: str) -> list[float]:
    return [round((i % 97) / 97, 4) for i in range(SIZES[model])]


def v2_json(model: str) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [SIZES[model]], "datatype": "FP32",
                                   "data": values(model)}]}).encode()


def v2_binary(model: str) -> tuple[bytes, int]:
    header = json.dumps({"inputs": [{"name": "x", "shape": [SIZES[model]], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 4 * SIZES[model]}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + struct.pack(f"<{SIZES[model]}f", *values(model)), len(header)


def start(work: Path, store: Path, **config: object) -> tuple[servers.Server, int]:
    work.mkdir()
    (grpc_port,) = free_ports(1)
    port = servers.loopback_config(work / "config.properties", default_workers_per_model=1,
                                   grpc_inference_port=grpc_port, **config)
    with open(work / "pyserve.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", "pyserve", "start", "--foreground", "--model-store",
             str(store), "--ts-config", str(work / "config.properties"), "--models",
             "echo=echo.mar", "mlp=mlp.mar"],
            stdout=log, stderr=subprocess.STDOUT, cwd=work, env=dict(os.environ, TMPDIR=str(work)))
    return servers.Server("pyserve", process, port), grpc_port


async def grpc_load(port: int, model: str, body: bytes, concurrency: int,
                    duration: float) -> tuple[float, list[float], int]:
    """(seconds, latencies in ms, failures) of `concurrency` Predictions calls in flight."""
    request = inference_pb2.PredictionsRequest(model_name=model,
                                               input={"data": body}).SerializeToString()
    latencies: list[float] = []
    failed = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(PREDICTIONS)
        started = time.perf_counter()
        deadline = started + duration

        async def caller() -> None:
            nonlocal failed
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    await call(request)
                    latencies.append((time.perf_counter() - began) * 1000)
                except grpc.RpcError:
                    failed += 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, failed


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def row(label: str, seconds: float, latencies: list[float], failed: int) -> None:
    ordered = sorted(latencies)
    failures = f"  ({failed} failed)" if failed else ""
    print(f"{label:<22} {len(ordered) / seconds:>8.0f} {percentile(ordered, 50):>7.2f} "
          f"{percentile(ordered, 99):>7.2f}{failures}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per row")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="REST connections, and gRPC calls in flight")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyserve-protocols-") as temporary:
        work = Path(temporary)
        store = work / "store"
        store.mkdir()
        servers.build_archives(store)
        plain, grpc_port = start(work / "plain", store)
        envelope, _ = start(work / "kservev2", store, service_envelope="kservev2")
        try:
            for model in SIZES:
                body = json.dumps(values(model)).encode()
                plain.wait_first_prediction(time.perf_counter(), model, body, "application/json")
            envelope.wait_first_prediction(time.perf_counter(), "echo", v2_json("echo"),
                                           "application/json")
            print(f"{args.concurrency} in flight, {args.duration:g} s per row, "
                  f"{os.cpu_count()} cores shared by client and servers")
            for model in SIZES:
                body = json.dumps(values(model)).encode()
                rest = plain.url(model)
                infer = f"http://127.0.0.1:{envelope.inference_port}/v2/models/{model}/infer"
                binary, header_length = v2_binary(model)
                asyncio.run(grpc_load(grpc_port, model, body, args.concurrency, 1.0))  # warm up
                print(f"\n{model}, FP32[{SIZES[model]}]\n{'':<22} {'req/s':>8} {'p50 ms':>7} "
                      f"{'p99 ms':>7}")
                for label, url, request in (
                        ("REST", rest, build_request(rest, body, "application/json")),
                        ("KServe v2 JSON", infer, build_request(infer, v2_json(model),
                                                                "application/json")),
                        ("KServe v2 binary", infer, build_request(infer, binary, headers={
                            "Inference-Header-Content-Length": str(header_length)}))):
                    result = run_native(url, request, args.concurrency, args.duration, None, 1,
                                        30.0)
                    row(label, result.seconds, list(result.latencies_ms), result.failed)
                row("gRPC Predictions", *asyncio.run(
                    grpc_load(grpc_port, model, body, args.concurrency, args.duration)))
        finally:
            plain.stop()
            envelope.stop()


if __name__ == "__main__":
    main()
