"""metrics_mode, as TorchServe 0.12 reads it: `log` (the default) writes TorchServe's metrics to
ts_metrics.log and model_metrics.log, `prometheus` serves them on the metrics API, `legacy`
serves the three ts_inference_* counters and writes the rest. pyserve's own are always served."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from helpers import HANDLERS, archive_model, start_server, wait_until

from pyserve.config import load_settings
from pyserve.metrics_log import java_double, metrics_mode

TIMEOUT = 60
FRONTEND_METRICS = ("Requests2XX", "Requests4XX", "ts_inference_requests_total",
                    "ts_inference_latency_microseconds", "ts_queue_latency_microseconds")
REQUEST_COUNTERS = FRONTEND_METRICS[2:]
SYSTEM_METRICS = ("CPUUtilization", "MemoryUsed", "MemoryAvailable", "MemoryUtilization",
                  "DiskUsage", "DiskUtilization", "DiskAvailable")


class Run:
    """What a server in one metrics_mode served on its metrics API and wrote to its files."""

    def __init__(self, scraped: str, files: Path, log: str):
        self.scraped = scraped
        self.ts_metrics = (files / "ts_metrics.log").read_text()
        self.model_metrics = (files / "model_metrics.log").read_text()
        self.log = log

    def served(self, name: str) -> bool:
        return re.search(rf"^{name}(_total|_bucket)?[{{ ]", self.scraped, re.MULTILINE) is not None

    def written(self, name: str) -> bool:
        return re.search(rf" - {name}\.\w+:", self.ts_metrics + self.model_metrics) is not None


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("modes_store")
    archive_model(store, "chatty", HANDLERS / "chatty.py")
    return store


@pytest.fixture(scope="module")
def run_in(store, tmp_path_factory):
    """run_in(mode): a server in `mode` answered two predictions of chatty (whose handler
    records ChattyRequests) and one 404, had its system metrics collected, was scraped, then
    stopped. Each mode runs once per module."""
    runs: dict[str, Run] = {}

    def run(mode: str) -> Run:
        if mode not in runs:
            runs[mode] = _serve(store, tmp_path_factory.mktemp(f"mode_{mode}"), mode)
        return runs[mode]

    return run


def _serve(store: Path, work: Path, mode: str) -> Run:
    server = start_server(work, store, ["chatty=chatty.mar"], default_workers_per_model=1,
                          metrics_mode=mode, metric_time_interval=1)
    metrics = f"{server.metrics_url}/metrics"
    try:
        with httpx.Client(base_url=server.inference_url, timeout=TIMEOUT) as client:
            for _ in range(2):
                assert client.post("/predictions/chatty", content=b"x").status_code == 200
            assert client.post("/predictions/nope", content=b"x").status_code == 404
        model_metrics = work / "logs" / "model_metrics.log"
        wait_until(lambda: "ChattyRequests" in httpx.get(metrics, timeout=TIMEOUT).text
                   or "ChattyRequests" in model_metrics.read_text())
        wait_until(lambda: "CPUUtilization" in httpx.get(metrics, timeout=TIMEOUT).text
                   or "CPUUtilization" in (work / "logs" / "ts_metrics.log").read_text())
        scraped = httpx.get(metrics, timeout=TIMEOUT).text
    finally:
        server.stop()
    return Run(scraped, work / "logs", server.log())


# -- log ---------------------------------------------------------------------------------

def test_log_is_the_default_mode(tmp_path):
    (tmp_path / "config.properties").write_text("")
    assert load_settings(tmp_path / "config.properties", env={}).metrics_mode == "log"


def test_log_mode_writes_frontend_handler_and_system_metrics_to_the_files(run_in):
    run = run_in("log")
    for name in (*FRONTEND_METRICS, "ChattyRequests", *SYSTEM_METRICS):
        assert run.written(name), name


def test_log_mode_serves_none_of_torchserve_metrics(run_in):
    run = run_in("log")
    for name in (*FRONTEND_METRICS, "ChattyRequests", *SYSTEM_METRICS):
        assert not run.served(name), name


def test_log_mode_request_counters_add_up_to_the_requests(run_in):
    run = run_in("log")

    def total(name: str, dimensions: str) -> float:
        return sum(float(value) for value in re.findall(
            rf" - {name}\.Count:([\d.E]+)\|#{dimensions}\|#hostname:", run.ts_metrics))

    assert total("Requests2XX", "Level:Host") == 2
    assert total("Requests4XX", "Level:Host") == 1
    assert total("ts_inference_requests_total", "model_name:chatty,model_version:default") == 2


# -- prometheus --------------------------------------------------------------------------

def test_prometheus_mode_serves_frontend_handler_and_system_metrics(run_in):
    run = run_in("prometheus")
    for name in (*FRONTEND_METRICS, "ChattyRequests", *SYSTEM_METRICS):
        assert run.served(name), name


def test_prometheus_mode_writes_no_metric_lines(run_in):
    run = run_in("prometheus")
    assert run.ts_metrics == run.model_metrics == ""


def test_system_metrics_are_served_as_torchserve_gauges(run_in):
    scraped = run_in("prometheus").scraped
    assert "# HELP CPUUtilization Torchserve prometheus gauge metric with unit: Percent" in scraped
    assert "# TYPE MemoryUsed gauge" in scraped
    sample = re.search(r"^DiskAvailable\{(.*)\} \d", scraped, re.MULTILINE)
    assert sorted(re.findall(r'(\w+)="', sample[1])) == ["Hostname", "Level"]
    assert 'Level="Host"' in sample[1]


# -- legacy ------------------------------------------------------------------------------

def test_legacy_mode_serves_only_the_request_counters(run_in):
    run = run_in("legacy")
    for name in REQUEST_COUNTERS:
        assert run.served(name) and not run.written(name), name
    for name in ("Requests2XX", "ChattyRequests", *SYSTEM_METRICS):
        assert run.written(name) and not run.served(name), name


# -- every mode --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["log", "prometheus", "legacy"])
def test_pyserve_histograms_are_served_in_every_mode(run_in, mode):
    run = run_in(mode)
    for name in ("pyserve_batch_size", "pyserve_queue_depth", "pyserve_workers"):
        assert run.served(name), (mode, name)


def test_an_unknown_mode_is_log_mode_with_an_error(store, tmp_path):
    server = start_server(tmp_path, store, ["chatty=chatty.mar"], default_workers_per_model=1,
                          metrics_mode="promethus")
    try:
        assert httpx.post(f"{server.inference_url}/predictions/chatty", content=b"x",
                          timeout=TIMEOUT).status_code == 200
        scraped = httpx.get(f"{server.metrics_url}/metrics", timeout=TIMEOUT).text
    finally:
        server.stop()
    assert 'Configured metrics mode "promethus" not supported. Defaulting to "log" mode' in server.log()
    assert "ts_inference_requests_total" not in scraped
    assert "ts_inference_requests_total.Count:1.0" in (tmp_path / "logs" / "ts_metrics.log").read_text()


def test_the_mode_is_read_as_torchserve_reads_it():
    assert metrics_mode(" Prometheus ") == "prometheus"
    assert metrics_mode("LEGACY") == "legacy"


def test_values_are_written_as_java_writes_doubles():
    assert [java_double(v) for v in (1, 0.25, 5016.489, 12345678.0, 0.0001)] == [
        "1.0", "0.25", "5016.489", "1.2345678E7", "1.0E-4"]
