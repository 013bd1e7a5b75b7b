"""Echoes each body after sleeping the yaml's slowSeconds per batch: a model that is slow
to answer but costs no CPU, so a test can load it past its workers on a small machine."""

import time


def handle(data, context):
    if data is None:
        return None
    time.sleep(float(context.model_yaml_config.get("slowSeconds", 0.3)))
    return [row.get("data") or row.get("body") or b"" for row in data]
