"""Side by side: pyserve serving echo.mar against the bare uvicorn ceiling, in one run.

Both servers run at once; the same client drives each in turn, alternating rounds so
that drift in the machine's load hits both alike. Prints req/s, p50 and p99 for each and
the ratios. echo.mar is built with torch-model-archiver, as a user would.

    python benchmarks/echo_load.py [--duration 10] [--rounds 2] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from pyserve.bench.loadgen import LoadResult, generate_load
from pyserve.control import spawn_server

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("ceiling app exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("ceiling app did not start")


def start_pyserve(workdir: Path, workers: int) -> tuple[subprocess.Popen, int]:
    store = workdir / "store"
    store.mkdir()
    subprocess.run(
        ["torch-model-archiver", "--model-name", "echo", "--version", "1.0", "--handler",
         str(ROOT / "examples" / "echo" / "echo_handler.py"), "--export-path", str(store)],
        check=True,
    )
    port = free_port()
    config = workdir / "config.properties"
    config.write_text(f"inference_address=http://127.0.0.1:{port}\n"
                      f"default_workers_per_model={workers}\n"
                      "disable_token_authorization=true\n")
    log = open(workdir / "pyserve.log", "wb")
    process, report = spawn_server(
        ["--model-store", str(store), "--models", "echo=echo.mar", "--ts-config", str(config)],
        log=log, env=dict(os.environ, TMPDIR=str(workdir)),
    )
    if not report.startswith("ready"):
        raise RuntimeError(f"pyserve did not start: {report}")
    return process, port


def measure(url: str, connections: int, duration: float) -> LoadResult:
    return uvloop.run(generate_load(url, os.urandom(64), connections, duration=duration))


def summarize(results: list[LoadResult]) -> tuple[float, float, float]:
    return (
        statistics.median(r.rate for r in results),
        statistics.median(r.percentile(50) for r in results),
        statistics.median(r.percentile(99) for r in results),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per target and concurrency")
    parser.add_argument("--workers", type=int, default=1, help="pyserve workers for echo")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pyserve-bench-") as tmp:
        workdir = Path(tmp)
        pyserve, pyserve_port = start_pyserve(workdir, args.workers)
        ceiling_port = free_port()
        ceiling = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "ceiling_app.py"),
                                    str(ceiling_port)])
        try:
            wait_listening(ceiling_port, ceiling)
            targets = {
                "pyserve": f"http://127.0.0.1:{pyserve_port}/predictions/echo",
                "ceiling": f"http://127.0.0.1:{ceiling_port}/predictions/echo",
            }
            for url in targets.values():
                measure(url, 8, 1.0)  # warm up
            rows = []
            for connections in args.connections:
                results: dict[str, list[LoadResult]] = {name: [] for name in targets}
                for _ in range(args.rounds):
                    for name, url in targets.items():
                        result = measure(url, connections, args.duration)
                        if result.statuses.keys() - {200} or result.errors:
                            raise RuntimeError(f"{name}: {result.statuses}, errors {result.errors}")
                        results[name].append(result)
                rows.append((connections, {name: summarize(r) for name, r in results.items()}))
        finally:
            pyserve.terminate()
            ceiling.terminate()
            pyserve.wait(60)
            ceiling.wait(60)

    print(f"\necho, 64-byte bodies, {args.rounds} x {args.duration:.0f} s rounds per cell, "
          f"pyserve with {args.workers} worker(s), {os.cpu_count()} cores shared with the client")
    print(f"{'conns':>5} {'target':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for connections, cells in rows:
        for name, (rate, p50, p99) in cells.items():
            print(f"{connections:>5} {name:<8} {rate:>9.0f} {p50:>8.3f} {p99:>8.3f}")
        (rate_a, p50_a, p99_a), (rate_b, p50_b, p99_b) = cells["pyserve"], cells["ceiling"]
        print(f"{connections:>5} {'ratio':<8} {rate_a / rate_b:>9.2f} {p50_a / p50_b:>8.2f} "
              f"{p99_a / p99_b:>8.2f}   (pyserve / ceiling)")


if __name__ == "__main__":
    main()
