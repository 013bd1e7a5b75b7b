"""`pyserve bench TARGET`: how much a server sustains, measured from outside.

TARGET is a predictions URL, or a model archive that pyserve then serves for the run.
With --compare URL2 both targets are measured in the same run, in alternating rounds, so
that drift in the machine's load hits both alike, and the ratios are printed.

Failed requests (non-2xx answers, connection errors) are reported before the rate, and fail
the command (exit status 1); a target where every request failed has no rate or latencies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from pyserve.bench.loadgen import build_request, json_floats, run_native, run_python
from pyserve.bench.report import RunResult, merge, ratios, summary, verdict


def add_bench_parser(commands) -> None:
    bench = commands.add_parser(
        "bench", help="measure the throughput and latency a server sustains",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("target", help="predictions URL (http://host:port/predictions/MODEL), "
                                      "or a model archive (.mar, .tar.gz) to serve for the run")
    bench.add_argument("--compare", metavar="URL2",
                       help="a second predictions URL (or archive), measured in alternating "
                            "rounds in the same run; the ratios TARGET/URL2 are printed")
    bench.add_argument("-c", "--connections", type=int, default=64,
                       help="keep-alive connections, each with one request in flight (default 64)")
    amount = bench.add_mutually_exclusive_group()
    amount.add_argument("-d", "--duration", type=float,
                        help="seconds of load per target (default 10)")
    amount.add_argument("-n", "--requests", type=int, help="requests per target instead of a duration")
    bench.add_argument("--rounds", type=int, default=2,
                       help="rounds per target, alternating between targets (default 2)")
    bench.add_argument("--warmup", type=float, default=1.0,
                       help="seconds of unmeasured load per target first (default 1)")
    body = bench.add_mutually_exclusive_group()
    body.add_argument("--body-file", type=Path, help="send this file as every request's body")
    body.add_argument("--body-size", type=int, default=64,
                      help="send this many random bytes (default 64)")
    body.add_argument("--json-floats", type=int, metavar="N",
                      help="send a JSON list of N numbers (application/json), e.g. a model's input")
    bench.add_argument("--content-type",
                       help="Content-Type of the body (default: application/octet-stream, or "
                            "application/json with --json-floats)")
    bench.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                       help="an extra request header, e.g. 'Authorization: Bearer KEY' (repeatable)")
    bench.add_argument("--engine", choices=["native", "python"], default="native",
                       help="load engine: native (epoll, C++; default) or python (asyncio)")
    bench.add_argument("--threads", type=int, default=1,
                       help="threads of the native engine (default 1)")
    bench.add_argument("--timeout", type=float, default=30.0,
                       help="seconds before a request without an answer counts as an error")
    bench.add_argument("--workers", type=int,
                       help="workers per model when serving an archive given as TARGET")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.add_argument("--histogram", type=Path, metavar="FILE.png",
                       help="also draw the latency histogram into this PNG (needs matplotlib: "
                            "pip install 'pyserve[bench]')")
    bench.set_defaults(handler=run_bench)


def request_body(args: argparse.Namespace) -> tuple[bytes, str]:
    if args.body_file:
        try:
            return args.body_file.read_bytes(), args.content_type or "application/octet-stream"
        except OSError as error:
            raise SystemExit(f"--body-file: {error}") from None
    if args.json_floats:
        return json_floats(args.json_floats), args.content_type or "application/json"
    return os.urandom(args.body_size), args.content_type or "application/octet-stream"


def _headers(pairs: list[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        name, separator, value = pair.partition(":")
        if not separator:
            raise SystemExit(f"--header {pair!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    return headers


@contextlib.contextmanager
def _url(target: str, workers: int | None):
    if target.startswith("https://"):
        raise SystemExit(f"{target}: pyserve bench speaks plain HTTP/1.1; https is not supported")
    if target.startswith("http://"):
        yield target
        return
    from pyserve.bench.serving import served

    path = Path(target)
    if not path.exists():
        raise SystemExit(f"{target}: neither a URL nor an archive that exists")
    with served(path, workers) as url:
        yield url


class _Progress:
    """A rich progress bar over all rounds, when the output is a terminal."""

    def __init__(self, total_rounds: int, quiet: bool):
        self.bar = None
        if not quiet:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.fields[requests]:>9,} requests"),
                                TimeElapsedColumn(), transient=True)
            self.task = self.bar.add_task("load", total=total_rounds, requests=0)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def round(self, description: str):
        def update(completed: int) -> None:
            if self.bar:
                self.bar.update(self.task, description=description, requests=completed)

        return update

    def advance(self) -> None:
        if self.bar:
            self.bar.advance(self.task)


def run_bench(args: argparse.Namespace) -> int:
    if args.connections < 1 or args.rounds < 1:
        raise SystemExit("--connections and --rounds must be at least 1")
    if args.requests is not None and args.requests < args.rounds:
        raise SystemExit("--requests must be at least --rounds (each round sends some)")
    duration = None if args.requests else (args.duration or 10.0)
    body, content_type = request_body(args)
    headers = _headers(args.header)
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(_url(args.target, args.workers))]
        if args.compare:
            urls.append(stack.enter_context(_url(args.compare, args.workers)))
        requests = [build_request(url, body, content_type, headers) for url in urls]

        def measure(index: int, seconds: float | None, total: int | None,
                    progress=None) -> RunResult:
            if args.engine == "native":
                return run_native(urls[index], requests[index], args.connections, seconds, total,
                                  args.threads, args.timeout, progress)
            return run_python(urls[index], requests[index], args.connections, seconds, total,
                              progress)

        targets = range(len(urls))
        if args.warmup > 0:
            for target in targets:
                measure(target, args.warmup, None)
        rounds: list[list[RunResult]] = [[] for _ in targets]
        per_round = duration / args.rounds if duration else None
        quiet = args.json or not sys.stderr.isatty()
        with _Progress(args.rounds * len(urls), quiet) as progress:
            for index in range(args.rounds):
                for target in targets:
                    update = progress.round(f"round {index + 1}/{args.rounds} {urls[target]}")
                    total = _share(args.requests, args.rounds, index)
                    rounds[target].append(measure(target, per_round, total, update))
                    progress.advance()
    results = [merge(target_rounds) for target_rounds in rounds]
    report = {"results": [summary(result) for result in results]}
    if len(results) == 2 and not any(result.all_failed for result in results):
        report["ratios"] = ratios(results[0], results[1])
    if args.json:
        print(json.dumps(report, indent=2))
        for label, result in zip(LABELS, results):
            if verdict(result):
                print(f"pyserve bench: {label} {result.target}: {verdict(result)}", file=sys.stderr)
    else:
        _print_report(report, results)
    if args.histogram:
        from pyserve.bench.histogram import write_histogram

        print(write_histogram(results, args.histogram), file=sys.stderr)
    return 0 if all(result.outcome == "ok" for result in results) else 1


def _share(requests: int | None, rounds: int, index: int) -> int | None:
    """Round `index`'s part of --requests, so that the rounds add up to exactly that many."""
    if requests is None:
        return None
    return requests // rounds + (1 if index < requests % rounds else 0)


LABELS = ("target", "compare")


def _print_report(report: dict, results: list[RunResult]) -> None:
    """Failures first, then the table. Targets are labelled in the table and spelled out under
    it: URLs are too wide for a row."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    for label, result in zip(LABELS, results):
        if verdict(result):
            console.print(Text(f"{label}: {verdict(result)}", style="bold red"), soft_wrap=True)
    if not all(result.all_failed for result in results):
        table = Table(title="pyserve bench", box=None, padding=(0, 1), header_style="bold")
        for column in ("target", "conns", "requests", "failed", "req/s", "p50 ms", "p90 ms",
                       "p99 ms", "max ms"):
            table.add_column(column, justify="left" if column == "target" else "right")
        for label, result, described in zip(LABELS, results, report["results"]):
            table.add_row(label, str(result.connections), f"{result.requests:,}",
                          f"{result.error_rate:.1%}" if result.failed else "0",
                          *_rate_and_latencies(described))
        if "ratios" in report:
            measured = report["ratios"]
            table.add_row("ratio", "", "", "", f"{measured['requests_per_second']:.2f}",
                          f"{measured['p50']:.2f}", f"{measured['p90']:.2f}",
                          f"{measured['p99']:.2f}", "")
        console.print(table)
    for label, result in zip(LABELS, results):
        console.print(f"{label}: {result.target}", soft_wrap=True)
    if "ratios" in report:
        console.print("ratio: target / compare", soft_wrap=True)


def _rate_and_latencies(described: dict) -> list[str]:
    if described["requests_per_second"] is None:
        return ["-"] * 5
    latency = described["latency_ms"]
    return [f"{described['requests_per_second']:,.0f}",
            *(f"{latency[key]:.3f}" for key in ("p50", "p90", "p99", "max"))]
