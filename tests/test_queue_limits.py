"""Queue limits through the real server: a request queued past clientTimeoutInMills is
answered 503 and never reaches the handler; a sequence queues at most
maxSequenceJobQueueSize requests behind the one it runs."""

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


def test_a_sequence_holds_at_most_max_sequence_job_queue_size_waiting_requests(tmp_path):
    config = tmp_path / "model-config.yaml"
    config.write_text("minWorkers: 1\nmaxWorkers: 1\nsequenceBatching: true\n"
                      "sequenceMaxIdleMSec: 60000\nmaxSequenceJobQueueSize: 1\n")
    archive_model(tmp_path / "store", "mates", HANDLERS / "batch_mates.py",
                  extra=["--config-file", str(config)])
    server = start_server(tmp_path, tmp_path / "store", ["mates.mar"])
    try:
        url = f"{server.inference_url}/predictions/mates"
        headers = {"ts_request_sequence_id": "q"}
        answered: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda body=body: answered.append(
            httpx.post(url, content=body, headers=headers, timeout=30)))
            for body in (b"sleep:1.0", b"second")]
        for thread in threads:  # the first runs, the second waits in the sequence
            thread.start()
            time.sleep(0.2)
        refused = httpx.post(url, content=b"third", headers=headers, timeout=30)
        for thread in threads:
            thread.join()
        assert [response.status_code for response in answered] == [200, 200]
        assert refused.status_code == 503
        assert "maxSequenceJobQueueSize" in refused.json()["message"]
    finally:
        server.stop()
