"""What handlers record through context.metrics is merged in the worker and sent at most
every FLUSH_SECONDS, so a metric recorded on every batch costs the server one update per
interval, not one per batch."""

from __future__ import annotations

import time

import httpx

from pyserve.worker import metrics as worker_metrics
from pyserve.worker.metrics import Dimension, MetricsCache

from helpers import HANDLERS, archive_model, start_server, wait_until


def recorded(cache: MetricsCache) -> dict:
    return {(update[0], update[2]): update[5] for update in cache.drain(force=True)}


def test_counters_add_up_and_gauges_keep_their_last_value():
    cache = MetricsCache("m")
    for value in (1, 2, 3):
        cache.add_counter("Seen", value, None, [Dimension("Kind", "a")])
        cache.add_time("Took", value * 1.5)
    assert recorded(cache) == {("Seen", "counter"): 6.0, ("Took", "gauge"): 4.5}


def test_every_histogram_observation_is_kept():
    cache = MetricsCache("m")
    for value in (1, 2, 3):
        cache.add_metric("Sizes", value, "B", metric_type=worker_metrics.MetricTypes.HISTOGRAM)
    assert [update[5] for update in cache.drain(force=True)] == [1.0, 2.0, 3.0]


def test_updates_wait_until_flush_seconds_passed_since_the_last_drain():
    cache = MetricsCache("m")
    cache.add_counter("Seen", 1)
    assert cache.drain()  # the first goes at once
    cache.add_counter("Seen", 1)
    assert cache.drain() == [] and cache.pending
    time.sleep(worker_metrics.FLUSH_SECONDS)
    assert [update[5] for update in cache.drain()] == [1.0]
    assert not cache.pending


def test_what_a_busy_worker_recorded_arrives_once_it_is_idle(tmp_path):
    store = tmp_path / "store"
    archive_model(store, "probe", HANDLERS / "metrics_probe.py")
    server = start_server(tmp_path, store, ["probe=probe.mar"], default_workers_per_model=1)

    def probe_requests() -> float:
        text = httpx.get(f"{server.metrics_url}/metrics", params={"name[]": "ProbeRequests"}).text
        lines = [line for line in text.splitlines() if line.startswith("ProbeRequests{")]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    try:
        with httpx.Client(base_url=server.inference_url, timeout=30) as client:
            for _ in range(10):  # in well under FLUSH_SECONDS: most wait in the worker
                assert client.post("/predictions/probe", content=b"x").status_code == 200
        wait_until(lambda: probe_requests() == 10, timeout=10)
    finally:
        server.stop()
