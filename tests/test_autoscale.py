"""Workers that scale themselves between minWorkers and maxWorkers (pyserve.engine.autoscale).

The policy is driven with explicit samples and times; a server then follows a load step
on a slow model, and every request sent meanwhile is answered.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import HANDLERS, archive_model, start_server, wait_until
from pyserve.config import Settings, load_settings
from pyserve.engine.autoscale import AutoscaleConfig, Autoscaler, Sample, autoscaled, expected_wait
from pyserve.engine.loading import autoscale_config
from pyserve.engine.models import ModelConfig, ModelVersion, SequenceConfig

CONFIG = AutoscaleConfig(up_queue_ms=100, up_sustain_sec=2, down_idle_sec=10,
                         down_busy_percent=30, cooldown_sec=5)


def waiting(at: float, workers: int = 1, seconds: float = 1.0, loading: int = 0) -> Sample:
    """Requests queue and could expect to wait `seconds`."""
    return Sample(at=at, workers=workers, loading=loading, waiting=5, expected_wait=seconds, busy=1.0)


def quiet(at: float, workers: int = 2, busy: float = 0.0) -> Sample:
    return Sample(at=at, workers=workers, loading=0, waiting=0, expected_wait=0.0, busy=busy)


def run(autoscaler: Autoscaler, samples: list[Sample], min_workers: int = 1,
        max_workers: int = 4, config: AutoscaleConfig = CONFIG) -> list[int]:
    return [autoscaler.decide(sample, config, min_workers, max_workers) for sample in samples]


def ticks(start: float, end: float, step: float = 0.5) -> list[float]:
    return [start + i * step for i in range(int((end - start) / step) + 1)]


# -- scaling up -------------------------------------------------------------------------

def test_a_worker_is_added_once_requests_have_waited_past_the_threshold_for_the_sustain_period():
    decisions = run(Autoscaler(), [waiting(t) for t in ticks(0, 2)])
    assert decisions == [1, 1, 1, 1, 2]  # the fifth sample is 2 s after the first


def test_a_wait_shorter_than_the_sustain_period_adds_no_worker():
    autoscaler = Autoscaler()
    samples = [waiting(0), waiting(1), quiet(1.5, workers=1, busy=1.0), waiting(2), waiting(3.5)]
    assert run(autoscaler, samples) == [1, 1, 1, 1, 1]


def test_a_wait_below_the_up_threshold_adds_no_worker():
    assert run(Autoscaler(), [waiting(t, seconds=0.09) for t in ticks(0, 10)]) == [1] * 21


def test_no_worker_is_added_while_one_is_loading():
    autoscaler = Autoscaler()
    assert run(autoscaler, [waiting(t, workers=2, loading=1) for t in ticks(0, 5)]) == [2] * 11
    assert run(autoscaler, [waiting(t, workers=2) for t in ticks(5.5, 7.5)]) == [2, 2, 2, 2, 3]


def test_each_further_worker_needs_its_own_sustain_period():
    autoscaler = Autoscaler()
    assert run(autoscaler, [waiting(t) for t in ticks(0, 2)])[-1] == 2
    autoscaler.moved(+1, 2)
    assert run(autoscaler, [waiting(t, workers=2) for t in ticks(2.5, 4)]) == [2, 2, 2, 2]
    assert run(autoscaler, [waiting(4.5, workers=2)]) == [3]


def test_the_count_never_rises_above_max_workers():
    assert run(Autoscaler(), [waiting(t, workers=3) for t in ticks(0, 30)], max_workers=3) == [3] * 61


def test_requests_that_wait_with_no_batch_taken_at_all_count_as_waiting_for_ever():
    assert expected_wait(waiting=3, taken=0, seconds=1.0) == math.inf


def test_the_expected_wait_is_the_waiting_requests_over_the_rate_they_are_taken():
    assert expected_wait(waiting=10, taken=20, seconds=2.0) == 1.0
    assert expected_wait(waiting=0, taken=0, seconds=2.0) == 0.0


# -- scaling down -----------------------------------------------------------------------

def test_a_worker_is_removed_after_the_quiet_period():
    decisions = run(Autoscaler(), [quiet(t, busy=0.1) for t in ticks(0, 10)])
    assert decisions == [2] * 20 + [1]


def test_busy_workers_are_kept_though_nothing_waits():
    assert run(Autoscaler(), [quiet(t, busy=0.5) for t in ticks(0, 30)]) == [2] * 61


def test_a_request_waiting_restarts_the_quiet_period():
    autoscaler = Autoscaler()
    samples = [quiet(t) for t in ticks(0, 9)] + [waiting(9.5, workers=2, seconds=0.01)]
    assert set(run(autoscaler, samples)) == {2}
    assert run(autoscaler, [quiet(t) for t in ticks(10, 19.5)]) == [2] * 20
    assert run(autoscaler, [quiet(20)]) == [1]


def test_the_count_never_falls_below_min_workers():
    assert run(Autoscaler(), [quiet(t, workers=2) for t in ticks(0, 60)], min_workers=2) == [2] * 121


def test_the_last_worker_is_kept_even_when_min_workers_is_zero():
    assert run(Autoscaler(), [quiet(t, workers=1) for t in ticks(0, 60)], min_workers=0) == [1] * 121


# -- hysteresis -------------------------------------------------------------------------

def test_no_scale_down_follows_a_scale_up_within_the_cooldown():
    autoscaler = Autoscaler()
    config = AutoscaleConfig(up_queue_ms=100, up_sustain_sec=1, down_idle_sec=1,
                             down_busy_percent=30, cooldown_sec=5)
    autoscaler.moved(+1, 0)
    assert run(autoscaler, [quiet(t) for t in ticks(0.5, 4.5)], config=config) == [2] * 9
    assert run(autoscaler, [quiet(5)], config=config) == [1]


def test_no_scale_up_follows_a_scale_down_within_the_cooldown():
    autoscaler = Autoscaler()
    autoscaler.moved(-1, 0)
    assert run(autoscaler, [waiting(t) for t in ticks(0.5, 4.5)]) == [1] * 9
    assert run(autoscaler, [waiting(5)]) == [2]


def test_an_explicit_scale_call_holds_the_autoscaler_for_a_cooldown_either_way():
    up, down = Autoscaler(), Autoscaler()
    up.scaled_explicitly(0)
    down.scaled_explicitly(0)
    assert run(up, [waiting(t) for t in ticks(0.5, 4.5)]) == [1] * 9
    assert run(down, [quiet(t) for t in ticks(0.5, 4.5)]) == [2] * 9


def test_moves_are_counted_by_direction():
    autoscaler = Autoscaler()
    autoscaler.moved(+1, 0)
    autoscaler.moved(+1, 1)
    autoscaler.moved(-1, 2)
    assert (autoscaler.scale_ups, autoscaler.scale_downs) == (2, 1)
    assert autoscaler.last_scale_up is not None and autoscaler.last_scale_down is not None


# -- when it is on, and its settings ------------------------------------------------------

def model_with(config: ModelConfig) -> ModelVersion:
    return ModelVersion(name="m", version="1.0", url="m.mar", model_dir=Path("."), manifest={},
                        handler="h", config=config, core_id=1, extracted=False)


def test_autoscaling_is_off_when_min_workers_equals_max_workers():
    assert not autoscaled(model_with(ModelConfig(min_workers=2, max_workers=2)))
    assert autoscaled(model_with(ModelConfig(min_workers=1, max_workers=3)))


def test_autoscaling_is_off_for_a_stateful_model():
    sequence = SequenceConfig(max_idle=1000)
    assert not autoscaled(model_with(ModelConfig(min_workers=1, max_workers=3, sequence=sequence)))


def test_the_model_config_yaml_overrides_the_server_defaults():
    settings = Settings(autoscale_down_idle_sec=45)
    config = autoscale_config({"autoscaleUpQueueMs": 250, "autoscaleCooldownSec": 0.5}, settings)
    assert config == AutoscaleConfig(up_queue_ms=250, up_sustain_sec=3, down_idle_sec=45,
                                     down_busy_percent=30, cooldown_sec=0.5)


def test_a_yaml_value_out_of_range_falls_back_to_the_server_default():
    config = autoscale_config({"autoscaleDownBusyPercent": 150, "autoscaleUpSustainSec": -1,
                               "autoscaleDownIdleSec": True}, Settings())
    assert (config.down_busy_percent, config.up_sustain_sec, config.down_idle_sec) == (30, 3, 60)


def test_config_properties_sets_the_server_defaults(tmp_path):
    path = tmp_path / "config.properties"
    path.write_text("autoscale_up_queue_ms=50\nautoscale_down_idle_sec=2.5\n")
    settings = load_settings(path, env={})
    assert (settings.autoscale_up_queue_ms, settings.autoscale_down_idle_sec) == (50, 2.5)


# -- a server under a load step ---------------------------------------------------------

SLOW_SECONDS = 0.3


@pytest.fixture(scope="module")
def slow_store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("autoscale")
    config = store / "slow-config.yaml"
    config.write_text(f"minWorkers: 1\nmaxWorkers: 3\nslowSeconds: {SLOW_SECONDS}\n"
                      "autoscaleUpQueueMs: 200\nautoscaleUpSustainSec: 0.5\n"
                      "autoscaleDownIdleSec: 2\nautoscaleDownBusyPercent: 60\n")
    archive_model(store, "slow", HANDLERS / "slow_echo.py", extra=["--config-file", str(config)])
    return store


class Load:
    """Clients that each send one request after another, every answer kept."""

    def __init__(self, url: str):
        self.url = url
        self.answers: list[tuple[int, bool]] = []  # (status, body as sent)
        self.failures: list[BaseException] = []
        self.stops: list[threading.Event] = []
        self.threads: list[threading.Thread] = []

    def start(self, clients: int) -> None:
        for _ in range(clients):
            stop = threading.Event()
            thread = threading.Thread(target=self._client, args=(len(self.threads), stop))
            self.stops.append(stop)
            self.threads.append(thread)
            thread.start()

    def keep(self, clients: int) -> None:
        for stop in self.stops[clients:]:
            stop.set()

    def stop(self) -> None:
        self.keep(0)
        for thread in self.threads:
            thread.join(60)

    def _client(self, number: int, stop: threading.Event) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            count = 0
            while not stop.is_set():
                body = f"{number}-{count}".encode()
                try:
                    response = client.post("/predictions/slow", content=body)
                except httpx.HTTPError as error:
                    self.failures.append(error)
                    return
                self.answers.append((response.status_code, response.content == body))
                count += 1


def live_workers(server) -> int:
    described = httpx.get(f"{server.management_url}/models/slow", timeout=30).json()[0]
    return sum(worker["status"] in ("READY", "STARTING") for worker in described["workers"])


def metric(server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.metrics_url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"{name} {labels} not in the metrics")


def test_workers_follow_a_load_step_up_and_down_and_every_request_is_answered(slow_store, tmp_path):
    server = start_server(tmp_path, slow_store, ["slow=slow.mar"], autoscale_cooldown_sec=1)
    load = Load(server.inference_url)
    seen: list[int] = []

    def workers_reach(count: int) -> bool:
        time.sleep(0.2)  # a describe call five times a second is enough
        seen.append(live_workers(server))
        return seen[-1] == count

    try:
        assert live_workers(server) == 1
        load.start(12)
        wait_until(lambda: workers_reach(3), timeout=40)
        wait_until(lambda: metric(server, "pyserve_workers", model_name="slow", state="ready") == 3)
        assert metric(server, "pyserve_worker_scale_events_total", model_name="slow",
                      direction="up") == 2

        load.keep(1)  # one client goes on: workers stop while requests still run
        wait_until(lambda: workers_reach(1), timeout=40)
        assert metric(server, "pyserve_workers", model_name="slow", state="ready") == 1
        assert metric(server, "pyserve_worker_scale_events_total", model_name="slow",
                      direction="down") == 2
        described = httpx.get(f"{server.management_url}/models/slow").json()[0]
        assert (described["minWorkers"], described["maxWorkers"]) == (1, 3)
        scaling = described["autoScaling"]
        assert (scaling["enabled"], scaling["scaleUps"], scaling["scaleDowns"]) == (True, 2, 2)
        assert scaling["lastScaleUp"] and scaling["lastScaleDown"]
        load.stop()
    finally:
        load.stop()
        server.stop()

    assert not load.failures, load.failures
    assert max(seen) == 3
    assert load.answers and all(answer == (200, True) for answer in load.answers)


def test_a_scale_call_sets_the_range_and_keeps_a_count_already_inside_it(model_store, tmp_path):
    server = start_server(tmp_path, model_store, ["echo=echo.mar"], default_workers_per_model=2)
    try:
        with httpx.Client(base_url=server.management_url, timeout=120) as api:
            assert api.get("/models/echo").json()[0]["autoScaling"]["enabled"] is False
            answer = api.put("/models/echo", params={"min_worker": 1, "max_worker": 3,
                                                     "synchronous": "true"})
            assert answer.status_code == 200
            described = api.get("/models/echo").json()[0]
            assert (described["minWorkers"], described["maxWorkers"]) == (1, 3)
            assert described["autoScaling"]["enabled"] is True
            assert [worker["status"] for worker in described["workers"]] == ["READY"] * 2
            api.put("/models/echo", params={"min_worker": 1, "synchronous": "true"})
            described = api.get("/models/echo").json()[0]
            assert described["autoScaling"]["enabled"] is False
            assert [worker["status"] for worker in described["workers"]] == ["READY"]
    finally:
        server.stop()
