"""TorchServe's log files, as one serving process writes them.

Under LOG_LOCATION (default `logs`): ts_log.log, the server's log (pyserve.logs);
model_log.log, what workers print (pyserve.engine.worker_output); access_log.log, a line per
request (pyserve.access_log). Under METRICS_LOCATION (default `logs`): ts_metrics.log and
model_metrics.log, as metrics_mode decides (pyserve.metrics_log), with the system metrics
(pyserve.system_metrics) every metric_time_interval seconds unless disable_system_metrics.
The server writes them all; a frontend process appends its requests to access_log.log and
its request counters to ts_metrics.log.
"""

from __future__ import annotations

import asyncio

from pyserve.access_log import close_access_log, open_access_log
from pyserve.config import Settings
from pyserve.logs import log_location, metrics_location
from pyserve.metrics import ServerMetrics
from pyserve.metrics_log import MetricsLog, metrics_mode, report_system_metrics
from pyserve.system_metrics import SystemMetrics


class LogFiles:
    def __init__(self, metrics_log: MetricsLog, system_metrics: asyncio.Task | None):
        self.metrics_log = metrics_log
        self._system_metrics = system_metrics

    @classmethod
    def open(cls, settings: Settings, metrics: ServerMetrics, gpus: list[str] | None = None
             ) -> "LogFiles":
        """Starts writing on the running loop. `gpus`, the server's GPUs, makes this the
        server's files, with model metrics and system metrics; None in a frontend process."""
        loop = asyncio.get_running_loop()
        open_access_log(log_location(), loop)
        server = gpus is not None
        metrics_log = MetricsLog(metrics, metrics_mode(settings.metrics_mode), metrics_location(),
                                 model_metrics=server)
        metrics_log.start(loop)
        system_metrics = None
        if server and not settings.disable_system_metrics:
            system_metrics = loop.create_task(report_system_metrics(
                SystemMetrics(gpus), settings.metric_time_interval, metrics_log))
        return cls(metrics_log, system_metrics)

    async def close(self) -> None:
        """Writes what is still buffered and stops."""
        if self._system_metrics is not None:
            self._system_metrics.cancel()
            await asyncio.gather(self._system_metrics, return_exceptions=True)
        self.metrics_log.close()
        close_access_log()
