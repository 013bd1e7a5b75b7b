"""Client stubs for the gRPC tests, generated at test time with grpcio-tools from the .proto
files pyserve ships, as TorchServe's ts_scripts/torchserve_grpc_client.py has its users
generate them. The tests never import pyserve's own generated modules: both would define the
same messages in protobuf's one default pool.
"""

from __future__ import annotations

import atexit
import importlib
import shutil
import sys
import tempfile
from functools import cache
from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace

import grpc_tools
from google.rpc import status_pb2
from grpc_tools import protoc

PROTOS = Path(str(files("pyserve.grpc.protos")))
MODULES = ("inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc")


def protoc_includes() -> list[str]:
    """protoc's -I options for the well-known protos and google/rpc/status.proto."""
    return [f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
            f"-I{Path(status_pb2.__file__).parents[2]}"]


@cache
def stubs() -> SimpleNamespace:
    """inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc."""
    out = Path(tempfile.mkdtemp(prefix="pyserve-grpc-stubs-"))
    atexit.register(shutil.rmtree, out, True)
    code = protoc.main(["protoc", f"-I{PROTOS}", *protoc_includes(), f"--python_out={out}",
                        f"--grpc_python_out={out}", str(PROTOS / "inference.proto"),
                        str(PROTOS / "management.proto")])
    assert code == 0, "protoc failed"
    sys.path.insert(0, str(out))
    return SimpleNamespace(**{name: importlib.import_module(name) for name in MODULES})


def bearer(key: str) -> tuple[tuple[str, str]]:
    """gRPC metadata carrying a token, as TorchServe's client sends it."""
    return (("authorization", f"Bearer {key}"),)
