"""A .mar served on a real two-node Ray cluster as a Ray Serve application (pyserve.ray).

One local cluster (ray.cluster_utils.Cluster: a head node and a second node, 2 logical CPUs
each) serves every test in this module, with Serve's HTTP proxy on the head node on a port
it picks itself (read back from /proc). `echo` runs 2 replicas, one per node; the CLI test
deploys a second application through `pyserve ray serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import ray
from helpers import EXAMPLES, HANDLERS, archive_model
from ray import serve
from ray.cluster_utils import Cluster

from pyserve.processes import command_has, descendants
from pyserve.ray import PredictionFailed, client, pyserve_app
from pyserve.ray.deployment import NODE_HEADER

pytestmark = pytest.mark.timeout(300)

READY_TIMEOUT = 90.0
REQUEST_TIMEOUT = 30.0


def listening_ports(pid: int) -> list[int]:
    """The TCP ports process `pid` listens on, from /proc."""
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:["):-1])
    ports = []
    with open(f"/proc/{pid}/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in sockets:  # 0A: LISTEN
                ports.append(int(fields[1].split(":")[1], 16))
    return ports


def serve_http_urls(count: int) -> list[str]:
    """Serve's proxies, started on port 0 by this test: the port each got, the one that
    answers Serve's route table (200, or 503 before the first application) among those its
    process listens on; the others are Ray's own gRPC ports."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        urls = []
        for pid in descendants(os.getpid()):
            if not command_has(pid, b"ray::ProxyActor"):
                continue
            for port in listening_ports(pid):
                url = f"http://127.0.0.1:{port}"
                try:
                    if httpx.get(f"{url}/-/routes", timeout=2).status_code in (200, 503):
                        urls.append(url)
                except httpx.HTTPError:
                    continue
        if len(urls) == count:
            return sorted(urls)
        time.sleep(0.5)
    raise AssertionError(f"{count} Serve HTTP proxies did not answer")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two Ray nodes on this machine and Serve on them."""
    nodes = Cluster(initialize_head=True,
                    head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        nodes.add_node(num_cpus=2)
        # Ray puts the driver's working directory on its workers' sys.path: from the
        # repository root, the source tree's pyserve (no compiled core) would shadow the
        # installed one.
        with contextlib.chdir(tmp_path_factory.mktemp("ray_driver")):
            ray.init(address=nodes.address, logging_level="WARNING")
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        yield nodes
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            nodes.shutdown()


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    """echo.mar and responses.mar (the status, content type and headers the body asks for),
    in a folder every node of this local cluster reads at the same path."""
    store = tmp_path_factory.mktemp("ray_store")
    archive_model(store, "echo", EXAMPLES / "echo" / "echo_handler.py")
    archive_model(store, "responses", HANDLERS / "responses.py")
    return store


@pytest.fixture(scope="module")
def echo(cluster, archives):
    """echo with 2 replicas, at most one per node: (its handle, its URL on each node's HTTP
    proxy). Serve runs a proxy on every node that has a replica, and each proxy prefers the
    replicas on its own node: a load balancer in front spreads HTTP requests over nodes."""
    handle = serve.run(pyserve_app(str(archives / "echo.mar"), num_replicas=2,
                                   max_replicas_per_node=1),
                       name="echo", route_prefix="/predictions/echo")
    yield handle, [f"{url}/predictions/echo" for url in serve_http_urls(count=2)]
    serve.delete("echo")


@pytest.fixture(scope="module")
def cli_app(cluster, archives, echo):
    """responses.mar deployed by `pyserve ray serve --detach` on the running cluster, with an
    autoscaling config and pyserve's per-model settings."""
    nodes, (_, echo_urls) = cluster, echo
    command = [sys.executable, "-m", "pyserve", "ray", "serve", str(archives / "responses.mar"),
               "--address", nodes.address, "--autoscaling-config", json.dumps(AUTOSCALING),
               "--workers", "2", "--batch-size", "4", "--max-batch-delay", "7", "--detach"]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, check=False,
                                  timeout=READY_TIMEOUT,
                                  cwd=archives)  # not the repository root: see `cluster`
        assert finished.returncode == 0, finished.stderr
        yield finished.stdout, echo_urls[0].replace("/echo", "/responses")
    finally:
        serve.delete("responses")


AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16}


def replica_names(app: str) -> set[str]:
    return {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith(f"SERVE_REPLICA::{app}#")}


def running_replicas(app: str) -> int:
    status = serve.status().applications.get(app)
    if status is None:
        return 0
    return sum(deployment.replica_states.get("RUNNING", 0)
               for deployment in status.deployments.values())


def replaced(app: str, victim: str, before: set[str]) -> bool:
    """The victim is gone and a new replica runs in its place (Serve's status alone may still
    count the victim as running for a few seconds after it died)."""
    names = replica_names(app)
    return victim not in names and bool(names - before) and running_replicas(app) == len(before)


def wait_for(condition, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


async def post_many(urls: list[str], count: int) -> list[httpx.Response]:
    """`count` requests at once, spread over `urls` in turn."""
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as http:
        return await asyncio.gather(*(http.post(urls[i % len(urls)], content=b"hello %d" % i)
                                      for i in range(count)))


def test_http_predictions_are_answered_by_replicas_on_both_nodes(echo):
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    _, urls = echo
    answers = asyncio.run(post_many(urls, 64))
    assert [(a.status_code, a.content) for a in answers] == [(200, b"hello %d" % i)
                                                             for i in range(64)]
    assert {answer.headers[NODE_HEADER] for answer in answers} == nodes
    assert len(nodes) == 2


def test_handle_predict_returns_the_handlers_answer(echo):
    handle, _ = echo
    assert handle.predict.remote(b"through a handle").result(timeout_s=REQUEST_TIMEOUT) == \
        b"through a handle"


def test_handle_predict_raises_prediction_failed_with_pyserves_status(echo):
    handle, _ = echo
    with pytest.raises(PredictionFailed) as failed:
        handle.predict.remote(b"x", version="9.9").result(timeout_s=REQUEST_TIMEOUT)
    assert failed.value.status == 404
    assert json.loads(failed.value.body)["type"] == "ModelVersionNotFoundException"


def test_http_answers_pyserves_errors_as_pyserve_does(echo):
    _, urls = echo
    answer = httpx.post(f"{urls[0]}/9.9", content=b"x", timeout=REQUEST_TIMEOUT)
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["type"] == "ModelVersionNotFoundException"


def test_each_replica_runs_one_worker_per_cpu_ray_gives_it(echo):
    handle, _ = echo
    described = handle.describe.remote().result(timeout_s=REQUEST_TIMEOUT)
    assert described["modelName"] == "echo"
    assert len(described["workers"]) == 1  # num_cpus=1, on a machine with more cores


def test_cli_app_answers_with_the_handlers_status_content_type_and_headers(cli_app):
    stdout, url = cli_app
    assert "serving responses" in stdout
    asked = {"status": 201, "content_type": "text/x-probe", "headers": {"x-probe": "yes"}}
    answer = httpx.post(url, json=asked, timeout=REQUEST_TIMEOUT)
    assert answer.status_code == 201
    assert answer.headers["content-type"] == "text/x-probe"
    assert answer.headers["x-probe"] == "yes"
    assert answer.json() == {"idx": 0}


def test_cli_passes_pyserves_model_settings_to_each_replica(cli_app):
    handle = serve.get_app_handle("responses")
    described = handle.describe.remote().result(timeout_s=REQUEST_TIMEOUT)
    assert (described["batchSize"], described["maxBatchDelay"]) == (4, 7)
    assert len(described["workers"]) == 2


def test_cli_passes_the_autoscaling_config_to_ray_serve(cli_app):
    details = serve.context._get_global_client().get_serve_details()
    deployment = details["applications"]["responses"]["deployments"]["pyserve"]
    config = deployment["deployment_config"]["autoscaling_config"]
    assert {key: config[key] for key in AUTOSCALING} == AUTOSCALING


async def handle_load(handle, stop: asyncio.Event, concurrency: int) -> tuple[int, list]:
    """Requests through client.predict (retried when a replica dies) until `stop`: how many
    were answered correctly, and every other outcome."""
    answered, wrong = 0, []

    async def one_loop(loop_id: int) -> None:
        nonlocal answered
        count = 0
        while not stop.is_set():
            body = b"%d-%d" % (loop_id, count)
            count += 1
            try:
                answer = await client.predict(handle, body, timeout=REQUEST_TIMEOUT)
            except Exception as error:  # noqa: BLE001 - every failure is counted, then asserted on
                wrong.append(repr(error))
                continue
            if answer == body:
                answered += 1
            else:
                wrong.append(answer)

    await asyncio.gather(*(one_loop(i) for i in range(concurrency)))
    return answered, wrong


async def http_load(url: str, stop: asyncio.Event, concurrency: int) -> dict[str, int]:
    """Requests through Serve's HTTP proxy until `stop`: outcomes counted by kind."""
    outcomes: dict[str, int] = {}

    async def one_loop(http: httpx.AsyncClient, loop_id: int) -> None:
        count = 0
        while not stop.is_set():
            body = b"%d-%d" % (loop_id, count)
            count += 1
            try:
                answer = await http.post(url, content=body)
            except httpx.TimeoutException:
                kind = "timed out"
            except httpx.HTTPError as error:
                kind = f"connection error {type(error).__name__}"
            else:
                kind = "correct" if (answer.status_code, answer.content) == (200, body) else \
                    f"status {answer.status_code}"
            outcomes[kind] = outcomes.get(kind, 0) + 1

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as http:
        await asyncio.gather(*(one_loop(http, i) for i in range(concurrency)))
    return outcomes


async def kill_a_replica_under(load, app: str) -> tuple:
    """Runs `load(stop)` while one of `app`'s replicas is killed and Ray replaces it."""
    stop = asyncio.Event()
    running = asyncio.create_task(load(stop))
    try:
        await asyncio.sleep(1.0)
        before = replica_names(app)
        victim = min(before)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        await asyncio.to_thread(wait_for, lambda: replaced(app, victim, before))
        await asyncio.sleep(1.0)  # requests reach the new replica too
    finally:
        stop.set()
    return await asyncio.wait_for(running, REQUEST_TIMEOUT * 2), before


def test_a_killed_replica_is_replaced_and_handle_calls_lose_no_request(echo):
    handle, _ = echo
    (answered, wrong), before = asyncio.run(kill_a_replica_under(
        lambda stop: handle_load(handle, stop, concurrency=16), "echo"))
    assert wrong == []
    assert answered > 0
    assert replica_names("echo") != before and running_replicas("echo") == 2


def test_a_killed_replica_leaves_no_http_request_hanging(echo):
    _, urls = echo
    outcomes, before = asyncio.run(kill_a_replica_under(
        lambda stop: http_load(urls[0], stop, concurrency=16), "echo"))
    print("HTTP outcomes while a replica was killed:", outcomes)
    assert outcomes.get("correct", 0) > 0
    assert set(outcomes) <= {"correct", "status 500", "status 503"}
    assert replica_names("echo") != before and running_replicas("echo") == 2
