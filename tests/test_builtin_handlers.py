"""The built-in handlers (`--handler image_classifier` ...) behave as TorchServe's.

Each test runs a handler in-process with a real Context and MetricsCache over a model
folder holding tiny real models saved here.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pyserve.handlers import transforms as T
from pyserve.handlers.base_handler import BaseHandler
from pyserve.handlers.image_classifier import ImageClassifier
from pyserve.handlers.image_segmenter import ImageSegmenter
from pyserve.handlers.object_detector import ObjectDetector
from pyserve.handlers.text_classifier import TextClassifier
from pyserve.handlers.text_utils import basic_english, load_vocab, ngrams_iterator
from pyserve.handlers.util import PredictionException, list_classes_from_module
from pyserve.worker.context import Context, RequestProcessor
from pyserve.worker.metrics import MetricsCache

BUILTINS = {
    "base_handler": "BaseHandler",
    "vision_handler": "VisionHandler",
    "image_classifier": "ImageClassifier",
    "image_segmenter": "ImageSegmenter",
    "object_detector": "ObjectDetector",
    "text_handler": "TextHandler",
    "text_classifier": "TextClassifier",
}
# TorchScript is what many TorchServe archives hold; torch's deprecation notice is not news here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

MODEL_MODULES = ("tiny_linear", "tiny_cnn", "tiny_segmenter", "tiny_detector", "tiny_text", "two_nets")

TINY_LINEAR = """
import torch

class TinyLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)
"""

TINY_CNN = """
import torch

class TinyCnn(torch.nn.Module):
    def __init__(self, classes=6):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))
"""

TINY_SEGMENTER = """
import torch

class TinySegmenter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return {"out": self.head(x)}
"""

# torchvision detection style: one {boxes, labels, scores} dict per image.
TINY_DETECTOR = """
import torch

class TinyDetector(torch.nn.Module):
    def forward(self, images):
        return [
            {
                "boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [0.0, 0.0, 9.0, 9.0]]),
                "labels": torch.tensor([1, 2, 1]),
                "scores": torch.tensor([0.75, 0.25, 0.5]),
            }
            for _ in images
        ]
"""

TINY_TEXT = """
import torch

class TinyText(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(12, 4, mode="mean")
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))
"""

TWO_NETS = """
import torch

class First(torch.nn.Module):
    pass

class Second(torch.nn.Module):
    pass
"""

VOCAB = {"<unk>": 0, "hello": 1, "world": 2, "hello world": 3, "do": 4, "not": 5,
         "cafe": 6, "do not": 7, "not cafe": 8, "i": 9, "would": 10, "i would": 11}


@pytest.fixture(autouse=True)
def forget_model_modules():
    """Model files are imported under their plain names; no test sees another's."""
    yield
    for name in MODEL_MODULES:
        sys.modules.pop(name, None)


def make_context(model_dir, model: dict, yaml_config=None, gpu=None, limit_pixels=True) -> Context:
    manifest = {"model": {"modelName": "tiny", "handler": "builtin", **model}}
    return Context("tiny", str(model_dir), manifest, 1, gpu, "0.12.0",
                   limit_max_image_pixels=limit_pixels, metrics=MetricsCache("tiny"),
                   model_yaml_config=yaml_config)


def start_batch(context: Context, size: int = 1, headers: dict | None = None) -> Context:
    """What the worker does before each handle call: request ids, headers, fresh metrics."""
    context.request_ids = {i: f"req-{i}" for i in range(size)}
    context.request_processor = [RequestProcessor(dict(headers or {})) for _ in range(size)]
    context.metrics.set_request_ids(context.request_ids)
    return context


def save_eager(model_dir, source: str, module_name: str, weights=True, seed=0):
    """Writes `module_name`.py; with weights, also a state_dict of a seeded instance of it."""
    (model_dir / f"{module_name}.py").write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(f"_ref_{module_name}", model_dir / f"{module_name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (model_class,) = list_classes_from_module(module, torch.nn.Module)
    torch.manual_seed(seed)
    reference = model_class().eval()
    if weights:
        torch.save(reference.state_dict(), model_dir / f"{module_name}.pth")
    return reference, {"modelFile": f"{module_name}.py", "serializedFile": f"{module_name}.pth"}


def save_torchscript(model_dir, module: torch.nn.Module, name="model.pt") -> dict:
    torch.jit.script(module.eval()).save(str(model_dir / name))
    return {"serializedFile": name}


def rgb_image(pixels: torch.Tensor) -> Image.Image:
    """An HxWx3 uint8 tensor as a PIL image (no numpy: torch does not require it)."""
    height, width, _ = pixels.shape
    return Image.frombytes("RGB", (width, height), bytes(pixels.flatten().tolist()))


def jpeg_bytes(width=300, height=260, seed=0) -> bytes:
    torch.manual_seed(seed)
    pixels = (torch.rand(height, width, 3) * 255).to(torch.uint8)
    buffer = io.BytesIO()
    rgb_image(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_mapping(model_dir, names):
    (model_dir / "index_to_name.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))


def metric_names(context: Context) -> list[str]:
    return [update[0] for update in context.metrics.drain()]


# --- BaseHandler: loading -------------------------------------------------------------------

def test_torchscript_model_is_loaded_from_a_pt_file(tmp_path):
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 2)
    handler = BaseHandler()
    handler.initialize(make_context(tmp_path, save_torchscript(tmp_path, linear)))
    assert handler.initialized
    assert isinstance(handler.model, torch.jit.ScriptModule)
    assert not handler.model.training
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.equal(handler.model(x), linear(x))


def test_eager_model_loads_its_state_dict(tmp_path):
    reference, files = save_eager(tmp_path, TINY_LINEAR, "tiny_linear", seed=3)
    handler = BaseHandler()
    handler.initialize(make_context(tmp_path, files))
    assert type(handler.model).__name__ == "TinyLinear"
    assert not handler.model.training
    for name, tensor in reference.state_dict().items():
        assert torch.equal(handler.model.state_dict()[name], tensor)


def test_eager_model_without_weights_file_is_instantiated_untrained(tmp_path):
    _, files = save_eager(tmp_path, TINY_LINEAR, "tiny_linear", weights=False)
    handler = BaseHandler()
    handler.initialize(make_context(tmp_path, files))
    assert type(handler.model).__name__ == "TinyLinear"


def test_missing_model_file_is_reported(tmp_path):
    handler = BaseHandler()
    with pytest.raises(RuntimeError, match="Missing the model.py file"):
        handler.initialize(make_context(tmp_path, {"modelFile": "absent.py"}))


def test_model_file_with_two_module_classes_is_refused(tmp_path):
    (tmp_path / "two_nets.py").write_text(TWO_NETS)
    handler = BaseHandler()
    with pytest.raises(ValueError, match="Expected only one class as model definition"):
        handler.initialize(make_context(tmp_path, {"modelFile": "two_nets.py"}))


def test_unknown_serialized_file_type_is_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 8)
    with pytest.raises(RuntimeError, match="No model weights could be loaded"):
        BaseHandler().initialize(make_context(tmp_path, {"serializedFile": "model.bin"}))


def test_archive_without_model_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="No model weights could be loaded"):
        BaseHandler().initialize(make_context(tmp_path, {}))


def test_onnx_model_without_onnxruntime_says_what_is_missing(tmp_path):
    try:
        import onnxruntime  # noqa: F401
        pytest.skip("onnxruntime is installed")
    except ImportError:
        pass
    (tmp_path / "model.onnx").write_bytes(b"not really onnx")
    with pytest.raises(RuntimeError, match="onnxruntime"):
        BaseHandler().initialize(make_context(tmp_path, {"serializedFile": "model.onnx"}))


def test_cpu_is_used_when_no_gpu_is_assigned(tmp_path):
    handler = BaseHandler()
    handler.initialize(make_context(tmp_path, save_torchscript(tmp_path, torch.nn.Linear(3, 2))))
    assert handler.device == torch.device("cpu")
    assert handler.map_location == "cpu"
    assert handler.get_device() == torch.device("cpu")


def test_index_to_name_json_becomes_the_mapping(tmp_path):
    write_mapping(tmp_path, ["cat", "dog"])
    handler = BaseHandler()
    handler.initialize(make_context(tmp_path, save_torchscript(tmp_path, torch.nn.Linear(3, 2))))
    assert handler.mapping == {"0": "cat", "1": "dog"}


def test_mapping_is_none_without_index_to_name_json(tmp_path):
    handler = BaseHandler()
    handler.initialize(make_context(tmp_path, save_torchscript(tmp_path, torch.nn.Linear(3, 2))))
    assert handler.mapping is None


def test_new_handler_has_torchserve_attributes():
    handler = BaseHandler()
    assert (handler.model, handler.mapping, handler.device, handler.context) == (None, None, None, None)
    assert (handler.manifest, handler.map_location, handler.model_pt_path) == (None, None, None)
    assert handler.initialized is False and handler.explain is False
    assert handler.target == 0 and handler.profiler_args == {}


def test_pt2_compile_config_compiles_the_model(tmp_path):
    _, files = save_eager(tmp_path, TINY_LINEAR, "tiny_linear")
    config = {"pt2": {"compile": {"enable": True, "backend": "eager"}}}
    handler = BaseHandler()
    handler.initialize(make_context(tmp_path, files, yaml_config=config))
    assert isinstance(handler.model, torch._dynamo.eval_frame.OptimizedModule)
    assert config == {"pt2": {"compile": {"enable": True, "backend": "eager"}}}  # left as it was


def test_pt2_compile_disabled_leaves_the_model_alone(tmp_path):
    _, files = save_eager(tmp_path, TINY_LINEAR, "tiny_linear")
    handler = BaseHandler()
    handler.initialize(make_context(tmp_path, files, yaml_config={"pt2": {"compile": {"enable": False}}}))
    assert type(handler.model).__name__ == "TinyLinear"


def test_failed_pt2_compile_still_serves_the_model(tmp_path):
    _, files = save_eager(tmp_path, TINY_LINEAR, "tiny_linear")
    handler = BaseHandler()
    handler.initialize(make_context(tmp_path, files, yaml_config={"pt2": "no_such_backend"}))
    assert type(handler.model).__name__ == "TinyLinear"


# --- BaseHandler: handling ------------------------------------------------------------------

def test_base_handler_runs_tensor_in_list_out(tmp_path):
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 2)
    context = make_context(tmp_path, save_torchscript(tmp_path, linear))
    handler = BaseHandler()
    handler.initialize(context)
    rows = [[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]]
    output = handler.handle(rows, start_batch(context, 2))
    with torch.no_grad():
        assert output == linear(torch.tensor(rows)).tolist()


def test_inference_runs_under_inference_mode(tmp_path):
    handler = BaseHandler()
    handler.initialize(make_context(tmp_path, save_torchscript(tmp_path, torch.nn.Linear(3, 2))))
    assert handler.inference(torch.ones(1, 3)).is_inference()


def test_describe_header_returns_describe_handle(tmp_path):
    class Describing(BaseHandler):
        def describe_handle(self):
            return {"model": "tiny"}

    context = make_context(tmp_path, save_torchscript(tmp_path, torch.nn.Linear(3, 2)))
    handler = Describing()
    handler.initialize(context)
    assert handler.handle([[1.0, 2.0, 3.0]], start_batch(context, headers={"describe": "True"})) == [
        {"model": "tiny"}
    ]


def test_describe_handle_defaults_to_none(tmp_path):
    context = make_context(tmp_path, save_torchscript(tmp_path, torch.nn.Linear(3, 2)))
    handler = BaseHandler()
    handler.initialize(context)
    assert handler.handle([[1.0, 2.0, 3.0]], start_batch(context, headers={"describe": "True"})) == [None]


def test_explain_header_routes_to_explain_handle(tmp_path):
    class Explaining(BaseHandler):
        def preprocess(self, data):
            return torch.tensor([row["data"] for row in data])

        def get_insights(self, tensor_data, raw_data, target=0):
            return [{"shape": list(tensor_data.shape), "target": target}]

    context = make_context(tmp_path, save_torchscript(tmp_path, torch.nn.Linear(3, 2)))
    handler = Explaining()
    handler.initialize(context)
    output = handler.handle([{"data": [1.0], "target": 1}], start_batch(context, headers={"explain": "True"}))
    assert output == [{"shape": [1, 1], "target": 1}]
    assert handler.explain is True


def test_headers_other_than_true_do_not_describe_or_explain(tmp_path):
    context = make_context(tmp_path, save_torchscript(tmp_path, torch.nn.Linear(3, 2)))
    handler = BaseHandler()
    handler.initialize(context)
    start_batch(context, headers={"describe": "true", "explain": "yes"})
    handler.context = context
    assert not handler._is_describe() and not handler._is_explain()


def test_handler_time_is_recorded(tmp_path):
    context = make_context(tmp_path, save_torchscript(tmp_path, torch.nn.Linear(3, 2)))
    handler = BaseHandler()
    handler.initialize(context)
    handler.handle([[1.0, 2.0, 3.0]], start_batch(context))
    (update,) = context.metrics.drain()
    name, unit, _, dimension_names, dimension_values, value = update
    assert (name, unit) == ("HandlerTime", "ms")
    assert dict(zip(dimension_names, dimension_values))["ModelName"] == "tiny"
    assert value >= 0


def test_handler_profile_config_times_each_step(tmp_path):
    config = {"handler": {"profile": True}}
    context = make_context(tmp_path, save_torchscript(tmp_path, torch.nn.Linear(3, 2)), yaml_config=config)
    handler = BaseHandler()
    handler.initialize(context)
    handler.handle([[1.0, 2.0, 3.0]], start_batch(context))
    assert metric_names(context) == [
        "ts_handler_preprocess", "ts_handler_inference", "ts_handler_postprocess", "HandlerTime"
    ]


# --- Image classifier -----------------------------------------------------------------------

@pytest.fixture
def classifier_dir(tmp_path):
    reference, files = save_eager(tmp_path, TINY_CNN, "tiny_cnn", seed=1)
    write_mapping(tmp_path, ["cat", "dog", "fox", "owl", "eel", "bee"])
    return tmp_path, reference, files


def classifier(model_dir, files, **context_args):
    context = make_context(model_dir, files, **context_args)
    handler = ImageClassifier()
    handler.initialize(context)
    return handler, context


def expected_top(reference, image: bytes, k: int, names) -> dict:
    tensor = T.imagenet_transform()(Image.open(io.BytesIO(image))).unsqueeze(0)
    with torch.no_grad():
        probs, classes = F.softmax(reference(tensor), dim=1).topk(k, dim=1)
    return {names[c]: p for c, p in zip(classes[0].tolist(), probs[0].tolist())}


def test_image_classifier_returns_top5_labels_with_probabilities(classifier_dir):
    model_dir, reference, files = classifier_dir
    handler, context = classifier(model_dir, files)
    image = jpeg_bytes()
    (answer,) = handler.handle([{"data": image}], start_batch(context))
    names = ["cat", "dog", "fox", "owl", "eel", "bee"]
    assert answer == pytest.approx(expected_top(reference, image, 5, names), abs=1e-6)
    assert list(answer.values()) == sorted(answer.values(), reverse=True)


def test_image_classifier_accepts_base64_text(classifier_dir):
    model_dir, _, files = classifier_dir
    handler, context = classifier(model_dir, files)
    image = jpeg_bytes()
    from_bytes = handler.handle([{"body": image}], start_batch(context))
    from_text = handler.handle([{"body": base64.b64encode(image).decode()}], start_batch(context))
    assert from_text == from_bytes


def test_image_classifier_accepts_a_tensor_as_nested_lists(classifier_dir):
    model_dir, reference, files = classifier_dir
    handler, context = classifier(model_dir, files)
    torch.manual_seed(2)
    pixels = torch.rand(3, 8, 8)
    (answer,) = handler.handle([{"data": pixels.tolist()}], start_batch(context))
    with torch.no_grad():
        probs = F.softmax(reference(pixels.unsqueeze(0)), dim=1)[0]
    assert sorted(answer.values(), reverse=True) == pytest.approx(sorted(probs.tolist(), reverse=True)[:5])


def test_image_classifier_answers_each_image_of_a_batch(classifier_dir):
    model_dir, _, files = classifier_dir
    handler, context = classifier(model_dir, files)
    first, second = jpeg_bytes(seed=1), jpeg_bytes(seed=2)
    answers = handler.handle([{"data": first}, {"data": second}], start_batch(context, 2))
    assert len(answers) == 2
    assert answers[0] == handler.handle([{"data": first}], start_batch(context))[0]
    assert answers[1] == handler.handle([{"data": second}], start_batch(context))[0]


def test_image_classifier_topk_can_be_changed(classifier_dir):
    model_dir, _, files = classifier_dir
    handler, context = classifier(model_dir, files)
    assert handler.get_max_result_classes() == 5
    handler.set_max_result_classes(2)
    assert handler.get_max_result_classes() == 2
    (answer,) = handler.handle([{"data": jpeg_bytes()}], start_batch(context))
    assert len(answer) == 2


def test_image_classifier_with_fewer_classes_than_topk_returns_them_all(tmp_path):
    source = TINY_CNN.replace("classes=6", "classes=3")
    _, files = save_eager(tmp_path, source, "tiny_cnn")
    handler, context = classifier(tmp_path, files)
    (answer,) = handler.handle([{"data": jpeg_bytes()}], start_batch(context))
    assert sorted(answer) == ["0", "1", "2"]  # no index_to_name.json: class ids as labels
    assert sum(answer.values()) == pytest.approx(1.0)


def test_limit_max_image_pixels_false_lifts_pil_limit(classifier_dir, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    model_dir, _, files = classifier_dir
    classifier(model_dir, files, limit_pixels=False)
    assert Image.MAX_IMAGE_PIXELS is None


def test_limit_max_image_pixels_true_keeps_pil_limit(classifier_dir, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1234)
    model_dir, _, files = classifier_dir
    classifier(model_dir, files, limit_pixels=True)
    assert Image.MAX_IMAGE_PIXELS == 1234


def test_explain_without_captum_says_captum_is_needed(classifier_dir):
    try:
        import captum  # noqa: F401
        pytest.skip("captum is installed")
    except ImportError:
        pass
    model_dir, _, files = classifier_dir
    handler, context = classifier(model_dir, files)
    with pytest.raises(PredictionException, match="captum"):
        handler.handle([{"data": jpeg_bytes()}], start_batch(context, headers={"explain": "True"}))


# --- Image segmenter and object detector ----------------------------------------------------

def test_image_segmenter_returns_class_and_probability_per_pixel(tmp_path):
    reference, files = save_eager(tmp_path, TINY_SEGMENTER, "tiny_segmenter", seed=4)
    context = make_context(tmp_path, files)
    handler = ImageSegmenter()
    handler.initialize(context)
    image = jpeg_bytes()
    (answer,) = handler.handle([{"data": image}], start_batch(context))
    tensor = T.imagenet_transform()(Image.open(io.BytesIO(image))).unsqueeze(0)
    with torch.no_grad():
        probs = F.softmax(reference(tensor)["out"], dim=1)[0]
    assert (len(answer), len(answer[0]), len(answer[0][0])) == (224, 224, 2)
    for y, x in [(0, 0), (100, 37), (223, 223)]:
        best_class, best_prob = answer[y][x]
        assert best_class == float(probs[:, y, x].argmax())
        assert best_prob == pytest.approx(float(probs[:, y, x].max()))


def test_object_detector_returns_labelled_boxes_at_or_above_threshold(tmp_path):
    _, files = save_eager(tmp_path, TINY_DETECTOR, "tiny_detector", weights=False)
    write_mapping(tmp_path, ["background", "cat", "dog"])
    context = make_context(tmp_path, files)
    handler = ObjectDetector()
    handler.initialize(context)
    answers = handler.handle([{"data": jpeg_bytes()}, {"data": jpeg_bytes(seed=5)}], start_batch(context, 2))
    expected = [{"cat": [1.0, 2.0, 3.0, 4.0], "score": 0.75}, {"cat": [0.0, 0.0, 9.0, 9.0], "score": 0.5}]
    assert answers == [expected, expected]


def test_object_detector_feeds_the_model_unnormalised_pixels(tmp_path):
    _, files = save_eager(tmp_path, TINY_DETECTOR, "tiny_detector", weights=False)
    context = make_context(tmp_path, files)
    handler = ObjectDetector()
    handler.initialize(context)
    image = jpeg_bytes(width=40, height=30)
    batch = handler.preprocess([{"data": image}])
    assert batch.shape == (1, 3, 30, 40)
    assert torch.equal(batch[0], T.ToTensor()(Image.open(io.BytesIO(image))))


# --- Text classifier ------------------------------------------------------------------------

@pytest.fixture
def text_dir(tmp_path):
    reference, files = save_eager(tmp_path, TINY_TEXT, "tiny_text", seed=5)
    torch.save(VOCAB, tmp_path / "source_vocab.pt")
    write_mapping(tmp_path, ["negative", "neutral", "positive"])
    return tmp_path, reference, files


def text_classifier(model_dir, files) -> tuple[TextClassifier, Context]:
    context = make_context(model_dir, files)
    handler = TextClassifier()
    handler.initialize(context)
    return handler, context


def test_text_classifier_returns_probability_per_label(text_dir):
    model_dir, reference, files = text_dir
    handler, context = text_classifier(model_dir, files)
    (answer,) = handler.handle([{"body": b"Hello world"}], start_batch(context))
    ids = torch.tensor([VOCAB["hello"], VOCAB["world"], VOCAB["hello world"]])
    with torch.no_grad():
        probs = F.softmax(reference(ids, torch.tensor([0])), dim=1)[0].tolist()
    assert answer == pytest.approx(dict(zip(["negative", "neutral", "positive"], probs)))


def test_text_preprocess_cleans_html_contractions_accents_and_adds_bigrams(text_dir):
    model_dir, _, files = text_dir
    handler, _ = text_classifier(model_dir, files)
    ids, tokens = handler.preprocess([{"data": "<b>Don't</b> Café!".encode()}])
    assert tokens == ["do", "not", "cafe"]
    assert ids.tolist() == [VOCAB[t] for t in ["do", "not", "cafe", "do not", "not cafe"]]


def test_text_classifier_accepts_str_bodies(text_dir):
    model_dir, _, files = text_dir
    handler, _ = text_classifier(model_dir, files)
    _, tokens = handler.preprocess([{"body": "I'd"}])
    assert tokens == ["i", "would"]


def test_unknown_tokens_map_to_the_unk_index(text_dir):
    model_dir, _, files = text_dir
    handler, _ = text_classifier(model_dir, files)
    ids, _ = handler.preprocess([{"body": "hello zebra"}])
    assert ids.tolist() == [VOCAB["hello"], 0, 0]


def test_unknown_tokens_map_to_zero_without_unk(tmp_path):
    vocab = {"hello": 3, "world": 4}
    torch.save(vocab, tmp_path / "vocab.pt")
    assert load_vocab(str(tmp_path / "vocab.pt"))["zebra"] == 0


def test_vocabulary_may_be_json_named_by_the_manifest(text_dir):
    model_dir, _, files = text_dir
    (model_dir / "source_vocab.pt").unlink()
    (model_dir / "words.json").write_text(json.dumps(VOCAB))
    handler, _ = text_classifier(model_dir, {**files, "source_vocab": "words.json"})
    assert handler.source_vocab["cafe"] == VOCAB["cafe"]
    assert len(handler.source_vocab) == len(VOCAB)


class NotAVocabDict:
    """Stands in for a pickled torchtext Vocab: an object, not a plain dict."""


def test_pickled_vocab_object_is_refused_with_the_reason(tmp_path):
    torch.save(NotAVocabDict(), tmp_path / "source_vocab.pt")
    with pytest.raises(ValueError, match="torchtext Vocab objects cannot be loaded"):
        load_vocab(str(tmp_path / "source_vocab.pt"))


def test_missing_vocabulary_is_reported(tmp_path):
    _, files = save_eager(tmp_path, TINY_TEXT, "tiny_text")
    with pytest.raises(RuntimeError, match="Missing the source_vocab file"):
        text_classifier(tmp_path, files)


def test_basic_english_tokenizer_matches_torchtext():
    assert basic_english("You can now install TorchText using pip!") == [
        "you", "can", "now", "install", "torchtext", "using", "pip", "!"
    ]
    assert basic_english('It\'s "quoted"; a.b, (c)?<br />d:e') == [
        "it", "'", "s", "quoted", "a", ".", "b", ",", "(", "c", ")", "?", "d", "e"
    ]


def test_ngrams_follow_the_tokens():
    assert list(ngrams_iterator(["here", "we", "are"], 2)) == ["here", "we", "are", "here we", "we are"]
    assert list(ngrams_iterator(["a", "b", "c"], 3))[-1] == "a b c"


def test_contractions_expand_keeping_the_first_letters_case(text_dir):
    model_dir, _, files = text_dir
    handler, _ = text_classifier(model_dir, files)
    assert handler._expand_contractions("I'd say Don't") == "I would say Do not"
    assert handler._remove_puncutation("a,b!") == "ab"
    assert handler._remove_html_tags("<p>x&amp;y</p>") == "xy"


# --- Transforms -----------------------------------------------------------------------------

def coordinate_image(width, height) -> Image.Image:
    """Red = x, green = y: a crop's first pixel tells where it was taken from."""
    x = torch.arange(width).expand(height, width)
    y = torch.arange(height).unsqueeze(1).expand(height, width)
    return rgb_image(torch.stack([x, y, torch.full_like(x, 7)], dim=2).to(torch.uint8))


def test_transforms_match_torchvision_reference_numbers():
    # Resize(256): shorter side to 256, longer truncated: 300x260 -> int(256 * 300 / 260) = 295.
    image = coordinate_image(300, 260)
    resized = T.Resize(256)(image)
    assert resized.size == (295, 256)
    assert resized.tobytes() == image.resize((295, 256), Image.BILINEAR).tobytes()
    same = coordinate_image(256, 280)
    assert T.Resize(256)(same) is same

    # CenterCrop(224): offset int(round((size - 224) / 2.0)), Python's round-half-to-even.
    crop = T.CenterCrop(224)(coordinate_image(293, 250))  # (293-224)/2 = 34.5 -> 34, 13.0 -> 13
    assert crop.size == (224, 224)
    assert crop.getpixel((0, 0)) == (34, 13, 7)
    crop = T.CenterCrop(224)(coordinate_image(295, 227))  # 35.5 -> 36, 1.5 -> 2
    assert crop.getpixel((0, 0)) == (36, 2, 7)

    # Smaller than the crop: zero padding, (224 - 220) // 2 = 2 left, (224 - 221) // 2 = 1 top.
    crop = T.CenterCrop(224)(coordinate_image(220, 221))
    assert crop.getpixel((0, 0)) == (0, 0, 0)
    assert crop.getpixel((2, 1)) == (0, 0, 7)
    assert crop.getpixel((221, 221)) == (219, 220, 7)
    assert crop.getpixel((222, 222)) == (0, 0, 0)

    # ToTensor: CHW float32 in [0, 1].
    tensor = T.ToTensor()(Image.new("RGB", (3, 2), (255, 128, 0)))
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert tensor[:, 1, 2].tolist() == pytest.approx([1.0, 0.5019608, 0.0], abs=1e-7)
    assert T.ToTensor()(Image.new("L", (4, 5), 51)).shape == (1, 5, 4)

    # Normalize: (x - mean) / std per channel.
    normalized = T.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)(torch.full((3, 1, 1), 0.5))
    assert normalized.flatten().tolist() == pytest.approx([0.0655022, 0.1964286, 0.4177778], abs=1e-6)

    # The whole classifier pipeline on a flat colour: every pixel is ((c / 255) - mean) / std.
    pipeline = T.imagenet_transform()(Image.new("RGB", (400, 300), (10, 20, 30)))
    assert pipeline.shape == (3, 224, 224)
    assert pipeline[:, 111, 57].tolist() == pytest.approx([-1.9466564, -1.6855742, -1.2815686], abs=1e-5)
    assert torch.equal(pipeline, pipeline[:, :1, :1].expand(3, 224, 224))


# --- Module layout --------------------------------------------------------------------------

@pytest.mark.parametrize("module_name", sorted(BUILTINS))
def test_module_defines_exactly_one_class(module_name):
    module = importlib.import_module(f"pyserve.handlers.{module_name}")
    assert [cls.__name__ for cls in list_classes_from_module(module)] == [BUILTINS[module_name]]
    assert not hasattr(module, "handle")  # else the loader would take it as a function entry point


@pytest.mark.parametrize("module_name", sorted(BUILTINS))
def test_ts_torch_handler_reexports_the_same_class(module_name):
    ours = importlib.import_module(f"pyserve.handlers.{module_name}")
    compat = importlib.import_module(f"pyserve.compat.ts.torch_handler.{module_name}")
    name = BUILTINS[module_name]
    assert getattr(compat, name) is getattr(ours, name)
    assert compat.__all__ == [name]


@pytest.mark.parametrize("name", ["base_handler", "image_classifier", "image_segmenter",
                                  "object_detector", "text_classifier"])
def test_builtin_name_resolves_to_its_handler(name):
    from pyserve.worker.loader import load_entry_point

    entry = load_entry_point(name)
    assert type(entry.handle.__self__).__name__ == BUILTINS[name]


def test_handler_modules_do_not_import_captum_torchvision_or_torchtext():
    for module_name in BUILTINS:
        importlib.import_module(f"pyserve.handlers.{module_name}")
    assert not {"captum", "torchvision", "torchtext"} & set(sys.modules)
