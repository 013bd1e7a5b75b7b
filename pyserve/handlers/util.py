"""Helpers handlers use, with TorchServe's names (ts.utils.util)."""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import logging
import os

import yaml

log = logging.getLogger("pyserve.handlers")


class PredictionException(Exception):
    """Raised by a handler to answer every request of the batch with `error_code` and `message`."""

    def __init__(self, message: str, error_code: int = 500):
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


def list_classes_from_module(module, parent_class=None) -> list[type]:
    """Classes defined in `module` itself (not imported into it), optionally of one base."""
    classes = [
        member for _, member in inspect.getmembers(
            module, lambda m: inspect.isclass(m) and m.__module__ == module.__name__
        )
    ]
    if parent_class is not None:
        return [cls for cls in classes if issubclass(cls, parent_class)]
    return classes


def load_label_mapping(mapping_file_path: str) -> dict | None:
    """Reads index_to_name.json ({"0": "cat", ...}); None (with a warning) if it is missing."""
    if not os.path.isfile(mapping_file_path):
        log.warning("%r is missing. Inference output will not include class name.", mapping_file_path)
        return None
    with open(mapping_file_path) as file:
        mapping = json.load(file)
    if not isinstance(mapping, dict):
        raise ValueError('index->name JSON mapping should be in "class": "label" format.')
    # Older examples list the names under "object_type_names".
    if isinstance(mapping.get("object_type_names"), list):
        return {str(index): name for index, name in enumerate(mapping["object_type_names"])}
    for key, value in mapping.items():
        label = value[-1] if isinstance(value, list) else value
        if not isinstance(label, str):
            raise ValueError("labels in index->name mapping must be either str or List[str]")
        mapping[key] = label
    return mapping


def map_class_to_label(probs: list, mapping: dict | None = None, lbl_classes=None) -> list[dict]:
    """[[p0, p1, ...], ...] (+ class ids) -> [{label: probability, ...}, ...]."""
    if not isinstance(probs, list):
        raise TypeError("Convert classes to list before doing mapping")
    if mapping is not None and not isinstance(mapping, dict):
        raise TypeError("Mapping must be a dict")
    if lbl_classes is None:
        lbl_classes = itertools.repeat(range(len(probs[0])), len(probs))
    return [
        {(mapping[str(cls)] if mapping is not None else str(cls)): prob for cls, prob in zip(*row)}
        for row in zip(lbl_classes, probs)
    ]


def get_yaml_config(yaml_file_path: str) -> dict:
    with open(yaml_file_path) as file:
        return yaml.safe_load(file) or {}


def import_class(class_name: str, module_prefix: str | None = None) -> type:
    """TorchServe's ts.handler_utils.utils.import_class: "module.Class" (or "Class" under
    `module_prefix`) -> the class; ImportError naming what is missing."""
    if not class_name:
        raise ImportError("class name is not defined")
    module_name, _, name = class_name.rpartition(".")
    if module_prefix:
        module = importlib.import_module(f"{module_prefix}.{module_name}" if module_name
                                         else module_prefix)
    elif module_name:
        module = importlib.import_module(module_name)
    else:
        raise ImportError("module name is not defined.")
    found = getattr(module, name, None)
    if found is None:
        raise ImportError(f"class:{name} not found in module:{module_name}.")
    return found
