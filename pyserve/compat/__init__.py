"""Lets handlers written for TorchServe import ``ts.*`` when torchserve is not installed.

The names resolve to pyserve's own modules (pyserve.compat.ts.*), which re-export the
real classes, so ``ts.context.Context`` *is* the Context the worker hands out. When the
real torchserve package is importable it is left alone and used as it is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

PREFIX = "pyserve.compat."


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass  # already executed under its own name


class TsAliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "ts" and not fullname.startswith("ts."):
            return None
        target = PREFIX + fullname
        spec = importlib.util.find_spec(target)
        if spec is None:
            return None
        is_package = spec.submodule_search_locations is not None
        return importlib.util.spec_from_loader(fullname, _Alias(target), is_package=is_package)


def install_ts_alias() -> bool:
    """Serves ``ts`` from pyserve unless the real package is importable; True if installed."""
    if "ts" in sys.modules or importlib.util.find_spec("ts") is not None:
        return False
    if not any(isinstance(finder, TsAliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(TsAliasFinder())
    return True
