"""A model version as TorchServe's describe API shows it: same fields, same order, same formats."""

from __future__ import annotations

import datetime

from pyserve.engine.autoscale import autoscaled
from pyserve.engine.models import ModelVersion
from pyserve.engine.workers import WorkerProcess


def _timestamp(when: datetime.datetime) -> str:
    # TorchServe: yyyy-MM-dd'T'HH:mm:ss.SSS'Z' in local time, with a literal Z.
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _moved_at(seconds: float | None) -> str | None:
    return None if seconds is None else _timestamp(datetime.datetime.fromtimestamp(seconds))


def describe_autoscaling(model: ModelVersion) -> dict:
    """pyserve's own: whether the workers scale themselves, and how often they have."""
    autoscaler = model.autoscaler
    return {
        "enabled": autoscaled(model),
        "scaleUps": autoscaler.scale_ups,
        "scaleDowns": autoscaler.scale_downs,
        "lastScaleUp": _moved_at(autoscaler.last_scale_up),
        "lastScaleDown": _moved_at(autoscaler.last_scale_down),
    }


def describe_worker(worker: WorkerProcess) -> dict:
    on_gpu = worker.placement is not None and worker.placement.physical_gpu is not None
    return {
        "id": str(worker.id),
        "startTime": _timestamp(worker.start_time),
        "status": worker.state.value,
        "memoryUsage": worker.memory_usage(),
        "pid": worker.pid,
        "gpu": on_gpu,
        "gpuUsage": f"gpuId::{worker.placement.physical_gpu}" if on_gpu else "N/A",
    }


def describe_model(model: ModelVersion, queued: int) -> dict:
    config, yaml = model.config, model.yaml_config
    described = {
        "modelName": model.name,
        "modelVersion": model.version,
        "modelUrl": model.url,
        "runtime": model.runtime,
        "minWorkers": config.min_workers,
        "maxWorkers": config.max_workers,
        "batchSize": config.batch_size,
        "maxBatchDelay": config.max_batch_delay,
        "responseTimeout": config.response_timeout,
        "startupTimeout": config.startup_timeout,
        "maxRetryTimeoutInSec": config.max_retry_timeout,
        "clientTimeoutInMills": config.client_timeout,
        "parallelType": yaml.get("parallelType", ""),
        "parallelLevel": yaml.get("parallelLevel", 0),
        "deviceType": config.device_type,
    }
    if config.device_ids is not None:
        described["deviceIds"] = config.device_ids
    sequence = config.sequence
    described.update({
        "continuousBatching": yaml.get("continuousBatching") is True,
        "useJobTicket": bool(yaml.get("useJobTicket", False)),
        "useVenv": False,
        "stateful": sequence is not None,
        "sequenceMaxIdleMSec": sequence.max_idle if sequence else 0,
        "sequenceTimeoutMSec": sequence.timeout if sequence else 0,
        "maxNumSequence": sequence.max_sequences if sequence else 0,
        "maxSequenceJobQueueSize": sequence.max_queue if sequence else 0,
        "loadedAtStartup": model.loaded_at_startup,
        "workers": [describe_worker(worker) for worker in model.workers.values()],
        "jobQueueStatus": {
            "remainingCapacity": max(config.job_queue_size - queued, 0),
            "pendingRequests": queued,
        },
        "restarts": model.restarts,
        "autoScaling": describe_autoscaling(model),
    })
    return described
