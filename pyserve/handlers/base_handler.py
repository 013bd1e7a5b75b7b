"""TorchServe's BaseHandler: loads an eager, TorchScript or ONNX model and runs it per batch.

Handlers written for TorchServe subclass it and call its helpers by name, so the public
methods, attributes and private helpers keep TorchServe's names and signatures.
"""

from __future__ import annotations

import abc
import functools
import importlib.util
import logging
import os
import sys
import time

import torch

from pyserve.handlers.util import PredictionException, list_classes_from_module, load_label_mapping

logger = logging.getLogger(__name__)


def timed(func):
    """Records `ts_handler_<method>` (ms) when the model's yaml says `handler: {profile: true}`."""

    @functools.wraps(func)
    def wrapper(self, *args, **kwargs):
        context = self.context
        config = getattr(context, "model_yaml_config", None) or {}
        if not (config.get("handler") or {}).get("profile"):
            return func(self, *args, **kwargs)
        start = time.time()
        result = func(self, *args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the work queued on the GPU belongs to this method
        if context.metrics is not None:
            context.metrics.add_time("ts_handler_" + func.__name__, (time.time() - start) * 1000)
        return result

    return wrapper


def captum_attr():
    """captum.attr, imported only when an explanation is asked for: most servers never need it."""
    try:
        import captum.attr
    except ImportError as error:
        raise PredictionException(
            "Explanations need captum, which is not installed: pip install captum", 501
        ) from error
    return captum.attr


def _import_model_file(path: str):
    """Imports the eager model's .py by path, reusing it if the handler already imported it."""
    name = os.path.splitext(os.path.basename(path))[0]
    loaded = sys.modules.get(name)
    if loaded is not None and os.path.realpath(getattr(loaded, "__file__", "") or "") == os.path.realpath(path):
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered under its plain name, as TorchServe's import_module would, so that pickles
    # and dataclasses that look the module up by name find it.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class BaseHandler(abc.ABC):
    """Default handler: tensor in, model(tensor) under inference_mode, list out."""

    def __init__(self):
        self.model = None
        self.mapping = None
        self.device = None
        self.initialized = False
        self.context = None
        self.model_pt_path = None
        self.manifest = None
        self.map_location = None
        self.explain = False
        self.target = 0
        self.profiler_args = {}

    def initialize(self, context):
        self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")

        self.manifest = context.manifest
        model_dir = properties.get("model_dir")
        model_info = (self.manifest or {}).get("model", {})
        serialized_file = model_info.get("serializedFile")
        self.model_pt_path = os.path.join(model_dir, serialized_file) if serialized_file else None
        self.model = self.__load_model(model_dir, model_info.get("modelFile", ""))
        self.__compile_model()
        logger.debug("Model file %s loaded successfully", self.model_pt_path)

        self.mapping = load_label_mapping(os.path.join(model_dir, "index_to_name.json"))
        self.initialized = True

    # Double-underscore names are mangled per class, so a subclass's own helper of the same
    # name cannot silently replace these steps of initialize.
    def __load_model(self, model_dir, model_file):
        path = self.model_pt_path or ""
        if model_file:
            model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
            model.to(self.device)
            model.eval()
            return model
        if path.endswith(".pt"):
            model = self._load_torchscript_model(path)
            model.eval()
            return model
        if path.endswith(".onnx"):
            return self.__load_onnx_model(path)
        if path.endswith(".so") and self._use_torch_export_aot_compile():
            if self.map_location == "cuda":
                torch.cuda.set_device(self.device)  # the AOT loader takes no device index
            return self._load_torch_export_aot_compile(path)
        raise RuntimeError("No model weights could be loaded")

    def __load_onnx_model(self, path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeError(
                f"{os.path.basename(path)} is an ONNX model: serving it needs onnxruntime "
                "(pip install onnxruntime)"
            ) from None
        providers = ["CPUExecutionProvider"]
        if self.map_location == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count()
        return ort.InferenceSession(path, providers=providers, sess_options=options)

    def __compile_options(self):
        """torch.compile's keyword arguments from the yaml's `pt2`, or None to leave the model be."""
        pt2 = self.model_yaml_config.get("pt2")
        if pt2 is None:
            return None
        if isinstance(pt2, dict) and "compile" in pt2:
            options = dict(pt2["compile"])
            return options if options.pop("enable", False) is True else None
        if isinstance(pt2, dict) and "export" in pt2:
            return None
        if isinstance(pt2, str):
            return {"backend": pt2}
        if isinstance(pt2, dict):
            logger.warning("pt2 as torch.compile's arguments is deprecated; use pt2: {compile: {enable: true, ...}}")
            return dict(pt2)
        raise ValueError("pt2 should be str or dict")

    def __compile_model(self):
        options = self.__compile_options()
        if options is None:
            return
        try:
            self.model = torch.compile(self.model, **options)
            logger.info("Compiled model with %s", options)
        except Exception as error:  # as TorchServe: a failed compile still serves the model
            logger.warning("Compiling model with %s has failed; proceeding without compilation: %s",
                           options, error)

    def _load_torch_export_aot_compile(self, model_so_path):
        return torch._export.aot_load(model_so_path, self.map_location)

    def _use_torch_export_aot_compile(self):
        pt2 = getattr(self, "model_yaml_config", {}).get("pt2")
        export = pt2.get("export") if isinstance(pt2, dict) else None
        return isinstance(export, dict) and export.get("aot_compile") is True

    def _load_torchscript_model(self, model_pt_path):
        return torch.jit.load(model_pt_path, map_location=self.device)

    def _load_pickled_model(self, model_dir, model_file, model_pt_path):
        """Instantiates the one nn.Module class of `model_file` and loads its state_dict."""
        model_def_path = os.path.join(model_dir, model_file)
        if not os.path.isfile(model_def_path):
            raise RuntimeError("Missing the model.py file")
        module = _import_model_file(model_def_path)
        model_classes = list_classes_from_module(module, torch.nn.Module)
        if len(model_classes) != 1:
            raise ValueError(f"Expected only one class as model definition. {model_classes}")
        model = model_classes[0]()
        if model_pt_path and os.path.isfile(model_pt_path):
            model.load_state_dict(torch.load(model_pt_path, map_location=self.device))
        return model

    @timed
    def preprocess(self, data):
        return torch.as_tensor(data, device=self.device)

    @timed
    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    @timed
    def postprocess(self, data):
        return data.tolist()

    def handle(self, data, context):
        """describe -> [describe_handle()]; explain -> explain_handle; else the three steps."""
        start_time = time.time()
        self.context = context
        if self._is_describe():
            output = [self.describe_handle()]
        else:
            data_preprocess = self.preprocess(data)
            if self._is_explain():
                output = self.explain_handle(data_preprocess, data)
            else:
                output = self.postprocess(self.inference(data_preprocess))
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            metrics.add_time("HandlerTime", round((time.time() - start_time) * 1000, 2), None, "ms")
        return output

    def explain_handle(self, data_preprocess, raw_data):
        """Explanations of the first request, for its `target` class (default 0)."""
        inputs, target = None, 0
        row = raw_data[0]
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = row.get("target") or 0
        return self.get_insights(data_preprocess, inputs, target)

    def get_insights(self, tensor_data, raw_data, target=0):
        raise NotImplementedError(f"{type(self).__name__} does not implement get_insights (explanations)")

    def __request_header(self, key):
        if self.context is None or not self.context.request_processor:
            return None
        return self.context.get_request_header(0, key)

    def _is_explain(self):
        if self.__request_header("explain") == "True":
            self.explain = True
            return True
        return False

    def _is_describe(self):
        return self.__request_header("describe") == "True"

    def describe_handle(self):
        """What a describe request answers; None unless a subclass says more."""
        return None

    def get_device(self):
        return self.device
