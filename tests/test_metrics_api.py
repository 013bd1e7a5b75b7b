"""The metrics API: Prometheus text with TorchServe's names, pyserve's own, and the handler's."""

from __future__ import annotations

import re

import httpx
import pytest

from helpers import HANDLERS, EXAMPLES, archive_model, start_server


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    work = tmp_path_factory.mktemp("metrics")
    store = work / "store"
    archive_model(store, "echo", EXAMPLES / "echo" / "echo_handler.py")
    archive_model(store, "probe", HANDLERS / "metrics_probe.py")
    server = start_server(work, store, ["echo=echo.mar", "probe=probe.mar"],
                          default_workers_per_model=1)
    try:
        with httpx.Client(base_url=server.inference_url, timeout=60) as client:
            for _ in range(5):
                client.post("/predictions/echo", content=b"x")
            client.post("/predictions/echo/1.0", content=b"x")
            client.post("/predictions/probe", content=b"x")
            client.post("/predictions/nope", content=b"x")
        response = httpx.get(f"{server.metrics_url}/metrics", timeout=60)
        filtered = httpx.get(f"{server.metrics_url}/metrics",
                             params={"name[]": "ts_inference_requests_total"}, timeout=60)
    finally:
        server.stop()
    return response, filtered


def value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if all(found.get(key) == wanted for key, wanted in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


def test_metrics_are_prometheus_text(scraped):
    response, _ = scraped
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_requests_are_counted_per_model_and_url_version(scraped):
    text = scraped[0].text
    assert value(text, "ts_inference_requests_total", model_name="echo", model_version="default") == 5
    assert value(text, "ts_inference_requests_total", model_name="echo", model_version="1.0") == 1


def test_latencies_are_summed_in_microseconds(scraped):
    text = scraped[0].text
    latency = value(text, "ts_inference_latency_microseconds", model_name="echo", model_version="default")
    queued = value(text, "ts_queue_latency_microseconds", model_name="echo", model_version="default")
    assert latency > queued > 0


def test_responses_are_counted_by_status_class(scraped):
    text = scraped[0].text
    assert value(text, "Requests2XX", Level="Host") == 7
    assert value(text, "Requests4XX", Level="Host") == 1


def test_batch_sizes_and_queue_depths_are_histograms(scraped):
    text = scraped[0].text
    assert value(text, "pyserve_batch_size_count", model_name="echo", model_version="1.0") == 6
    assert value(text, "pyserve_batch_size_sum", model_name="echo", model_version="1.0") == 6
    assert value(text, "pyserve_queue_depth_count", model_name="echo", model_version="1.0") == 6


def test_workers_are_counted_by_state(scraped):
    text = scraped[0].text
    assert value(text, "pyserve_workers", model_name="echo", state="ready") == 1
    assert value(text, "pyserve_worker_restarts_total", model_name="echo") == 0


def test_what_handlers_record_shows_up(scraped):
    text = scraped[0].text
    assert value(text, "ProbeRequests", ModelName="probe", Kind="probe", Level="Model") == 1
    assert value(text, "ProbeLatency", ModelName="probe", Level="Model") == 1.5
    assert value(text, "PredictionTime", ModelName="probe") >= 0


def test_name_filter_keeps_only_the_named_metrics(scraped):
    text = scraped[1].text
    assert "ts_inference_requests_total" in text
    assert "ts_inference_latency_microseconds" not in text


def test_enable_metrics_api_false_starts_no_metrics_listener(model_store, tmp_path):
    server = start_server(tmp_path, model_store, ["echo=echo.mar"], enable_metrics_api="false")
    try:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.metrics_url}/metrics", timeout=10)
        assert httpx.get(f"{server.inference_url}/ping", timeout=10).status_code == 200
    finally:
        server.stop()
