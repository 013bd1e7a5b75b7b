"""metrics_mode: which of TorchServe's metrics go to the metrics API, and which to
ts_metrics.log and model_metrics.log, in TorchServe's line shape.

As TorchServe 0.12 decides it (MetricBuilder): `log`, its default, writes every metric to the
files and serves none; `prometheus` serves every metric and writes none; `legacy` serves
ts_inference_requests_total, ts_inference_latency_microseconds and
ts_queue_latency_microseconds and writes the rest. pyserve's own families (pyserve_*) are
served in every mode. A line, after log4j2's `%d{ISO8601} - `:

    Requests2XX.Count:1.0|#Level:Host|#hostname:web-1,timestamp:1714557600

ts_metrics.log takes the frontend's metrics (request counters) and the system metrics,
model_metrics.log what handlers record through context.metrics. TorchServe writes a line per
request for each request counter; pyserve writes them once a second (COUNTERS_SECONDS), each
line carrying what that second added, so the values add up to the same totals and the
request path pays nothing for them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from decimal import Decimal
from pathlib import Path
from typing import Iterable

from pyserve.line_file import Clock, LineFile
from pyserve.logs import escape_control_characters
from pyserve.metrics import RequestStats, ServerMetrics, torchserve_unit
from pyserve.system_metrics import HOST, Sample, SystemMetrics

log = logging.getLogger("pyserve.metrics")

MODES = ("log", "prometheus", "legacy")
LEGACY_SERVED = frozenset({"ts_inference_requests_total", "ts_inference_latency_microseconds",
                           "ts_queue_latency_microseconds"})
TS_METRICS = "ts_metrics.log"
MODEL_METRICS = "model_metrics.log"
COUNTERS_SECONDS = 1.0
REQUEST_LABELS = ("model_name", "model_version")


def metrics_mode(value: str) -> str:
    """TorchServe's reading of metrics_mode: blanks dropped, any case; anything else is `log`,
    with an error logged."""
    mode = "".join(value.split()).lower()
    if mode in MODES:
        return mode
    log.error('Configured metrics mode "%s" not supported. Defaulting to "log" mode', value)
    return "log"


def served(mode: str, name: str) -> bool:
    """Whether TorchServe's metric `name` is on the metrics API in `mode` (else in the files)."""
    return mode == "prometheus" or (mode == "legacy" and name in LEGACY_SERVED)


def java_double(value: float) -> str:
    """`value` as Java's Double.toString writes it: 1.0, 0.25, 1.2345678E7, 1.0E-4."""
    value = float(value)
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return repr(value)  # Python's shortest repr, as Java's, and no exponent in this range
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    exponent += len(digits) - 1
    mantissa = "".join(map(str, digits)).rstrip("0") or "0"
    return f"{'-' if sign else ''}{mantissa[0]}.{mantissa[1:] or '0'}E{exponent}"


def metric_line(stamp: str, name: str, unit: str, value: float, dimensions: Iterable[tuple[str, str]],
                hostname: str, timestamp: int) -> str:
    """One line; handlers name their metrics and dimensions, so control characters are escaped."""
    dims = ",".join(f"{key}:{dim}" for key, dim in dimensions)
    line = f"{stamp} - {name}.{unit}:{java_double(value)}|#{dims}|#hostname:{hostname},timestamp:{timestamp}"
    return escape_control_characters(line) + "\n"


class MetricsLog:
    """One process's metric files, and `metrics` told which of its metrics are served.

    Every process that answers requests has one (the server and each frontend process) and
    writes its own request counters; only the server writes model metrics and system
    metrics (`model_metrics=True`)."""

    def __init__(self, metrics: ServerMetrics, mode: str, directory: Path, model_metrics: bool):
        self.metrics = metrics
        self.mode = mode
        self.clock = Clock()
        self.ts_metrics = LineFile(directory / TS_METRICS)
        self.model_metrics = LineFile(directory / MODEL_METRICS) if model_metrics else None
        self._responses_written: dict[str, int] = {}  # the counters as last written
        self._requests_written: dict[tuple[str, str], RequestStats] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        metrics.mode = mode
        metrics.log_handler_metrics = self.write_handler_metrics

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self.ts_metrics.start(self._loop)
        if self.model_metrics is not None:
            self.model_metrics.start(self._loop)
        if self.mode != "prometheus":
            self._timer = self._loop.call_later(COUNTERS_SECONDS, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.write_request_counters()
        self.ts_metrics.close()
        if self.model_metrics is not None:
            self.model_metrics.close()

    def _tick(self) -> None:
        self.write_request_counters()
        self._timer = self._loop.call_later(COUNTERS_SECONDS, self._tick)

    # -- what is written ----------------------------------------------------------------

    def write_request_counters(self) -> None:
        """What the request counters gained since they were last written, one line each."""
        metrics, now = self.metrics, time.time()
        stamp, timestamp, hostname = self.clock.stamp(now), int(now), metrics.hostname
        responses, requests = self._responses_written, self._requests_written
        for status_class, count in metrics.responses.items():
            added = count - responses.get(status_class, 0)
            if added:
                responses[status_class] = count
                self.ts_metrics.write(metric_line(stamp, f"Requests{status_class}", "Count", added,
                                                  HOST, hostname, timestamp))
        if self.mode == "legacy":
            return  # the request counters are served
        for key, stats in metrics.requests.items():
            last = requests.get(key) or RequestStats()
            if stats == last:
                continue
            requests[key] = RequestStats(stats.requests, stats.latency_us, stats.queue_latency_us)
            labels = tuple(zip(REQUEST_LABELS, key))
            for name, unit, added in (
                ("ts_inference_requests_total", "Count", stats.requests - last.requests),
                ("ts_inference_latency_microseconds", "Microseconds", stats.latency_us - last.latency_us),
                ("ts_queue_latency_microseconds", "Microseconds",
                 stats.queue_latency_us - last.queue_latency_us),
            ):
                if added:
                    self.ts_metrics.write(metric_line(stamp, name, unit, added, labels, hostname,
                                                      timestamp))

    def write_handler_metrics(self, updates: list) -> None:
        """A worker's context.metrics updates (see pyserve.worker.metrics), one line each."""
        if self.model_metrics is None:
            return
        now = time.time()
        stamp, timestamp, hostname = self.clock.stamp(now), int(now), self.metrics.hostname
        for name, unit, _kind, dimension_names, dimension_values, value in updates:
            self.model_metrics.write(metric_line(
                stamp, name, torchserve_unit(name, unit), value,
                zip(dimension_names, dimension_values), hostname, timestamp))

    def write_system_metrics(self, samples: list[Sample]) -> None:
        now = time.time()
        stamp, timestamp, hostname = self.clock.stamp(now), int(now), self.metrics.hostname
        for sample in samples:
            self.ts_metrics.write(metric_line(stamp, sample.name, sample.unit, sample.value,
                                              sample.dimensions, hostname, timestamp))


async def report_system_metrics(collector: SystemMetrics, interval: float, metrics_log: MetricsLog
                                ) -> None:
    """Collects the system metrics now and every `interval` seconds, off the event loop, into
    ts_metrics.log or, when they are served, the metrics API. Runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            samples = await loop.run_in_executor(None, collector.collect)
        except OSError as error:
            log.warning("cannot collect system metrics: %s", error)
        else:
            if served(metrics_log.mode, "CPUUtilization"):  # as every system metric
                metrics_log.metrics.system = samples
            else:
                metrics_log.write_system_metrics(samples)
        await asyncio.sleep(interval)
