"""pyserve as a KServe serving runtime (deploy/kserve, deploy/Dockerfile).

No Kubernetes runs here. The manifests are checked for what KServe reads from them, the
Dockerfile for agreeing with the runtime, and then the runtime's container is run as a pod
would run it: its command and args from serving-runtime.yaml, its env as KServe fills it in,
TorchServe's layout mounted on /mnt/models, in namespaces of its own (a network with KServe's
fixed ports 8080 and 8081, a private /tmp, the server as PID 1), which needs root, as CI has.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import HANDLERS, archive_model, wait_until
from pyserve import kserve_runtime
from pyserve.cli import build_parser
from pyserve.processes import alive, children

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RUNTIME = yaml.safe_load((DEPLOY / "kserve" / "serving-runtime.yaml").read_text())
SERVICES = list(yaml.safe_load_all((DEPLOY / "kserve" / "inference-service.yaml").read_text()))
CONTAINER = RUNTIME["spec"]["containers"][0]
# What KServe does for a runtime of server type torchserve (SetTorchServeDefaults): the
# serviceEnvelope label from the protocol, and PROTOCOL_VERSION in the container's env.
SERVICE_ENVELOPE = {"v1": "kserve", "v2": "kservev2", "grpc-v2": "kservev2"}


def dockerfile_instruction(name: str) -> list[str]:
    """The exec form (a JSON list) of the Dockerfile's last `name` instruction."""
    text = (DEPLOY / "Dockerfile").read_text()
    return json.loads(re.findall(rf"^{name}\s+(\[.*\])\s*$", text, re.MULTILINE)[-1])


# -- the manifests and the image ------------------------------------------------------------

def test_the_runtime_is_a_serving_runtime_named_kserve_pyserve():
    assert (RUNTIME["apiVersion"], RUNTIME["kind"], RUNTIME["metadata"]["name"]) == (
        "serving.kserve.io/v1alpha1", "ServingRuntime", "kserve-pyserve")


def test_the_runtime_serves_pytorch_models_over_v1_v2_and_grpc_v2():
    assert [fmt["name"] for fmt in RUNTIME["spec"]["supportedModelFormats"]] == ["pytorch"]
    assert RUNTIME["spec"]["protocolVersions"] == ["v1", "v2", "grpc-v2"]


def test_kserve_treats_the_runtime_as_torchserve_and_passes_the_envelope_label_on():
    assert RUNTIME["metadata"]["annotations"]["serving.kserve.io/server-type"] == "torchserve"
    assert {"name": "TS_SERVICE_ENVELOPE", "value": "{{.Labels.serviceEnvelope}}"} in CONTAINER["env"]


def test_the_container_runs_pyserve_kserve_on_torchserves_kserve_layout():
    assert CONTAINER["name"] == "kserve-container"
    assert CONTAINER["command"] == ["pyserve", "kserve"]
    assert CONTAINER["args"] == ["--model-store=/mnt/models/model-store",
                                 "--ts-config=/mnt/models/config/config.properties"]


def test_the_container_runs_as_the_non_root_user_1000_without_privileges():
    context = CONTAINER["securityContext"]
    assert (context["runAsUser"], context["runAsNonRoot"], context["allowPrivilegeEscalation"],
            context["capabilities"]["drop"]) == (1000, True, False, ["ALL"])


def test_the_runtime_declares_no_port_so_kserve_sends_http_to_8080_where_pyserve_serves_it():
    assert "ports" not in CONTAINER
    assert kserve_runtime.HTTP_PORT == 8080  # KServe's default container port


def test_every_inference_service_runs_a_pytorch_model_from_storage_on_the_runtime():
    for service in SERVICES:
        assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1",
                                                            "InferenceService")
        model = service["spec"]["predictor"]["model"]
        assert model["runtime"] == RUNTIME["metadata"]["name"]
        assert model["modelFormat"]["name"] == "pytorch"
        assert model["protocolVersion"] in RUNTIME["spec"]["protocolVersions"]
        assert model["storageUri"].startswith(("gs://", "s3://", "pvc://", "https://"))


def test_a_grpc_inference_service_exposes_the_port_pyserve_serves_grpc_on_as_h2c():
    [grpc] = [service["spec"]["predictor"]["model"] for service in SERVICES
              if service["spec"]["predictor"]["model"]["protocolVersion"] == "grpc-v2"]
    assert grpc["ports"] == [{"name": "h2c", "containerPort": kserve_runtime.GRPC_PORT,
                              "protocol": "TCP"}]


def test_the_images_entrypoint_and_cmd_are_the_runtimes_command():
    assert dockerfile_instruction("ENTRYPOINT") + dockerfile_instruction("CMD") == CONTAINER["command"]


def test_the_images_command_alone_reads_the_layout_the_runtime_names():
    parser = build_parser()
    plain = parser.parse_args(CONTAINER["command"][1:])
    as_the_runtime = parser.parse_args(CONTAINER["command"][1:] + CONTAINER["args"])
    assert (plain.model_store, plain.ts_config) == (as_the_runtime.model_store,
                                                    as_the_runtime.ts_config)


def test_the_image_runs_as_user_1000_and_asks_for_no_dev_shm():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 1000$", text, re.MULTILINE)
    assert "/dev/shm" not in "".join(line for line in text.splitlines() if not line.startswith("#"))


def test_an_unknown_protocol_version_stops_the_command_naming_it(tmp_path):
    result = subprocess.run([sys.executable, "-P", "-m", "pyserve", *CONTAINER["command"][1:]],
                            env=dict(os.environ, PROTOCOL_VERSION="v3"), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "PROTOCOL_VERSION='v3' is not a KServe protocol pyserve serves" in result.stderr


# -- the runtime's container, run as a pod runs it ------------------------------------------

# Inside new mount, network and PID namespaces: loopback up, TorchServe's layout ($1) on
# /mnt/models, a /tmp of its own (the pid file, unpacked archives), a home like the image's
# WORKDIR; then the container's command replaces the shell as PID 1, as in a container.
POD_SETUP = """set -e
ip link set lo up
mount -t tmpfs tmpfs /mnt
mkdir /mnt/models
mount --bind "$1" /mnt/models
mount -t tmpfs tmpfs /tmp
mkdir /tmp/home
cd /tmp/home
shift
exec "$@"
"""
NAMESPACES = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]

# Runs in the pod's network: waits until the first request answers 200 (the model is ready),
# gives up if the pod ($1, a pid) is gone, then sends every request (JSON in $2) to 8080.
HTTP_CLIENT = """
import json, os, sys, time, urllib.error, urllib.request
pod, requests = int(sys.argv[1]), json.loads(sys.argv[2])

def call(method, path, body):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request("http://127.0.0.1:8080" + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return [reply.status, json.loads(reply.read() or b"null")]
    except urllib.error.HTTPError as error:
        return [error.code, error.read().decode(errors="replace")]

deadline = time.monotonic() + 120
while True:
    try:
        if call(*requests[0])[0] == 200:
            break
    except OSError:
        pass
    os.kill(pod, 0)
    assert time.monotonic() < deadline, "not ready within 120 s"
    time.sleep(0.2)
print(json.dumps([call(*request) for request in requests]))
"""

# Runs in the pod's network: KServe's Open Inference Protocol over gRPC on 8081, with the
# protocol's reference client.
GRPC_CLIENT = """
import json, numpy, tritonclient.grpc as grpc
client = grpc.InferenceServerClient("127.0.0.1:8081")
given = grpc.InferInput("x", [3], "FP32")
given.set_data_from_numpy(numpy.array([1.5, 2, -4], dtype=numpy.float32))
answer = client.infer("double", [given])
print(json.dumps([client.is_server_ready(), client.is_model_ready("double"),
                  answer.as_numpy("x").tolist()]))
"""


def unshare_works() -> str | None:
    """Why pods cannot run here, or None."""
    if not all(shutil.which(tool) for tool in ("unshare", "nsenter", "ip")):
        return "needs unshare, nsenter and ip (util-linux, iproute2)"
    probe = subprocess.run([*NAMESPACES, "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare is not permitted: {probe.stderr.strip()}"


needs_namespaces = pytest.mark.skipif(unshare_works() is not None, reason=str(unshare_works()))


def kserve_layout(root: Path, model: str, handler: Path) -> Path:
    """TorchServe's KServe layout: model-store/<model>.mar, and config/config.properties, the
    shipped example with its model_snapshot naming that archive."""
    archive_model(root / "model-store", model, handler)
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {model: {"1.0": {
        "defaultVersion": True, "marName": f"{model}.mar", "minWorkers": 1, "maxWorkers": 1,
        "batchSize": 1, "maxBatchDelay": 10, "responseTimeout": 60}}}}
    example = (DEPLOY / "kserve" / "config" / "config.properties").read_text()
    (root / "config").mkdir()
    (root / "config" / "config.properties").write_text(re.sub(
        r"^model_snapshot=.*$", "model_snapshot=" + json.dumps(snapshot), example, flags=re.MULTILINE))
    return root


def pod_env(protocol: str) -> dict[str, str]:
    """The container's environment: the image's PATH, the runtime's env with KServe's label
    filled in, and the PROTOCOL_VERSION KServe adds."""
    env = {"PATH": os.environ["PATH"], "HOME": "/tmp/home", "PROTOCOL_VERSION": protocol}
    for variable in CONTAINER["env"]:
        env[variable["name"]] = variable["value"].replace("{{.Labels.serviceEnvelope}}",
                                                          SERVICE_ENVELOPE[protocol])
    return env


def start_pod(layout: Path, protocol: str, log) -> subprocess.Popen:
    return subprocess.Popen(
        [*NAMESPACES, "sh", "-c", POD_SETUP, "pod", str(layout), *CONTAINER["command"],
         *CONTAINER["args"]],
        env=pod_env(protocol), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def container_process(pod: subprocess.Popen) -> int:
    """The pid (here) of the pod's PID 1, the server: unshare forks it once the namespaces
    are made (until then, /proc shows unshare in this test's own namespaces)."""
    wait_until(lambda: pod.poll() is not None or children(pod.pid), timeout=30)
    [pid] = children(pod.pid)
    return pid


def in_pod(pod: subprocess.Popen, script: str, *arguments: str) -> list:
    """`script`'s JSON answer, run in the pod's network namespace."""
    network = f"/proc/{container_process(pod)}/ns/net"
    result = subprocess.run(["nsenter", f"--net={network}", sys.executable, "-c", script,
                             *arguments], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def stop_like_kubernetes(pod: subprocess.Popen) -> tuple[int, set[int]]:
    """SIGTERM to the container's PID 1, as the kubelet sends it; (its exit status, the
    processes it had started that are still alive after it exited)."""
    server = container_process(pod)
    started = set(children(server))
    os.kill(server, signal.SIGTERM)
    status = pod.wait(timeout=90)
    return status, {pid for pid in started if alive(pid)}


def kill_pod(pod: subprocess.Popen) -> None:
    """SIGKILL: unshare takes the pod's PID 1 with it, and the kernel the whole namespace."""
    if pod.poll() is None:
        pod.kill()
        pod.wait()


@needs_namespaces
def test_the_container_serves_kserve_v1_from_the_layouts_snapshot_and_stops_on_sigterm(tmp_path):
    layout = kserve_layout(tmp_path / "models", "sum", HANDLERS / "kserve_v1_sum.py")
    with open(tmp_path / "pod.log", "wb") as log:
        pod = start_pod(layout, "v1", log)
    try:
        ready, predicted = in_pod(pod, HTTP_CLIENT, str(pod.pid), json.dumps([
            ["GET", "/v1/models/sum", None],
            ["POST", "/v1/models/sum:predict", {"instances": [[1, 2], [3, 4, 5]]}]]))
        assert ready == [200, {"name": "sum", "ready": True}]
        assert predicted == [200, {"predictions": [{"sum": 3, "rows": 2}, {"sum": 12, "rows": 2}]}]
        status, left = stop_like_kubernetes(pod)
        assert (status, left) == (0, set()), (tmp_path / "pod.log").read_text()
    finally:
        kill_pod(pod)


@needs_namespaces
def test_the_container_serves_kserve_v2_over_rest_and_grpc_from_the_layouts_snapshot(tmp_path):
    layout = kserve_layout(tmp_path / "models", "double", HANDLERS / "kservev2_double.py")
    with open(tmp_path / "pod.log", "wb") as log:
        pod = start_pod(layout, "v2", log)
    try:
        tensor = {"name": "x", "shape": [2], "datatype": "INT64", "data": [3, -1]}
        ready, server_ready, inferred = in_pod(pod, HTTP_CLIENT, str(pod.pid), json.dumps([
            ["GET", "/v2/models/double/ready", None],
            ["GET", "/v2/health/ready", None],
            ["POST", "/v2/models/double/infer", {"id": "1", "inputs": [tensor]}]]))
        assert (ready[0], server_ready[0], inferred[0]) == (200, 200, 200)
        assert [(output["name"], output["data"]) for output in inferred[1]["outputs"]] == [
            ("x", [6, -2])]
        assert in_pod(pod, GRPC_CLIENT) == [True, True, [3.0, 4.0, -8.0]]
        status, left = stop_like_kubernetes(pod)
        assert (status, left) == (0, set()), (tmp_path / "pod.log").read_text()
    finally:
        kill_pod(pod)
