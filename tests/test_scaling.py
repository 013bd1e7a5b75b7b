"""Scaling workers while requests flow: every request is answered, none hangs."""

from __future__ import annotations

import threading

import httpx

from helpers import start_server, wait_until


def test_scaling_1_3_0_1_under_a_steady_stream_answers_every_request(model_store, tmp_path):
    server = start_server(tmp_path, model_store, ["echo=echo.mar"], default_workers_per_model=1)
    answers: list[tuple[int, str]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def stream(connection: int) -> None:
        with httpx.Client(base_url=server.inference_url, timeout=30) as client:
            count = 0
            while not stop.is_set():
                body = f"{connection}-{count}".encode()
                try:
                    response = client.post("/predictions/echo", content=body)
                except httpx.HTTPError as error:  # a hang ends here as a timeout
                    failures.append(error)
                    return
                answers.append((response.status_code,
                                "same" if response.content == body else response.text))
                count += 1

    clients = [threading.Thread(target=stream, args=(n,)) for n in range(4)]
    for client in clients:
        client.start()
    try:
        with httpx.Client(base_url=server.management_url, timeout=120) as api:
            scaled = []
            for count in (3, 0, 1):
                scaled.append(api.put("/models/echo", params={"min_worker": count,
                                                              "synchronous": "true"}).status_code)
                seen = len(answers)
                wait_until(lambda: len(answers) >= seen + 50 or failures)
            workers = len(api.get("/models/echo").json()[0]["workers"])
    finally:
        stop.set()
        for client in clients:
            client.join(60)
        server.stop()

    assert not failures, failures
    assert scaled == [200, 200, 200]
    assert workers == 1
    served = [outcome for status, outcome in answers if status == 200]
    refused = [outcome for status, outcome in answers if status == 503]
    assert served and all(outcome == "same" for outcome in served)
    assert all("has no worker to serve inference request" in outcome for outcome in refused)
    assert {status for status, _ in answers} <= {200, 503}
