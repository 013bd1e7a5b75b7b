"""pyserve beside the frontend ceiling and TorchServe 0.12.0, measured in one run.

Two archives made by torch-model-archiver from examples/: echo (a module-level handle that
returns the body) and mlp (TorchScript 64 -> 256 -> 10, batch_size 8, max_batch_delay 5).
Every server runs at once with one worker per model; the native load client
(pyserve.bench, epoll in C++) drives each in alternating rounds, so drift in the machine's
load hits all alike. pyserve runs twice: with its inference listener in the server process
(`pyserve`) and with `--frontends N` frontend processes (`pyserve-Nf`). Printed: cold start
and idle frontend memory, then per scenario req/s, p50/p99, client and server CPU per
request, the HTTP side's share of it (frontends and core thread), and the ratios the
targets are stated in. TorchServe joins when benchmarks/setup_torchserve.sh has installed it.

    python benchmarks/compare.py [--duration 5] [--rounds 2] [--frontends 2] [--no-torchserve]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import servers
from pyserve.bench.loadgen import build_request, json_floats, run_native
from pyserve.bench.report import RunResult, merge, ratios

ECHO_BODY = os.urandom(64)
MLP_BODY = json_floats(64)
LARGE_BODY = os.urandom(1 << 20)


@dataclass
class Scenario:
    name: str
    model: str
    body: bytes
    content_type: str
    connections: int
    targets: list[str]
    results: dict[str, RunResult] = field(default_factory=dict)
    server_cpu: dict[str, float] = field(default_factory=dict)
    http_cpu: dict[str, float] = field(default_factory=dict)


def scenarios(with_torchserve: bool, frontends: int) -> list[Scenario]:
    ts = ["torchserve"] if with_torchserve else []
    many = [f"pyserve-{frontends}f"] if frontends > 1 else []
    octets, json_type = "application/octet-stream", "application/json"
    return [
        Scenario("echo 64 B", "echo", ECHO_BODY, octets, 1, ["pyserve", *many, "ceiling", *ts]),
        Scenario("echo 64 B", "echo", ECHO_BODY, octets, 64, ["pyserve", *many, "ceiling", *ts]),
        Scenario("echo 1 MiB", "echo", LARGE_BODY, octets, 1, ["pyserve", "ceiling", *ts]),
        Scenario("mlp batched", "mlp", MLP_BODY, json_type, 1, ["pyserve", *ts]),
        Scenario("mlp batched", "mlp", MLP_BODY, json_type, 64, ["pyserve", *many, *ts]),
    ]


def run_scenario(scenario: Scenario, running: dict[str, servers.Server], duration: float,
                 rounds: int) -> None:
    rounds_of: dict[str, list[RunResult]] = {name: [] for name in scenario.targets}
    cpu: dict[str, float] = dict.fromkeys(scenario.targets, 0.0)
    http_cpu: dict[str, float] = dict.fromkeys(scenario.targets, 0.0)
    for name in scenario.targets:  # warm up: first batches, JIT, connection setup
        url = running[name].url(scenario.model)
        run_native(url, build_request(url, scenario.body, scenario.content_type),
                   scenario.connections, 1.0, None, 1, 30.0)
    for _ in range(rounds):
        for name in scenario.targets:
            server = running[name]
            url = server.url(scenario.model)
            request = build_request(url, scenario.body, scenario.content_type)
            before, http_before = server.cpu_seconds(), server.http_cpu_seconds()
            rounds_of[name].append(run_native(url, request, scenario.connections, duration,
                                              None, 1, 30.0))
            cpu[name] += server.cpu_seconds() - before
            http_cpu[name] += server.http_cpu_seconds() - http_before
    for name in scenario.targets:
        scenario.results[name] = merge(rounds_of[name])
        scenario.server_cpu[name] = cpu[name]
        scenario.http_cpu[name] = http_cpu[name]


def print_startup(running: dict[str, servers.Server]) -> None:
    print("\nstart-up (pyserve start / torchserve --start to the first 200 from echo; "
          "both models registered)")
    print(f"{'server':<11} {'cold start s':>12} {'idle frontend RSS MiB':>22}")
    for server in running.values():
        if server.name != "ceiling":
            print(f"{server.name:<11} {server.cold_start_seconds:>12.2f} "
                  f"{server.idle_rss_mib:>22.1f}")
    if "torchserve" in running:
        ours, theirs = running["pyserve"], running["torchserve"]
        print(f"{'ratio':<11} {ours.cold_start_seconds / theirs.cold_start_seconds:>12.2f} "
              f"{ours.idle_rss_mib / theirs.idle_rss_mib:>22.2f}   (pyserve / torchserve)")


def print_scenario(scenario: Scenario) -> None:
    print(f"\n{scenario.name}, {scenario.connections} connection(s)")
    print(f"{'target':<11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'client us/req':>14} "
          f"{'server us/req':>14} {'http us/req':>12} {'errors':>7}")
    for name, result in scenario.results.items():
        requests = max(result.requests, 1)
        print(f"{name:<11} {result.rate:>9,.0f} {result.percentile(50):>8.3f} "
              f"{result.percentile(99):>8.3f} {result.client_cpu_seconds / requests * 1e6:>14.1f} "
              f"{scenario.server_cpu[name] / requests * 1e6:>14.1f} "
              f"{scenario.http_cpu[name] / requests * 1e6:>12.1f} {result.failed:>7}")
    for ours in (name for name in scenario.results if name.startswith("pyserve")):
        for name, result in scenario.results.items():
            if not name.startswith("pyserve"):
                measured = ratios(scenario.results[ours], result)
                print(f"  {ours} / {name}: throughput {measured['requests_per_second']:.2f}x, "
                      f"p50 {measured['p50']:.2f}, p99 {measured['p99']:.2f}")


def wrk_check(url: str, duration: float, work: Path) -> None:
    """The same echo load from wrk, to show the native client is not what limits the rate."""
    script = work / "post.lua"
    script.write_text('wrk.method = "POST"\n'
                      f'wrk.body = string.rep("x", {len(ECHO_BODY)})\n'
                      'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    before = os.times()
    finished = subprocess.run(["wrk", "-t1", "-c64", f"-d{max(1, round(duration))}s", "-s",
                               str(script), url], capture_output=True, text=True, check=True)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system
                                                           - before.children_system)
    rate = next(float(line.split()[1]) for line in finished.stdout.splitlines()
                if line.startswith("Requests/sec"))
    print(f"\nwrk -t1 -c64 on pyserve echo: {rate:,.0f} req/s, client "
          f"{cpu / (rate * max(1, round(duration))) * 1e6:.1f} us/req")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per target and scenario")
    parser.add_argument("--frontends", type=int, default=2,
                        help="frontend processes of the second pyserve (1: run only one pyserve)")
    parser.add_argument("--no-torchserve", action="store_true",
                        help="leave TorchServe out even when it is installed")
    args = parser.parse_args()
    with_torchserve = not args.no_torchserve and servers.torchserve_installed()
    if not with_torchserve and not args.no_torchserve:
        print("TorchServe not installed (benchmarks/setup_torchserve.sh): pyserve and the "
              "ceiling only")

    with tempfile.TemporaryDirectory(prefix="pyserve-compare-") as temporary:
        work = Path(temporary)
        store = work / "store"
        store.mkdir()
        servers.build_archives(store)
        models = ["echo=echo.mar", "mlp=mlp.mar"]
        running: dict[str, servers.Server] = {}
        try:
            starters = [lambda: servers.start_pyserve(work, store, models)]
            if args.frontends > 1:
                starters.append(lambda: servers.start_pyserve(work, store, models, args.frontends))
            starters.append(lambda: servers.start_ceiling(work))
            if with_torchserve:
                starters.append(lambda: servers.start_torchserve(work, store, models))
            for start in starters:  # one at a time: cold starts do not share the cores
                server, started = start()
                running[server.name] = server
                server.wait_first_prediction(started, "echo", ECHO_BODY,
                                             "application/octet-stream")
            print_startup(running)
            print(f"\n{args.rounds} x {args.duration:g} s rounds per target, native client, "
                  f"1 worker per model, {os.cpu_count()} cores shared by client and servers")
            for scenario in scenarios(with_torchserve, args.frontends):
                run_scenario(scenario, running, args.duration, args.rounds)
                print_scenario(scenario)
            if shutil.which("wrk"):
                wrk_check(running["pyserve"].url("echo"), args.duration, work)
        finally:
            for server in running.values():
                server.stop()


if __name__ == "__main__":
    main()
