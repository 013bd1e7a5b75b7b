"""TorchServe's gRPC inference API (inference.proto) on pyserve, through a real grpcio client
whose stubs are generated from the .proto files pyserve ships (tests/grpc_stubs.py).

The answers, codes and details are TorchServe 0.12's, checked against a running TorchServe;
docs/compatibility.md lists where pyserve answers otherwise on purpose.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import empty_pb2

from grpc_stubs import PROTOS, bearer, protoc_includes, serialized_descriptor, stubs
from helpers import (EXAMPLES, HANDLERS, archive_model, children, is_grpc_process, pid_alive,
                     start_server, wait_until)
from pyserve.control import spawn_server, write_loopback_config

TIMEOUT = 30
MAX_REQUEST_SIZE = 100_000
MATES_CONFIG = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 2\nmaxBatchDelay: 5000\n"
SUMS_CONFIG = ("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxNumSequence: 4\n"
               "sequenceMaxIdleMSec: 10000\nmaxSequenceJobQueueSize: 10\nsequenceBatching: true\n")


def archive_with_config(store: Path, name: str, handler: Path, config: str) -> None:
    yaml = store.parent / f"{name}.yaml"
    yaml.write_text(config)
    archive_model(store, name, handler, extra=["--config-file", str(yaml)])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("grpc") / "store"
    archive_model(store, "echo", EXAMPLES / "echo" / "echo_handler.py")
    archive_model(store, "probe", HANDLERS / "grpc_probe.py")
    archive_with_config(store, "mates", HANDLERS / "batch_mates.py", MATES_CONFIG)
    archive_with_config(store, "sums", HANDLERS / "sequence_sum.py", SUMS_CONFIG)
    return store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("grpc-server"), store,
                          ["echo.mar", "probe.mar", "mates.mar", "sums.mar"],
                          default_workers_per_model=1, max_request_size=MAX_REQUEST_SIZE)
    yield server
    server.stop()


def inference_stub(target: str, credentials: grpc.ChannelCredentials | None = None):
    channel = (grpc.secure_channel(target, credentials) if credentials
               else grpc.insecure_channel(target))
    return channel, stubs().inference_pb2_grpc.InferenceAPIsServiceStub(channel)


@pytest.fixture(scope="module")
def inference(server):
    channel, stub = inference_stub(server.grpc_inference_target)
    yield stub
    channel.close()


def request(model: str, version: str = "", sequence_id: str | None = None, **inputs: bytes):
    return stubs().inference_pb2.PredictionsRequest(model_name=model, model_version=version,
                                                    input=inputs, sequence_id=sequence_id)


def failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def test_the_shipped_modules_are_generated_from_the_shipped_protos(tmp_path):
    """The command in pyserve/grpc/protos/README.md, run today, describes the same messages
    and services as the modules checked in."""
    tree = tmp_path / "pyserve" / "grpc" / "protos"
    tree.mkdir(parents=True)
    names = ("inference", "management")
    for name in names:
        shutil.copy(PROTOS / f"{name}.proto", tree)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", *protoc_includes(),
                    f"--python_out={tmp_path}",
                    *(f"pyserve/grpc/protos/{name}.proto" for name in names)], check=True)
    for name in names:
        assert serialized_descriptor(PROTOS / f"{name}_pb2.py") == \
            serialized_descriptor(tree / f"{name}_pb2.py")


def test_ping_answers_torchserves_health_json(inference):
    assert inference.Ping(empty_pb2.Empty(), timeout=TIMEOUT).health == '{\n  "status": "Healthy"\n}'


def test_predictions_answer_with_the_models_answer(inference):
    answer = inference.Predictions(request("echo", data=b"hello grpc"), timeout=TIMEOUT)
    assert answer.prediction == b"hello grpc"


def test_each_input_reaches_the_handler_under_its_own_name_as_bytes(inference):
    inputs = {"data": b"1", "quote\"back\\slash": b'{"x": 1}', "empty": b""}
    answer = inference.Predictions(request("probe", **inputs), timeout=TIMEOUT)
    assert json.loads(answer.prediction) == {name: ["bytes", value.decode()]
                                             for name, value in inputs.items()}


def test_a_version_can_be_asked_for(inference):
    answer = inference.Predictions(request("echo", "1.0", data=b"v"), timeout=TIMEOUT)
    assert answer.prediction == b"v"


def test_an_unknown_model_is_not_found_with_torchserves_details(inference):
    error = failure(lambda: inference.Predictions(request("nope", data=b"x"), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == ("Model not found: nope\n"
                               "org.pytorch.serve.archive.model.ModelNotFoundException")


def test_an_unknown_version_is_not_found(inference):
    error = failure(lambda: inference.Predictions(request("echo", "9", data=b"x"), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == ("Model version: 9 does not exist for model: echo\n"
                               "org.pytorch.serve.archive.model.ModelVersionNotFoundException")


def test_a_request_without_a_model_name_is_invalid(inference):
    error = failure(lambda: inference.Predictions(request("", data=b"x"), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("Parameter model_name is required.\n")


def test_an_input_name_with_a_line_break_is_refused(inference):
    error = failure(lambda: inference.Predictions(request("probe", **{"a\r\nb": b"x"}),
                                                  timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_handler_that_fails_is_unavailable_with_torchserves_details(inference):
    error = failure(lambda: inference.Predictions(request("probe", fail=b""), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "Prediction failed\norg.pytorch.serve.http.InternalServerException"


def test_a_status_the_handler_sets_is_its_answer_not_an_error(inference):
    answer = inference.Predictions(request("probe", status=b"404"), timeout=TIMEOUT)
    assert json.loads(answer.prediction) == {"status": ["bytes", "404"]}


def test_a_message_over_max_request_size_is_resource_exhausted(inference):
    error = failure(lambda: inference.Predictions(
        request("echo", data=b"x" * (MAX_REQUEST_SIZE + 1)), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_stream_predictions_sends_each_part_as_the_handler_sends_it(inference):
    arrivals = []
    for answer in inference.StreamPredictions(request("probe", parts=b"3", gap=b"0.3"),
                                              timeout=TIMEOUT):
        arrivals.append((time.monotonic(), answer.prediction))
    assert [prediction for _, prediction in arrivals] == [b"part0 ", b"part1 ", b"part2 ", b"last"]
    assert arrivals[-1][0] - arrivals[0][0] > 0.6  # the first came while the handler still ran


def test_stream_predictions_of_an_answer_that_does_not_stream_is_one_message(inference):
    answers = list(inference.StreamPredictions(request("echo", data=b"once"), timeout=TIMEOUT))
    assert [answer.prediction for answer in answers] == [b"once"]


def test_stream_predictions_of_an_unknown_model_is_not_found(inference):
    error = failure(lambda: list(inference.StreamPredictions(request("nope"), timeout=TIMEOUT)))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_predictions_of_a_streamed_answer_joins_its_parts(inference):
    answer = inference.Predictions(request("probe", parts=b"2"), timeout=TIMEOUT)
    assert answer.prediction == b"part0 part1 last"


def test_stream_predictions2_keeps_each_sequence_in_order(inference):
    """TorchServe's test_inference_stream2_apis: two streams at once, each its own sequence."""
    sums: dict[str, list[bytes]] = {}

    def send(sequence_id: str) -> None:
        requests = (request("sums", sequence_id=sequence_id, data=str(n).encode()) for n in (1, 2, 3))
        sums[sequence_id] = [answer.prediction for answer in
                             inference.StreamPredictions2(requests, timeout=TIMEOUT)]

    threads = [threading.Thread(target=send, args=(f"seq_{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sums == {"seq_0": [b"1", b"3", b"6"], "seq_1": [b"1", b"3", b"6"]}


def test_stream_predictions2_reports_a_failed_request_in_its_status_and_goes_on(inference):
    requests = [request("probe", sequence_id="s", fail=b""), request("echo", data=b"no sequence"),
                request("echo", sequence_id="s", data=b"after")]
    answers = list(inference.StreamPredictions2(iter(requests), timeout=TIMEOUT))
    failed = {(answer.status.code, answer.status.message) for answer in answers
              if answer.HasField("status")}
    assert failed == {(grpc.StatusCode.UNAVAILABLE.value[0], "Prediction failed"),
                      (grpc.StatusCode.INVALID_ARGUMENT.value[0], "Parameter sequenceId is required.")}
    assert [answer.prediction for answer in answers if not answer.HasField("status")] == [b"after"]


def test_a_batch_can_hold_rest_and_grpc_requests(server, inference):
    """mates answers with the request ids of its batch: one REST and one gRPC request queued
    behind a busy worker leave together (batchSize 2)."""
    url = f"{server.inference_url}/predictions/mates"
    busy = threading.Thread(target=httpx.post, args=(url,), kwargs={"content": b"sleep:1",
                                                                    "timeout": TIMEOUT})
    busy.start()
    time.sleep(0.3)
    answers: dict[str, list] = {}
    rest = threading.Thread(target=lambda: answers.update(
        rest=httpx.post(url, content=b"rest", timeout=TIMEOUT).json()))
    rest.start()
    answers["grpc"] = json.loads(inference.Predictions(request("mates", body=b"grpc"),
                                                       timeout=TIMEOUT).prediction)
    rest.join()
    busy.join()
    assert len(answers["grpc"]) == 2 and answers["rest"] == answers["grpc"]


def test_grpc_predictions_are_counted_in_the_metrics(server, inference):
    def counted() -> float:
        text = httpx.get(f"{server.metrics_url}/metrics", timeout=TIMEOUT).text
        found = re.search(r'ts_inference_requests_total\{[^}]*model_name="probe"[^}]*\} (\S+)', text)
        return float(found.group(1)) if found else 0.0

    before = counted()
    inference.Predictions(request("probe", data=b"count me"), timeout=TIMEOUT)
    assert counted() == before + 1


@pytest.fixture(scope="module")
def token_server(store, tmp_path_factory):
    directory = tmp_path_factory.mktemp("grpc-tokens")
    server = start_server(directory, store, ["echo.mar"], disable_token_authorization="false")
    server.keys = json.loads((directory / "key_file.json").read_text())
    yield server
    server.stop()


def test_with_token_authorization_a_call_without_the_inference_key_is_permission_denied(token_server):
    channel, stub = inference_stub(token_server.grpc_inference_target)
    with channel:
        for metadata in [(), bearer("wrong"), bearer(token_server.keys["management"]["key"])]:
            error = failure(lambda: stub.Ping(empty_pb2.Empty(), metadata=metadata, timeout=TIMEOUT))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error.details() == ("Token Authorization failed. Token either incorrect, "
                                       "expired, or not provided correctly")


def test_with_token_authorization_a_call_with_the_inference_key_is_served(token_server):
    channel, stub = inference_stub(token_server.grpc_inference_target)
    with channel:
        answer = stub.Predictions(request("echo", data=b"key"), timeout=TIMEOUT,
                                  metadata=bearer(token_server.keys["inference"]["key"]))
    assert answer.prediction == b"key"


def test_a_regenerated_inference_key_is_in_force_on_grpc_when_regeneration_answers(token_server):
    old = token_server.keys["inference"]["key"]
    regenerated = httpx.get(f"{token_server.management_url}/token", params={"type": "inference"},
                            headers={"Authorization": f"Bearer {token_server.keys['API']['key']}"},
                            timeout=TIMEOUT)
    assert regenerated.status_code == 200
    new = json.loads((token_server.log_path.parent / "key_file.json").read_text())["inference"]["key"]
    token_server.keys["inference"]["key"] = new
    channel, stub = inference_stub(token_server.grpc_inference_target)
    with channel:
        assert stub.Ping(empty_pb2.Empty(), metadata=bearer(new), timeout=TIMEOUT).health
        error = failure(lambda: stub.Ping(empty_pb2.Empty(), metadata=bearer(old), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_enable_grpc_ssl_serves_grpc_over_tls_with_the_pem_files(store, tmp_path):
    from test_tls import self_signed

    key, certificate, _, _ = self_signed(tmp_path, "grpc")
    server = start_server(tmp_path, store, ["echo.mar"], enable_grpc_ssl="true",
                          private_key_file=key, certificate_file=certificate)
    try:
        trusted = grpc.ssl_channel_credentials(root_certificates=certificate.read_bytes())
        channel, stub = inference_stub(server.grpc_inference_target, trusted)
        with channel:
            assert stub.Predictions(request("echo", data=b"tls"), timeout=TIMEOUT).prediction == b"tls"
        channel, stub = inference_stub(server.grpc_inference_target)
        with channel:  # plain gRPC gets nowhere
            assert failure(lambda: stub.Ping(empty_pb2.Empty(), timeout=TIMEOUT)).code() == \
                grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def start_refused(tmp_path: Path, store: Path, **config) -> tuple[int, str]:
    """(exit code, ready report) of a server that is expected not to start."""
    config_file = tmp_path / "config.properties"
    write_loopback_config(config_file, **config)
    with open(tmp_path / "server.log", "wb") as log:
        process, report = spawn_server(["--model-store", str(store), "--ts-config", str(config_file)],
                                       log=log, env=dict(os.environ, TMPDIR=str(tmp_path)),
                                       cwd=tmp_path)
    try:
        return process.wait(TIMEOUT), report
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_busy_grpc_inference_port_stops_the_start_and_says_so(store, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, report = start_refused(tmp_path, store, grpc_inference_port=port)
    assert code == 1
    assert report == (f"error: cannot listen on 127.0.0.1:{port} (grpc_inference): "
                      "Address already in use")


def test_enable_grpc_ssl_without_the_pem_files_stops_the_start(store, tmp_path):
    code, report = start_refused(tmp_path, store, enable_grpc_ssl="true")
    assert code == 1
    assert "enable_grpc_ssl needs private_key_file and certificate_file" in report


def grpc_process(server) -> int:
    [pid] = [pid for pid in children(server.process.pid) if is_grpc_process(pid)]
    return pid


def test_the_grpc_process_is_restarted_on_the_same_port_when_it_dies(store, tmp_path):
    server = start_server(tmp_path, store, ["echo.mar"])
    try:
        os.kill(grpc_process(server), signal.SIGKILL)
        channel, stub = inference_stub(server.grpc_inference_target)
        with channel:
            answer = stub.Predictions(request("echo", data=b"again"), timeout=TIMEOUT,
                                      wait_for_ready=True)
        assert answer.prediction == b"again"
    finally:
        server.stop()


def test_the_grpc_process_exits_with_the_server_even_when_it_is_killed(store, tmp_path):
    server = start_server(tmp_path, store, ["echo.mar"])
    pid = grpc_process(server)
    server.process.kill()
    server.process.wait()
    wait_until(lambda: not pid_alive(pid), timeout=10)


def test_sigterm_lets_an_in_flight_grpc_call_finish(store, tmp_path):
    server = start_server(tmp_path, store, ["probe.mar"])
    try:
        channel, stub = inference_stub(server.grpc_inference_target)
        with channel:
            call = stub.Predictions.future(request("probe", sleep=b"1", data=b"late"),
                                           timeout=TIMEOUT)
            time.sleep(0.3)
            assert server.stop() == 0
            assert json.loads(call.result().prediction)["data"] == ["bytes", "late"]
    finally:
        server.stop()  # a failure above must not leave the server and its workers running
