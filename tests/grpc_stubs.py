"""Client stubs for the gRPC tests, generated at test time with grpcio-tools from the .proto
files pyserve ships, as TorchServe's ts_scripts/torchserve_grpc_client.py has its users
generate them.

protobuf has one default pool per process, and other tests import pyserve's own generated
modules (through pyserve.server) into it; a second file defining the same messages would be
refused. So the protos are compiled under the path pyserve's own modules were compiled from:
the pool takes an identical file again, and the stubs load under names of their own.
"""

from __future__ import annotations

import ast
import atexit
import importlib
import importlib.util
import re
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
    tree = out / "pyserve" / "grpc" / "protos"
    tree.mkdir(parents=True)
    for proto in ("inference.proto", "management.proto"):
        shutil.copy(PROTOS / proto, tree)
    code = protoc.main(["protoc", f"-I{out}", *protoc_includes(), f"--python_out={out}",
                        f"--grpc_python_out={out}", "pyserve/grpc/protos/inference.proto",
                        "pyserve/grpc/protos/management.proto"])
    assert code == 0, "protoc failed"
    return SimpleNamespace(**{name: _load(f"test_stub_{name}", tree / f"{name}.py")
                              for name in MODULES})


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def serialized_descriptor(generated: Path) -> bytes:
    """The descriptor a generated _pb2 module registers, read without importing it."""
    return ast.literal_eval(re.search(r"AddSerializedFile\((b'.*?')\)\n",
                                      generated.read_text()).group(1))


def bearer(key: str) -> tuple[tuple[str, str]]:
    """gRPC metadata carrying a token, as TorchServe's client sends it."""
    return (("authorization", f"Bearer {key}"),)
