"""Server metrics in Prometheus text format: TorchServe's names, then pyserve's own.

The request path only does integer arithmetic on plain objects; prometheus-client turns
them into text when /metrics is scraped. TorchServe's latency counters keep their exact
names (`ts_inference_latency_microseconds`), which prometheus-client would suffix with
`_total` as counters, so they are exposed untyped; `ts_inference_requests_total` is a
counter as in TorchServe.

What is served depends on metrics_mode (pyserve.metrics_log): `mode` names TorchServe's
families served here; the others go to the log files. pyserve's own are always served.

Requests are counted by the process that answers them. With several frontend processes the
server asks each for its `counters()` when scraped and adds them up (`render(others=...)`),
so a scrape shows the totals. Batch sizes and queue depths are counted by the core itself,
per model, with no call on the request path (`model_stats`).
"""

from __future__ import annotations

import bisect
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    UnknownMetricFamily,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUEUE_DEPTH_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
HANDLER_HISTOGRAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100,
                             250, 500, 1000, 2500, 5000, 10000)
# TorchServe's names for the units handlers pass (ts/metrics/unit.py); the metrics its
# metrics.yaml declares keep the unit written there.
UNITS = {"ms": "Milliseconds", "s": "Seconds", "percent": "Percent", "count": "Count",
         "MB": "Megabytes", "GB": "Gigabytes", "kB": "Kilobytes", "B": "Bytes", "": "unit"}
DECLARED_UNITS = {"HandlerTime": "ms", "PredictionTime": "ms"}


def torchserve_unit(name: str, unit: str) -> str:
    """The unit TorchServe shows for a handler's metric."""
    return DECLARED_UNITS.get(name) or UNITS.get(unit, unit)


class Buckets:
    """A histogram's counts, cheap to update on every request."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        total, rows = 0, []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts):
            total += count
            rows.append((bound, total))
        return rows


@dataclass
class RequestStats:
    """TorchServe's per-model request counters, labelled as TorchServe labels them."""

    requests: int = 0
    latency_us: float = 0.0
    queue_latency_us: float = 0.0


def from_core(bounds: tuple[float, ...], counts: list[int], total: int) -> Buckets:
    """The core's power-of-two counts (count i > 0 is of values in (2^(i-2), 2^(i-1)], count 0
    of zeros) in `bounds`, which are 0 and powers of two, so nothing is moved across a bound."""
    buckets = Buckets(bounds)
    for index, count in enumerate(counts):
        if count:
            upper = 0 if index == 0 else 1 << (index - 1)
            buckets.counts[bisect.bisect_left(bounds, upper)] += count
    buckets.sum = float(total)
    return buckets


@dataclass
class ModelStats:
    """What the core counted for one model version."""

    model_name: str
    model_version: str
    batch_sizes: list[int]
    batch_size_sum: int
    queue_depths: list[int]
    queue_depth_sum: int
    # hung up; withdrawn unrun: client gone, client timeout; answers dropped (_core.withdrawn)
    withdrawn: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass
class WorkerSummary:
    model_name: str
    model_version: str
    live: int
    ready: int
    restarts: int
    scale_ups: int = 0  # workers added by autoscaling (pyserve.engine.autoscale)
    scale_downs: int = 0


@dataclass
class _HandlerFamily:
    unit: str
    kind: str  # "counter", "gauge" or "histogram"
    label_names: tuple[str, ...]
    values: dict = field(default_factory=dict)


class ServerMetrics:
    def __init__(self, worker_summary: Callable[[], Iterable[WorkerSummary]] | None = None):
        self.hostname = socket.gethostname()
        self.responses = {"2XX": 0, "4XX": 0, "5XX": 0}
        self.requests: dict[tuple[str, str], RequestStats] = defaultdict(RequestStats)
        self.handler: dict[str, _HandlerFamily] = {}
        self.worker_summary = worker_summary
        self.model_stats: Callable[[], Iterable[ModelStats]] | None = None
        self.refresh: Callable[[], None] | None = None  # collects what waits to be counted
        self.mode = "prometheus"  # metrics_mode; see pyserve.metrics_log
        self.log_handler_metrics: Callable[[list], None] | None = None  # when they are not served
        self.system: list = []  # the latest system_metrics.Sample list, when they are served
        self._others: Iterable[dict] = ()  # other processes' counters, during render()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- recording ------------------------------------------------------------------

    def count_response(self, status: int) -> None:
        status_class = f"{status // 100}XX"
        if status_class in self.responses:
            self.responses[status_class] += 1

    def request_stats(self, model_name: str, version_label: str) -> RequestStats:
        """`version_label` is the version in the URL, or "default" (TorchServe's labels)."""
        return self.requests[model_name, version_label]

    def counters(self) -> dict:
        """This process's request counters, for the process that renders the totals."""
        return {
            "responses": dict(self.responses),
            "requests": [[name, version, stats.requests, stats.latency_us, stats.queue_latency_us]
                         for (name, version), stats in self.requests.items()],
        }

    def _totals(self) -> tuple[dict[str, int], dict[tuple[str, str], RequestStats]]:
        responses = dict(self.responses)
        requests = {key: RequestStats(s.requests, s.latency_us, s.queue_latency_us)
                    for key, s in self.requests.items()}
        for other in self._others:
            for status_class, count in other["responses"].items():
                responses[status_class] = responses.get(status_class, 0) + count
            for name, version, count, latency_us, queue_latency_us in other["requests"]:
                stats = requests.setdefault((name, version), RequestStats())
                stats.requests += count
                stats.latency_us += latency_us
                stats.queue_latency_us += queue_latency_us
        return responses, requests

    def record_handler_metrics(self, model, updates: list) -> None:
        """What a handler recorded through context.metrics; see pyserve.worker.metrics."""
        if self.mode != "prometheus":
            if self.log_handler_metrics is not None:
                self.log_handler_metrics(updates)
            return
        for name, unit, kind, dimension_names, dimension_values, value in updates:
            family = self.handler.get(name)
            label_names = (*dimension_names, "Hostname")
            if family is None:
                family = self.handler[name] = _HandlerFamily(unit, kind, label_names)
            elif family.label_names != label_names or family.kind != kind:
                continue  # Prometheus needs one label set and type per name: first one wins
            labels = (*dimension_values, self.hostname)
            if kind == "counter":
                family.values[labels] = family.values.get(labels, 0.0) + value
            elif kind == "histogram":
                family.values.setdefault(labels, Buckets(HANDLER_HISTOGRAM_BUCKETS)).observe(value)
            else:
                family.values[labels] = value

    # -- exposition -----------------------------------------------------------------

    def collect(self):
        served = self.mode == "prometheus"  # everything; legacy: the request counters only
        responses, requests = self._totals()
        if served:
            yield from self._response_families(responses)
        if served or self.mode == "legacy":
            yield from self._request_families(requests)
        if served:
            yield from self._handler_families()
            yield from self._system_families()
        yield from self._pyserve_families()

    def _response_families(self, responses: dict[str, int]):
        for status_class, count in responses.items():
            family = UnknownMetricFamily(
                f"Requests{status_class}", "Torchserve prometheus counter metric with unit: Count",
                labels=["Level", "Hostname"])
            family.add_metric(["Host", self.hostname], count)
            yield family

    def _request_families(self, requests_by_model: dict[tuple[str, str], RequestStats]):
        labels = ["model_name", "model_version", "hostname"]
        requests = CounterMetricFamily("ts_inference_requests",
                                       "Total number of inference requests.", labels=labels)
        latency = UnknownMetricFamily("ts_inference_latency_microseconds",
                                      "Cumulative inference duration in microseconds", labels=labels)
        queue = UnknownMetricFamily("ts_queue_latency_microseconds",
                                    "Cumulative queue duration in microseconds", labels=labels)
        for (model_name, version), stats in requests_by_model.items():
            values = [model_name, version, self.hostname]
            requests.add_metric(values, stats.requests)
            latency.add_metric(values, stats.latency_us)
            queue.add_metric(values, stats.queue_latency_us)
        yield from (requests, latency, queue)

    def _handler_families(self):
        for name, family in self.handler.items():
            help_text = (f"Torchserve prometheus {family.kind} metric with unit: "
                         f"{torchserve_unit(name, family.unit)}")
            labels = list(family.label_names)
            if family.kind == "histogram":
                metric = HistogramMetricFamily(name, help_text, labels=labels)
                for values, buckets in family.values.items():
                    metric.add_metric(list(values), buckets.cumulative(), buckets.sum)
            elif family.kind == "gauge":
                metric = GaugeMetricFamily(name, help_text, labels=labels)
                for values, value in family.values.items():
                    metric.add_metric(list(values), value)
            else:
                metric = UnknownMetricFamily(name, help_text, labels=labels)
                for values, value in family.values.items():
                    metric.add_metric(list(values), value)
            yield metric

    def _system_families(self):
        families: dict[str, GaugeMetricFamily] = {}
        for sample in self.system:
            family = families.get(sample.name)
            if family is None:
                family = families[sample.name] = GaugeMetricFamily(
                    sample.name, f"Torchserve prometheus gauge metric with unit: {sample.unit}",
                    labels=[*(name for name, _ in sample.dimensions), "Hostname"])
            family.add_metric([*(value for _, value in sample.dimensions), self.hostname],
                              sample.value)
        yield from families.values()

    def _pyserve_families(self):
        labels = ["model_name", "model_version"]
        sizes = HistogramMetricFamily("pyserve_batch_size", "Requests per batch sent to a worker.",
                                      labels=labels)
        depths = HistogramMetricFamily("pyserve_queue_depth",
                                       "Requests already queued for the model when one arrived.",
                                       labels=labels)
        hung_up = CounterMetricFamily(
            "pyserve_requests_hung_up",
            "Requests whose client hung up (HTTP) or cancelled the call (gRPC) before the answer.",
            labels=labels)
        withdrawn = CounterMetricFamily(
            "pyserve_requests_withdrawn",
            "Requests that left the queue without running because nobody waited for them any "
            "more: their client hung up, or they waited past clientTimeoutInMills.",
            labels=[*labels, "reason"])
        dropped = CounterMetricFamily(
            "pyserve_answers_dropped",
            "Answers not sent because their client hung up while the request ran.", labels=labels)
        for stats in self.model_stats() if self.model_stats else ():
            values = [stats.model_name, stats.model_version]
            batch_sizes = from_core(BATCH_SIZE_BUCKETS, stats.batch_sizes, stats.batch_size_sum)
            queue_depths = from_core(QUEUE_DEPTH_BUCKETS, stats.queue_depths, stats.queue_depth_sum)
            sizes.add_metric(values, batch_sizes.cumulative(), batch_sizes.sum)
            depths.add_metric(values, queue_depths.cumulative(), queue_depths.sum)
            gone, client_gone, client_timeout, answers_dropped = stats.withdrawn
            hung_up.add_metric(values, gone)
            withdrawn.add_metric([*values, "client_gone"], client_gone)
            withdrawn.add_metric([*values, "client_timeout"], client_timeout)
            dropped.add_metric(values, answers_dropped)
        yield from (sizes, depths, hung_up, withdrawn, dropped)
        if self.worker_summary is None:
            return
        workers = GaugeMetricFamily("pyserve_workers", "Worker processes of the model by state.",
                                    labels=[*labels, "state"])
        restarts = CounterMetricFamily("pyserve_worker_restarts",
                                       "Workers restarted after dying unexpectedly.", labels=labels)
        scale_events = CounterMetricFamily(
            "pyserve_worker_scale_events", "Workers added (up) or removed (down) by autoscaling.",
            labels=[*labels, "direction"])
        for summary in self.worker_summary():
            values = [summary.model_name, summary.model_version]
            workers.add_metric([*values, "ready"], summary.ready)
            workers.add_metric([*values, "starting"], summary.live - summary.ready)
            restarts.add_metric(values, summary.restarts)
            scale_events.add_metric([*values, "up"], summary.scale_ups)
            scale_events.add_metric([*values, "down"], summary.scale_downs)
        yield from (workers, restarts, scale_events)

    def render(self, names: list[str] | None = None, others: Iterable[dict] = ()) -> bytes:
        """The text exposition, `others` (counters() of other processes) added in; `names`
        (TorchServe's name[] filter) keeps only those families."""
        if self.refresh is not None:
            self.refresh()
        self._others = others
        try:
            if not names:
                return generate_latest(self.registry)
            wanted = set(names)
            selected = CollectorRegistry(auto_describe=False)
            families = [f for f in self.collect()
                        if f.name in wanted or any(s.name in wanted for s in f.samples)]
            selected.register(_Fixed(families))
            return generate_latest(selected)
        finally:
            self._others = ()


class _Fixed:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families
