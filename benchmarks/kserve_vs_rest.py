"""REST predictions against KServe v2 (JSON and binary tensors) on echo, side by side.

One pyserve with `service_envelope=kservev2` serves examples/echo, which then answers each
input tensor with its own data: the worker does the same work for all three, so the rows
differ only by what the frontend does. REST posts the v2 JSON request to
`/predictions/echo`, as TorchServe's own frontend takes it; v2 JSON posts it to
`/v2/models/echo/infer`, which checks the tensors and writes the response; v2 binary sends
the tensor as binary data and asks for the output as binary. A first row, from a pyserve
without an envelope, is plain REST echo of a body of the tensor's size, for scale.

    python benchmarks/kserve_vs_rest.py --duration 3 --connections 64
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import servers

from pyserve.bench.loadgen import build_request, run_native

ELEMENTS = 16  # FP32: 64 bytes of tensor data


def v2_json() -> bytes:
    data = [round(i / ELEMENTS, 4) for i in range(ELEMENTS)]
    return json.dumps({"inputs": [{"name": "x", "shape": [ELEMENTS], "datatype": "FP32",
                                   "data": data}]}).encode()


def v2_binary() -> tuple[bytes, int]:
    header = json.dumps({
        "inputs": [{"name": "x", "shape": [ELEMENTS], "datatype": "FP32",
                    "parameters": {"binary_data_size": 4 * ELEMENTS}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    data = struct.pack(f"<{ELEMENTS}f", *(i / ELEMENTS for i in range(ELEMENTS)))
    return header + data, len(header)


def archive_echo(store: Path) -> None:
    subprocess.run(["torch-model-archiver", "--model-name", "echo", "--handler",
                    str(servers.ROOT / "examples" / "echo" / "echo_handler.py"), "--version", "1.0",
                    "--export-path", str(store), "--force"], check=True)


def start(work: Path, store: Path, **config: object) -> servers.Server:
    work.mkdir()
    port = servers.loopback_config(work / "config.properties", default_workers_per_model=1,
                                   disable_token_authorization="true", **config)
    with open(work / "pyserve.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", "pyserve", "start", "--foreground", "--model-store",
             str(store), "--ts-config", str(work / "config.properties"), "--models",
             "echo=echo.mar"],
            stdout=log, stderr=subprocess.STDOUT, cwd=work, env=dict(os.environ, TMPDIR=str(work)))
    return servers.Server("pyserve", process, port)


def measure(label: str, url: str, request: bytes, args) -> None:
    result = run_native(url, request, args.connections, args.duration, None, 1, 30.0)
    failed = f"  ({result.failed} failed)" if result.failed else ""
    print(f"{label:<34} {result.rate:>8.0f} {result.percentile(50):>7.2f} "
          f"{result.percentile(99):>7.2f}{failed}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per row")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    body = v2_json()
    binary, header_length = v2_binary()
    with tempfile.TemporaryDirectory(prefix="pyserve-kserve-") as temporary:
        work = Path(temporary)
        store = work / "store"
        store.mkdir()
        archive_echo(store)
        print(f"{args.connections} connections, {args.duration:g} s each, echo, FP32[{ELEMENTS}]")
        print(f"{'':<34} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
        plain = start(work / "plain", store)
        try:
            url = plain.url("echo")
            plain.wait_first_prediction(time.perf_counter(), "echo", b"x",
                                        "application/octet-stream")
            measure("REST, no envelope, 64 B body", url,
                    build_request(url, os.urandom(4 * ELEMENTS)), args)
        finally:
            plain.stop()
        server = start(work / "kservev2", store, service_envelope="kservev2")
        try:
            rest = server.url("echo")
            infer = f"http://127.0.0.1:{server.inference_port}/v2/models/echo/infer"
            server.wait_first_prediction(time.perf_counter(), "echo", body, "application/json")
            measure("REST /predictions, v2 JSON body", rest,
                    build_request(rest, body, "application/json"), args)
            measure("KServe v2 JSON", infer, build_request(infer, body, "application/json"), args)
            measure("KServe v2 binary", infer, build_request(
                infer, binary, headers={"Inference-Header-Content-Length": str(header_length)}),
                args)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
