"""Several frontend processes on one inference listener (`frontend_processes`).

Each keep-alive connection is served by one frontend process for its whole life; the
x-request-id a frontend sends starts with a prefix of its own, so a test knows which
process answered on which connection.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from pyserve.processes import is_frontend_process

from helpers import EXAMPLES, HANDLERS, archive_model, child_pids, pid_alive, start_server, wait_until

FRONTENDS = 2


def frontend_of(response: httpx.Response) -> str:
    return response.headers["x-request-id"].rsplit("-", 1)[0]


def frontend_pids(server) -> list[int]:
    return [pid for pid in child_pids(server.process.pid) if is_frontend_process(pid)]


def clients_on_each_frontend(url: str, each: int) -> dict[str, list[httpx.Client]]:
    """Keep-alive connections, `each` of them answered by every frontend process."""
    by_frontend: dict[str, list[httpx.Client]] = {}
    spare = []
    deadline = time.monotonic() + 30
    while len(by_frontend) < FRONTENDS or any(len(c) < each for c in by_frontend.values()):
        assert time.monotonic() < deadline, f"connections reached only {list(by_frontend)}"
        client = httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1))
        clients = by_frontend.setdefault(frontend_of(client.get("/ping")), [])
        (clients if len(clients) < each else spare).append(client)
    for client in spare:
        client.close()
    return by_frontend


@pytest.fixture(scope="module")
def mates_store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("mates_store")
    archive_model(store, "mates", HANDLERS / "batch_mates.py")
    archive_model(store, "echo", EXAMPLES / "echo" / "echo_handler.py")
    return store


@pytest.fixture(scope="module")
def server(mates_store, tmp_path_factory):
    """One worker batching up to 8 requests, behind two frontend processes."""
    directory = tmp_path_factory.mktemp("frontends")
    server = start_server(directory, mates_store, [], frontend_processes=FRONTENDS,
                          enable_model_api="true")
    register = httpx.post(f"{server.management_url}/models",
                          params={"url": "mates.mar", "initial_workers": 1, "synchronous": "true",
                                  "batch_size": 8, "max_batch_delay": 60000}, timeout=60)
    assert register.status_code == 200, register.text
    yield server
    server.stop()


def test_the_inference_listener_is_served_by_the_frontend_processes(server):
    assert len(frontend_pids(server)) == FRONTENDS
    clients = clients_on_each_frontend(server.inference_url, 1)
    assert len(clients) == FRONTENDS
    for client in sum(clients.values(), []):
        client.close()


def test_a_batch_forms_from_requests_that_arrived_on_different_frontends(server):
    clients = clients_on_each_frontend(server.inference_url, 4)
    with ThreadPoolExecutor(9) as pool:
        busy = pool.submit(httpx.post, f"{server.inference_url}/predictions/mates", content=b"sleep:1",
                           timeout=60)
        time.sleep(0.3)  # the worker now runs that one; the next eight queue and leave together
        eight = [pool.submit(client.post, "/predictions/mates", content=b"x")
                 for connections in clients.values() for client in connections]
        replies = [future.result() for future in eight]
        assert busy.result().status_code == 200
    assert all(reply.status_code == 200 for reply in replies)
    batches = {tuple(reply.json()) for reply in replies}
    assert len(batches) == 1  # one batch of eight
    assert {reply.headers["x-request-id"] for reply in replies} == set(next(iter(batches)))
    assert len({frontend_of(reply) for reply in replies}) == FRONTENDS
    for client in sum(clients.values(), []):
        client.close()


def test_metrics_count_the_requests_of_every_frontend(server):
    def requests_so_far() -> float:
        text = httpx.get(f"{server.metrics_url}/metrics").text
        lines = [line for line in text.splitlines()
                 if line.startswith("ts_inference_requests_total{") and 'model_name="mates"' in line]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    before = requests_so_far()
    clients = clients_on_each_frontend(server.inference_url, 2)
    for client in sum(clients.values(), []):
        assert client.post("/predictions/mates", content=b"x").status_code == 200
        client.close()
    assert requests_so_far() - before == 2 * FRONTENDS


def test_a_model_answers_on_every_frontend_as_soon_as_its_registration_has(server):
    clients = clients_on_each_frontend(server.inference_url, 2)
    try:
        for round in range(3):
            name = f"echo{round}"
            register = httpx.post(f"{server.management_url}/models",
                                  params={"url": "echo.mar", "model_name": name,
                                          "initial_workers": 1, "synchronous": "true"}, timeout=60)
            assert register.status_code == 200, register.text
            for client in sum(clients.values(), []):
                reply = client.post(f"/predictions/{name}", content=b"hi")
                assert (reply.status_code, reply.content) == (200, b"hi")
            assert httpx.delete(f"{server.management_url}/models/{name}", timeout=60).status_code == 200
            for client in sum(clients.values(), []):
                assert client.post(f"/predictions/{name}", content=b"hi").status_code == 404
    finally:
        for client in sum(clients.values(), []):
            client.close()


def test_killing_a_frontend_loses_only_its_own_connections(mates_store, tmp_path):
    server = start_server(tmp_path, mates_store, ["echo=echo.mar"], frontend_processes=FRONTENDS,
                          default_workers_per_model=1)
    try:
        clients = clients_on_each_frontend(server.inference_url, 3)
        victim_prefix, survivor_prefix = list(clients)
        victim = next(pid for pid in frontend_pids(server)
                      if client_pid_matches(clients[victim_prefix][0], pid))
        stop = threading.Event()
        outcomes: dict[str, list] = {victim_prefix: [], survivor_prefix: []}

        def drive(prefix: str, client: httpx.Client) -> None:
            while not stop.is_set():
                try:
                    reply = client.post("/predictions/echo", content=b"load")
                    outcomes[prefix].append(reply.status_code == 200 and reply.content == b"load")
                except httpx.HTTPError:
                    outcomes[prefix].append("connection lost")
                    return

        threads = [threading.Thread(target=drive, args=(prefix, client))
                   for prefix, connections in clients.items() for client in connections]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)  # nothing hangs
        assert outcomes[survivor_prefix] and all(ok is True for ok in outcomes[survivor_prefix])
        # Its requests in flight lose their connection (an idle one is reopened by the
        # client, on the other frontend); none gets a wrong or failed answer.
        assert set(outcomes[victim_prefix]) <= {True, "connection lost"}
        wait_until(lambda: len(frontend_pids(server)) == FRONTENDS and victim not in frontend_pids(server))
        wait_until(lambda: ok_on_fresh_connections(server.inference_url, 10))
        for client in sum(clients.values(), []):
            client.close()
    finally:
        assert server.stop() == 0
    assert not pid_alive(victim)


def client_pid_matches(client: httpx.Client, pid: int) -> bool:
    """Whether the frontend process `pid` holds the client's connection."""
    port = client.get("/ping").extensions["network_stream"].get_extra_info("client_addr")[1]
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:") and socket_port_of_inode(target[8:-1]) == port:
            return True
    return False


def socket_port_of_inode(inode: str) -> int | None:
    """The remote port of the loopback TCP socket with this inode (from /proc/net/tcp)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[9] == inode:
                    return int(fields[2].rsplit(":", 1)[1], 16)
    return None


def ok_on_fresh_connections(url: str, count: int) -> bool:
    try:
        return all(httpx.post(f"{url}/predictions/echo", content=b"again").content == b"again"
                   for _ in range(count))
    except httpx.HTTPError:
        return False


def test_a_new_inference_key_is_in_force_on_every_frontend_when_its_call_returns(mates_store, tmp_path):
    server = start_server(tmp_path, mates_store, ["echo=echo.mar"], frontend_processes=FRONTENDS,
                          default_workers_per_model=1, disable_token_authorization="false")

    def key(kind: str) -> str:
        return json.loads((tmp_path / "key_file.json").read_text())[kind]["key"]

    def answers_with(client: httpx.Client, inference_key: str) -> int:
        return client.post("/predictions/echo", content=b"x",
                           headers={"Authorization": f"Bearer {inference_key}"}).status_code

    try:
        clients = clients_on_each_frontend(server.inference_url, 1)
        old = key("inference")
        assert {answers_with(client, old) for client in sum(clients.values(), [])} == {200}
        regenerated = httpx.get(f"{server.management_url}/token", params={"type": "inference"},
                                headers={"Authorization": f"Bearer {key('API')}"})
        assert regenerated.status_code == 200
        new = key("inference")
        for client in sum(clients.values(), []):
            assert answers_with(client, old) == 400
            assert answers_with(client, new) == 200
            client.close()
    finally:
        server.stop()
