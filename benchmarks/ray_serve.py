"""pyserve alone beside the same .mar served on Ray Serve (pyserve.ray), measured in one run.

echo.mar (examples/echo), one replica with one worker, 64 requests in flight, 64 B bodies:

- pyserve: `pyserve start`, one worker, the native load client (pyserve.bench);
- ray-proxy: Ray Serve's HTTP proxy in front of the pyserve deployment, same client;
- ray-handle: DeploymentHandle calls from this driver, 64 concurrent `.remote()` at a time;
- ray-direct: Ray Serve's direct ingress (RAY_SERVE_ENABLE_DIRECT_INGRESS=1, a second Ray
  session): the replica serves HTTP itself, no proxy; same client.

For each: req/s, p50/p99, the ratio to pyserve, and the CPU each process spent per request
(from /proc), which says where the time goes.

    python benchmarks/ray_serve.py [--duration 3] [--connections 64] [--no-direct]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

import servers

from pyserve.bench.loadgen import build_request, run_native
from pyserve.bench.report import RunResult
from pyserve.control import free_ports
from pyserve.processes import command_has, cpu_seconds, descendants

BODY = os.urandom(64)
CONTENT_TYPE = "application/octet-stream"
# The processes whose CPU is shown, by what their command line holds.
ROLES = {"proxy": b"ray::ProxyActor", "replica": b"ray::ServeReplica",
         "worker": b"pyserve.worker", "controller": b"ray::ServeController",
         "raylet+gcs": b"/ray/core/src/ray/"}


def role_cpu() -> dict[str, float]:
    pids = descendants(os.getpid())
    return {role: cpu_seconds([pid for pid in pids if command_has(pid, part)])
            for role, part in ROLES.items()}


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def listening_ports(pid: int) -> list[int]:
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                sockets.add(target[len("socket:["):-1])
    with open(f"/proc/{pid}/net/tcp") as table:
        return [int(fields[1].split(":")[1], 16) for fields in
                (line.split() for line in table.readlines()[1:])
                if fields[3] == "0A" and fields[9] in sockets]


class Measured:
    def __init__(self, name: str, rate: float, p50: float, p99: float, failed: int,
                 cpu_per_request: dict[str, float]):
        self.name, self.rate, self.p50, self.p99, self.failed = name, rate, p50, p99, failed
        self.cpu = cpu_per_request


def http_load(name: str, url: str, connections: int, duration: float,
              cpu=role_cpu) -> Measured:
    request = build_request(url, BODY, CONTENT_TYPE)
    run_native(url, request, connections, 1.0, None, 1, 30.0)  # warm up
    before = cpu()
    result: RunResult = run_native(url, request, connections, duration, None, 1, 30.0)
    spent = {role: seconds - before[role] for role, seconds in cpu().items()}
    spent["client"] = result.client_cpu_seconds
    requests = max(result.requests, 1)
    return Measured(name, result.rate, result.percentile(50), result.percentile(99),
                    result.failed, {role: s / requests * 1e6 for role, s in spent.items()})


async def _handle_run(handle, concurrency: int, duration: float) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    failed = 0
    deadline = time.perf_counter() + duration

    async def one_loop() -> None:
        nonlocal failed
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                await handle.predict.remote(BODY, CONTENT_TYPE)
            except Exception:  # noqa: BLE001 - counted, shown in the table
                failed += 1
                continue
            latencies.append((time.perf_counter() - sent) * 1000)

    await asyncio.gather(*(one_loop() for _ in range(concurrency)))
    return len(latencies), latencies, failed


def handle_load(handle, concurrency: int, duration: float) -> Measured:
    asyncio.run(_handle_run(handle, concurrency, 1.0))  # warm up
    before, client_before, started = role_cpu(), own_cpu(), time.perf_counter()
    answered, latencies, failed = asyncio.run(_handle_run(handle, concurrency, duration))
    elapsed = time.perf_counter() - started
    spent = {role: seconds - before[role] for role, seconds in role_cpu().items()}
    spent["client"] = own_cpu() - client_before
    latencies.sort()
    requests = max(answered, 1)
    return Measured("ray-handle", answered / elapsed, latencies[len(latencies) // 2],
                    latencies[int(len(latencies) * 0.99)], failed,
                    {role: s / requests * 1e6 for role, s in spent.items()})


def start_ray(work: Path, direct_ingress: bool):
    import ray
    from ray import serve

    from pyserve.ray import pyserve_app

    if direct_ingress:
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    # Ray puts the driver's working directory on its workers' sys.path: not a pyserve checkout.
    with contextlib.chdir(work):
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)
    port = free_ports(1)[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    handle = serve.run(pyserve_app(str(work / "echo.mar"), num_replicas=1, workers=1),
                       name="echo", route_prefix="/predictions/echo")
    return handle, f"http://127.0.0.1:{port}/predictions/echo"


def stop_ray() -> None:
    import ray

    ray.shutdown()  # the local cluster ray.init started, Serve with it (serve.shutdown waits 30 s)
    os.environ.pop("RAY_SERVE_ENABLE_DIRECT_INGRESS", None)


def direct_url() -> str:
    """The replica's own HTTP port under direct ingress (Ray allocates it from 30000)."""
    for pid in descendants(os.getpid()):
        if command_has(pid, ROLES["replica"]):
            for port in listening_ports(pid):
                if 30000 <= port < 31000:
                    return f"http://127.0.0.1:{port}/predictions/echo"
    raise RuntimeError("no replica listens for direct ingress")


def print_table(results: list[Measured]) -> None:
    base = results[0]
    roles = ["pyserve", *ROLES, "client"]
    print(f"\n{'target':<11} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'x pyserve':>9} "
          f"{'failed':>6}   CPU us/request: " + " ".join(f"{r:>10}" for r in roles))
    for result in results:
        print(f"{result.name:<11} {result.rate:>8,.0f} {result.p50:>8.2f} {result.p99:>8.2f} "
              f"{result.rate / base.rate:>9.3f} {result.failed:>6}                   "
              + " ".join(f"{result.cpu.get(r, 0.0):>10.0f}" for r in roles))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per target")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--no-direct", action="store_true", help="skip direct ingress")
    args = parser.parse_args()
    results: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="pyserve-ray-bench-") as temporary:
        work = Path(temporary)
        subprocess.run(["torch-model-archiver", "--model-name", "echo", "--version", "1.0",
                        "--handler", str(servers.ROOT / "examples" / "echo" / "echo_handler.py"),
                        "--export-path", str(work), "--force"], check=True)
        alone, started = servers.start_pyserve(work, work, ["echo=echo.mar"])
        try:
            alone.wait_first_prediction(started, "echo", BODY, CONTENT_TYPE)
            results.append(http_load("pyserve", alone.url("echo"), args.connections,
                                     args.duration, cpu=lambda: {"pyserve": alone.cpu_seconds()}))
        finally:
            alone.stop()
        handle, proxy_url = start_ray(work, direct_ingress=False)
        try:
            results.append(http_load("ray-proxy", proxy_url, args.connections, args.duration))
            results.append(handle_load(handle, args.connections, args.duration))
        finally:
            stop_ray()
        if not args.no_direct:
            start_ray(work, direct_ingress=True)
            try:
                results.append(http_load("ray-direct", direct_url(), args.connections,
                                         args.duration))
            finally:
                stop_ray()
    print(f"echo, 64 B bodies, {args.connections} in flight, {args.duration:g} s per target, "
          f"1 replica x 1 worker, {os.cpu_count()} cores shared by client, Ray and pyserve")
    print_table(results)


if __name__ == "__main__":
    main()
