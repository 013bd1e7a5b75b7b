"""Reports what the worker was told: its model-config yaml and system properties."""

import json
import os


def handle(data, context):
    if data is None:
        return None
    report = {
        "model_yaml_config": context.model_yaml_config,
        "system_properties": context.system_properties,
        "manifest": context.manifest,
        "pid": os.getpid(),
    }
    return [json.dumps(report) for _ in data]
