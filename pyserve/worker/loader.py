"""Finds a handler's entry point the way TorchServe's model loader does.

``--handler`` may name a file or module with a module-level ``handle(data, context)``,
``module:function``, a module that defines exactly one class with ``handle``, or one of
the built-in handler names (resolved to pyserve.handlers). With ``service_envelope`` set, the
handler's ``handle`` is wrapped in that envelope (pyserve.worker.envelopes), as TorchServe does.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from pyserve.handlers.util import list_classes_from_module
from pyserve.worker.context import Context
from pyserve.worker.envelopes import envelope_class

BUILTIN_PACKAGE = "pyserve.handlers"


class EntryPoint:
    """The callable run per batch, after `initialize` ran once at load."""

    def __init__(self, handle: Callable[[Any, Context], Any], initialize: Callable[[Context], Any]):
        self.handle = handle
        self.initialize = initialize


def _import(module_name: str, handler: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # Only the handler's own module being absent means "try the built-ins"; a missing
        # import inside the user's module must surface as it is.
        if error.name != module_name:
            raise
    try:
        return importlib.import_module(f"{BUILTIN_PACKAGE}.{handler}")
    except ModuleNotFoundError as error:
        if error.name != f"{BUILTIN_PACKAGE}.{handler}":
            raise
        raise ModuleNotFoundError(
            f"handler {handler!r}: no module {module_name!r} in the model folder "
            f"and no built-in handler of that name",
            name=module_name,
        ) from None


def load_entry_point(handler: str, envelope: str | None = None) -> EntryPoint:
    entry_point = _find_entry_point(handler)
    if envelope:
        entry_point.handle = envelope_class(envelope)(entry_point.handle).handle
    return entry_point


def _find_entry_point(handler: str) -> EntryPoint:
    module_part, _, function_name = handler.partition(":")
    module_name = module_part.rsplit("/", 1)[-1]
    if module_name.endswith(".py"):
        module_name = module_name[:-3]
    module = _import(module_name, module_part)
    function_name = function_name or "handle"

    if hasattr(module, function_name):
        function = getattr(module, function_name)
        # A function entry point is initialized by being called once with data=None.
        return EntryPoint(function, lambda context: function(None, context))

    classes = list_classes_from_module(module)
    if len(classes) != 1:
        raise ValueError(
            "Expected only one class in custom service code or a function entry point "
            f"{[cls.__name__ for cls in classes]}"
        )
    service = classes[0]()
    if not hasattr(service, "handle"):
        raise ValueError(f"class {classes[0].__name__} in {module.__name__} has no handle method")
    initialize = getattr(service, "initialize", lambda context: None)
    return EntryPoint(service.handle, initialize)
