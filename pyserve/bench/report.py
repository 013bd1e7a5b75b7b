"""What a load run measured, summarised: errors first, then rates, latency percentiles, ratios.

Percentiles use the nearest-rank method on every recorded latency, so the max is a real
request's latency and p99 of 100 requests is the 99th slowest. A run whose requests failed
is flagged before its rate: fast error answers would otherwise read as a fast server.
"""

from __future__ import annotations

import functools
import math
from array import array
from dataclasses import dataclass, field

PERCENTILES = (50, 90, 99)


@dataclass
class RunResult:
    """One run against one target: what every engine returns."""

    target: str
    connections: int
    seconds: float
    latencies_ms: array
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    client_cpu_seconds: float | None = None

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @functools.cached_property
    def _ordered(self) -> list[float]:
        return sorted(self.latencies_ms)

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return math.nan
        rank = max(1, math.ceil(q / 100 * len(self._ordered)))
        return self._ordered[rank - 1]

    @property
    def failed(self) -> int:
        """Requests answered with a non-2xx status, plus requests that got no answer."""
        return sum(self.failures.values())

    @property
    def failures(self) -> dict[str, int]:
        """Failed requests by non-2xx status ("404") and by connection error ("connect")."""
        answered = {str(status): n for status, n in sorted(self.statuses.items())
                    if not 200 <= status < 300}
        return {**answered, **dict(sorted(self.errors.items()))}

    @property
    def attempts(self) -> int:
        """Requests answered, plus requests that got no answer."""
        return self.requests + sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        return self.failed / self.attempts if self.attempts else 1.0

    @property
    def all_failed(self) -> bool:
        return self.failed == self.attempts

    @property
    def outcome(self) -> str:
        if self.all_failed:
            return "all failed"
        return "some failed" if self.failed else "ok"


def verdict(result: RunResult) -> str | None:
    """One plain sentence on a run's failures; None when every request succeeded."""
    if result.attempts == 0:
        return "no request was sent"
    if not result.failed:
        return None
    counts = ", ".join(f"{kind}: {n:,}" for kind, n in result.failures.items())
    share = f"{result.failed:,} of {result.attempts:,}; {counts}"
    if result.all_failed:
        return f"every request failed ({share}): no throughput or latency to report"
    return f"{result.error_rate:.1%} of requests failed ({share})"


def merge(results: list[RunResult]) -> RunResult:
    """Several rounds against one target as one result (rounds of an interleaved comparison)."""
    first = results[0]
    latencies = array("d")
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    cpu = 0.0 if all(r.client_cpu_seconds is not None for r in results) else None
    for result in results:
        latencies.extend(result.latencies_ms)
        for status, n in result.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
        for kind, n in result.errors.items():
            errors[kind] = errors.get(kind, 0) + n
        if cpu is not None:
            cpu += result.client_cpu_seconds
    return RunResult(first.target, first.connections, sum(r.seconds for r in results), latencies,
                     statuses, errors, cpu)


def summary(result: RunResult) -> dict:
    """The JSON form of a result (`pyserve bench --json`): the outcome and errors come first,
    and a run where every request failed has no rate or latencies (null)."""
    described = {
        "target": result.target,
        "outcome": result.outcome,
        "error_rate": round(result.error_rate, 4),
        "statuses": {str(status): n for status, n in sorted(result.statuses.items())},
        "errors": dict(sorted(result.errors.items())),
        "connections": result.connections,
        "requests": result.requests,
        "seconds": round(result.seconds, 3),
        "requests_per_second": None if result.all_failed else round(result.rate, 1),
        "latency_ms": {f"p{q}": None if result.all_failed else round(result.percentile(q), 3)
                       for q in PERCENTILES},
    }
    described["latency_ms"]["max"] = (None if result.all_failed
                                      else round(max(result.latencies_ms), 3))
    if result.client_cpu_seconds is not None and result.requests:
        described["client_cpu_us_per_request"] = round(
            result.client_cpu_seconds / result.requests * 1e6, 2)
    return described


def ratios(target: RunResult, baseline: RunResult) -> dict:
    """target / baseline for throughput and latency percentiles (>1 req/s ratio: target faster)."""
    def ratio(a: float, b: float) -> float:
        return round(a / b, 3) if b else math.nan

    measured = {"requests_per_second": ratio(target.rate, baseline.rate)}
    for q in PERCENTILES:
        measured[f"p{q}"] = ratio(target.percentile(q), baseline.percentile(q))
    return measured
