"""Workers that scale themselves between a model's minWorkers and maxWorkers (pyserve only).

TorchServe keeps minWorkers running and never uses maxWorkers; pyserve moves a model whose
range is open (min < max) within it. The engine samples each such model every
SAMPLE_SECONDS (`Autoscaler.measure`) and asks `Autoscaler.decide` for its worker count:

- one more when a request joining the queue could expect to wait longer than `up_queue_ms`,
  at every sample for `up_sustain_sec`, with no worker loading (its load would be counted
  as a shortage, and the count would run to the maximum while a slow model loads);
- one fewer when, for `down_idle_sec`, no request waited and the workers were busy less
  than `down_busy_percent` of the time;
- no move against the previous one (or an explicit scale call) within `cooldown_sec`; the
  two thresholds and this pause are the hysteresis that keeps the count from flapping;
- never outside [min_workers, max_workers], never below one worker (with none, requests
  are refused rather than queued, so nothing would bring one back), and nothing at all for
  a stateful model: its sequences live in one worker each.

The queue wait is the longer of two: how long the oldest queued request has waited, as the
core measures it, and Little's law, the requests waiting for a worker (queued, and in worker
rings behind the batch that runs) over the rate the workers took requests during the last
`up_sustain_sec`, which sees a backlog before its oldest request has aged. A worker is
stopped only after the batches it holds (Core.stop_worker), so scaling down loses no
request.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyserve.engine.models import ModelVersion

SAMPLE_SECONDS = 0.5
MIN_RATE_WINDOW_SECONDS = 1.0  # a shorter window sees too few batches of a slow model


@dataclass
class AutoscaleConfig:
    """A model's autoscaling thresholds: config.properties' autoscale_* keys, overridden by
    its model-config yaml's autoscale* keys."""

    up_queue_ms: float = 100  # expected queue wait above which the model is short of workers
    up_sustain_sec: float = 3  # ... for this long before one is added
    down_idle_sec: float = 60  # quiet this long before one is removed
    down_busy_percent: float = 30  # quiet: no request waiting, workers busy less than this
    cooldown_sec: float = 10  # the least time between a move and the opposite one


@dataclass
class Sample:
    """What a model looked like at `at` (time.monotonic())."""

    at: float
    workers: int  # alive: loading or ready
    loading: int  # workers still loading, and dead ones waiting to restart
    waiting: float  # requests waiting for a worker
    expected_wait: float  # seconds requests wait, or could expect to, for a worker
    busy: float  # fraction of the ready workers running a batch


def expected_wait(waiting: float, taken: float, seconds: float) -> float:
    """Little's law: `waiting` requests, of which workers took `taken` in `seconds`."""
    if waiting <= 0:
        return 0.0
    if taken <= 0 or seconds <= 0:
        return math.inf
    return waiting / (taken / seconds)


class Autoscaler:
    """One model version's autoscaling: its measurements, its decisions, its history."""

    def __init__(self) -> None:
        self.scale_ups = 0
        self.scale_downs = 0
        self.last_scale_up: float | None = None  # time.time(), for describe
        self.last_scale_down: float | None = None
        self._last_move: tuple[int, float] | None = None  # (+1, -1 or 0 for an explicit call, when)
        self._waiting_since: float | None = None
        self._quiet_since: float | None = None
        self._busy: deque[tuple[float, float]] = deque()  # (at, busy) while quiet
        self._taken: deque[tuple[float, int]] = deque()  # (at, requests dispatched so far)

    # -- measuring --------------------------------------------------------------------

    def measure(self, core, model: ModelVersion, config: AutoscaleConfig, now: float) -> Sample:
        """The model's sample now, from the core's counts."""
        live = model.live_workers()
        ready = [worker for worker in live if worker.ready]
        (batch_sizes, dispatched), _ = core.stats(model.core_id)
        batches = sum(batch_sizes)
        per_batch = dispatched / batches if batches else 1.0
        holding = [core.in_flight(worker.id) for worker in ready]
        # A worker's second batch waits in its ring behind the first.
        waiting = core.queued(model.core_id) + per_batch * sum(max(n - 1, 0) for n in holding)
        window = max(config.up_sustain_sec, MIN_RATE_WINDOW_SECONDS)
        self._taken.append((now, dispatched))
        while len(self._taken) > 2 and self._taken[1][0] <= now - window:
            self._taken.popleft()
        since, taken_before = self._taken[0]
        estimated = 0.0 if since == now else expected_wait(waiting, dispatched - taken_before,
                                                          now - since)
        wait = max(estimated, core.oldest_queued_seconds(model.core_id))
        return Sample(
            at=now, workers=len(live), loading=len(live) - len(ready) + model.pending_restarts,
            waiting=waiting, expected_wait=wait,
            busy=sum(1 for n in holding if n) / len(ready) if ready else 0.0)

    # -- deciding ---------------------------------------------------------------------

    def decide(self, sample: Sample, config: AutoscaleConfig, min_workers: int,
               max_workers: int) -> int:
        """The worker count the model should have after `sample`: one more, one fewer, or
        as many as it has."""
        now, workers = sample.at, sample.workers
        settled = sample.loading == 0
        if settled and sample.expected_wait * 1000 > config.up_queue_ms:
            if self._waiting_since is None:
                self._waiting_since = now
        else:
            self._waiting_since = None
        if settled and sample.waiting == 0:
            if self._quiet_since is None:
                self._quiet_since = now
            self._busy.append((now, sample.busy))
            while self._busy and self._busy[0][0] < now - config.down_idle_sec:
                self._busy.popleft()
        else:
            self._quiet_since = None
            self._busy.clear()

        if (self._waiting_since is not None and now - self._waiting_since >= config.up_sustain_sec
                and workers < max_workers and self._may_move(+1, now, config)):
            return workers + 1
        if (self._quiet_since is not None and now - self._quiet_since >= config.down_idle_sec
                and self._mean_busy() * 100 < config.down_busy_percent
                and workers > max(min_workers, 1) and self._may_move(-1, now, config)):
            return workers - 1
        return workers

    def _may_move(self, direction: int, now: float, config: AutoscaleConfig) -> bool:
        if self._last_move is None:
            return True
        last_direction, at = self._last_move
        return last_direction == direction or now - at >= config.cooldown_sec

    def _mean_busy(self) -> float:
        return sum(busy for _, busy in self._busy) / len(self._busy) if self._busy else 0.0

    # -- what happened ----------------------------------------------------------------

    def moved(self, direction: int, now: float) -> None:
        """The engine scaled the model by one in `direction` (+1 or -1) at `now`."""
        if direction > 0:
            self.scale_ups += 1
            self.last_scale_up = time.time()
        else:
            self.scale_downs += 1
            self.last_scale_down = time.time()
        self._restart_windows(direction, now)

    def scaled_explicitly(self, now: float) -> None:
        """A scale call set the range and the count: measure afresh, and move neither way
        for a cool-down, so that the call is not undone at once."""
        self._restart_windows(0, now)

    def _restart_windows(self, direction: int, now: float) -> None:
        self._last_move = (direction, now)
        self._waiting_since = None
        self._quiet_since = None
        self._busy.clear()


def autoscaled(model: ModelVersion) -> bool:
    """Whether the model's workers scale themselves: its range is open, and it is stateless."""
    return model.config.min_workers < model.config.max_workers and not model.stateful
