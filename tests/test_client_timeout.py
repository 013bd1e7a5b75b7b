"""clientTimeoutInMills through the real server: a request that waited longer in the queue is
answered 503 and never reaches the handler."""

from __future__ import annotations

import json
import threading
import time

import httpx

from helpers import HANDLERS, archive_model, start_server


def test_a_request_queued_past_client_timeout_is_answered_503_and_never_run(tmp_path):
    config = tmp_path / "model-config.yaml"
    config.write_text("batchSize: 1\nminWorkers: 1\nmaxWorkers: 1\nclientTimeoutInMills: 300\n")
    archive_model(tmp_path / "store", "mates", HANDLERS / "batch_mates.py",
                  extra=["--config-file", str(config)])
    server = start_server(tmp_path, tmp_path / "store", ["mates.mar"])
    try:
        url = f"{server.inference_url}/predictions/mates"
        slow: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: slow.append(
            httpx.post(url, content=b"sleep:1.0", timeout=30)))
        thread.start()
        time.sleep(0.2)  # the slow one runs; this one waits behind it, past 300 ms
        late = httpx.post(url, content=b"late", timeout=30)
        thread.join()
        assert slow[0].status_code == 200
        assert late.status_code == 503
        assert "clientTimeoutInMills=300" in late.json()["message"]
        served = httpx.post(url, content=b"fresh", timeout=30)  # the worker went on serving
        assert served.status_code == 200 and len(json.loads(served.text)) == 1
    finally:
        server.stop()
