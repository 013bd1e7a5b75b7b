"""`pyserve kserve`: the container command of pyserve's KServe serving runtime (deploy/kserve).

KServe mounts the model under /mnt/models (TorchServe's layout: config/config.properties and
model-store/*.mar) and sends the predictor HTTP on port 8080 and gRPC on 8081. TorchServe's
KServe image runs TorchServe (its config.properties puts it on 8085) behind KServe's own
Python model server (kubernetes/kserve/kserve_wrapper), which takes 8080 and 8081 and
forwards every request. pyserve answers KServe v1, v2 and the Open Inference gRPC protocol
itself, so there is no wrapper: the same config.properties is read as `pyserve start` reads
it, and only the listeners KServe reaches move onto KServe's ports. The server stays in the
foreground, as a container's main process must.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from pyserve.config import ConfigError, Settings, parse_address

MODEL_STORE = "/mnt/models/model-store"
CONFIG_FILE = "/mnt/models/config/config.properties"
HTTP_PORT = 8080  # where KServe sends a predictor's HTTP (v1 and v2 REST)
GRPC_PORT = 8081  # KServe's model server gRPC port (grpc-v2)
# Where the management API goes when config.properties puts it on one of KServe's ports:
# kserve_wrapper's default address for TorchServe's own APIs, reachable only inside the pod.
MANAGEMENT_ADDRESS = "http://127.0.0.1:8085"
PROTOCOLS = ("v1", "v2", "grpc-v2")  # PROTOCOL_VERSION, as KServe sets it for TorchServe


def check_protocol_version(env: Mapping[str, str]) -> None:
    """ConfigError unless PROTOCOL_VERSION (v1 when unset) is one of KServe's, as kserve_wrapper
    refuses another. It chooses nothing: pyserve serves all three at once."""
    protocol = env.get("PROTOCOL_VERSION") or "v1"
    if protocol not in PROTOCOLS:
        raise ConfigError(f"PROTOCOL_VERSION={protocol!r} is not a KServe protocol pyserve "
                          f"serves ({', '.join(PROTOCOLS)})")


def kserve_settings(settings: Settings) -> Settings:
    """`settings` with KServe's listeners: inference on 0.0.0.0:8080, gRPC inference (TorchServe's
    API and the Open Inference Protocol) on 0.0.0.0:8081, and management moved off those ports
    (the server's `listening:` line says where each listener went)."""
    management = settings.management_address
    if parse_address(management)[1] in (HTTP_PORT, GRPC_PORT):
        management = MANAGEMENT_ADDRESS
    return dataclasses.replace(settings, inference_address=f"http://0.0.0.0:{HTTP_PORT}",
                               grpc_inference_address="0.0.0.0", grpc_inference_port=GRPC_PORT,
                               management_address=management)
