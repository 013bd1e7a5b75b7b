"""What handlers record through ``context.metrics``, with TorchServe's MetricsCache API.

TorchServe prints each update to the worker's stdout for the frontend to parse; pyserve
keeps the updates and sends them to the server, so they reach the metrics API with no log
parsing. Updates are merged until they are sent (counters add up, a gauge keeps its last
value, every histogram observation is kept) and sent at most every FLUSH_SECONDS, with a
batch's results or on their own while the worker is idle: a handler that records something
on every batch costs the server one update per metric per interval, not one per batch.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Any

log = logging.getLogger("pyserve.worker")

FLUSH_SECONDS = 0.5


class MetricTypes(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Dimension:
    def __init__(self, name: str, value: str):
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def to_dict(self) -> dict:
        return {"Name": self.name, "Value": self.value}


class MetricsCacheError(ValueError):
    """A metric update that contradicts how the metric was declared."""


class Metric:
    """One metric family: its name, unit, type and dimension names; updates go to the cache."""

    def __init__(self, cache: "MetricsCache", name: str, unit: str, dimension_names: list[str],
                 metric_type: MetricTypes):
        self.metric_name = name
        self.unit = unit
        self.dimension_names = list(dimension_names)
        self.metric_type = metric_type
        self._cache = cache

    def add_or_update(self, value: float, dimension_values: list | None = None,
                      request_id: str = "") -> None:
        dimension_values = list(dimension_values or [])
        if len(dimension_values) != len(self.dimension_names):
            log.error("[METRICS] %s: dimension values %s do not match names %s",
                      self.metric_name, dimension_values, self.dimension_names)
            return
        if self.metric_type is MetricTypes.COUNTER and value < 0:
            log.error("[METRICS] %s: a counter cannot be incremented by %s", self.metric_name, value)
            return
        self._cache._record(self, value, [str(v) for v in dimension_values])

    def update(self, value: float, request_id: str = "", dimensions: list | None = None) -> None:
        """TorchServe's older entry point: dimensions as Dimension objects."""
        values = [d.value for d in dimensions] if dimensions else []
        self.add_or_update(value, values, request_id)


class MetricsCache:
    """TorchServe's MetricCacheAbstract interface; updates are drained per batch."""

    def __init__(self, model_name: str | None = None):
        self.model_name = model_name
        self.request_ids: dict[int, str] | None = None
        self.cache: dict[tuple[str, str], Metric] = {}
        # (name, unit, type, dimension names, dimension values) -> value, or the list of
        # observations of a histogram
        self._pending: dict[tuple, Any] = {}
        self._flushed = 0.0  # time.monotonic() of the last drain

    def set_request_ids(self, request_ids: dict[int, str]) -> None:
        self.request_ids = request_ids

    def _request_id(self, idx: int | None) -> str | None:
        if idx is not None and self.request_ids and idx in self.request_ids:
            return self.request_ids[idx]
        if isinstance(self.request_ids, dict):
            return ",".join(self.request_ids.values())
        return None

    def _default_dimensions(self, request_id: str | None, dimensions: list) -> list:
        dimensions = list(dimensions)
        names = {d.name for d in dimensions}
        if request_id is None:
            if "Level" not in names:
                dimensions.append(Dimension("Level", "Error"))
        else:
            if "ModelName" not in names:
                dimensions.append(Dimension("ModelName", self.model_name))
            if "Level" not in names:
                dimensions.append(Dimension("Level", "Model"))
        return dimensions

    def _update(self, name: str, value: float, unit: str, idx, dimensions, metric_type) -> None:
        request_id = self._request_id(idx)
        dimensions = self._default_dimensions(request_id, dimensions or [])
        metric = self._get_or_add(name, unit, dimensions, metric_type)
        metric.add_or_update(value, [d.value for d in dimensions], request_id or "")

    def add_metric(self, name: str, value: float, unit: str, idx=None, dimensions: list | None = None,
                   metric_type: MetricTypes = MetricTypes.COUNTER) -> None:
        self._update(name, value, unit, idx, dimensions, metric_type)

    def add_counter(self, name: str, value: float, idx=None, dimensions: list | None = None) -> None:
        self._update(name, value, "count", idx, dimensions, MetricTypes.COUNTER)

    def add_time(self, name: str, value: float, idx=None, unit: str = "ms",
                 dimensions: list | None = None, metric_type: MetricTypes = MetricTypes.GAUGE) -> None:
        if unit not in ("ms", "s"):
            raise MetricsCacheError("the unit for a timed metric should be one of ['ms', 's']")
        self._update(name, value, unit, idx, dimensions, metric_type)

    def add_size(self, name: str, value: float, idx=None, unit: str = "MB",
                 dimensions: list | None = None, metric_type: MetricTypes = MetricTypes.GAUGE) -> None:
        if unit not in ("MB", "kB", "GB", "B"):
            raise ValueError("The unit for size based metric is one of ['MB','kB', 'GB', 'B']")
        self._update(name, value, unit, idx, dimensions, metric_type)

    def add_percent(self, name: str, value: float, idx=None, dimensions: list | None = None,
                    metric_type: MetricTypes = MetricTypes.GAUGE) -> None:
        self._update(name, value, "percent", idx, dimensions, metric_type)

    def add_error(self, name: str, value: float, dimensions: list | None = None) -> None:
        dimensions = self._default_dimensions(None, dimensions or [])
        metric = self._get_or_add(name, "", dimensions, MetricTypes.COUNTER)
        metric.add_or_update(value, [d.value for d in dimensions])

    def get_metric(self, metric_name: str, metric_type: MetricTypes = MetricTypes.COUNTER) -> Metric:
        try:
            return self.cache[(metric_type.value, metric_name)]
        except KeyError:
            raise KeyError(f"Metric {metric_name} of type {metric_type} not found") from None

    def add_metric_to_cache(self, metric_name: str, unit: str, dimension_names: list | None = None,
                            metric_type: MetricTypes = MetricTypes.COUNTER) -> Metric:
        if not isinstance(metric_type, MetricTypes):
            raise MetricsCacheError(f"metric_type must be a MetricTypes, not {metric_type!r}")
        metric = Metric(self, metric_name, unit, list(dimension_names or []), metric_type)
        self.cache[(metric_type.value, metric_name)] = metric
        return metric

    def _get_or_add(self, name: str, unit: str, dimensions: list, metric_type: MetricTypes) -> Metric:
        metric = self.cache.get((metric_type.value, name))
        if metric is None:
            metric = self.add_metric_to_cache(name, unit, [d.name for d in dimensions], metric_type)
        return metric

    def _record(self, metric: Metric, value: float, dimension_values: list[str]) -> None:
        # All str, as the server checks them: a handler may name metrics with anything.
        key = (str(metric.metric_name), str(metric.unit), metric.metric_type.value,
               tuple(str(name) for name in metric.dimension_names), tuple(dimension_values))
        if metric.metric_type is MetricTypes.COUNTER:
            self._pending[key] = self._pending.get(key, 0.0) + float(value)
        elif metric.metric_type is MetricTypes.HISTOGRAM:
            self._pending.setdefault(key, []).append(float(value))
        else:
            self._pending[key] = float(value)

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def seconds_until_due(self) -> float:
        """How long pending updates may still wait; 0 once they are due."""
        return max(self._flushed + FLUSH_SECONDS - time.monotonic(), 0.0)

    def drain(self, force: bool = False) -> list[list[Any]]:
        """The merged updates, [name, unit, type, dim names, dim values, value] (one per
        histogram observation), if FLUSH_SECONDS passed since the last drain or `force`;
        otherwise nothing yet."""
        if not self._pending or not (force or self.seconds_until_due() == 0.0):
            return []
        updates = []
        for (name, unit, kind, names, values), value in self._pending.items():
            for observed in value if isinstance(value, list) else (value,):
                updates.append([name, unit, kind, list(names), list(values), observed])
        self._pending = {}
        self._flushed = time.monotonic()
        return updates
