"""Handlers written for TorchServe, run unchanged: BaseHandler subclasses on eager and
TorchScript models, the built-in image_classifier, with or without torchserve installed."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from helpers import HANDLERS, archive_model, start_server
from tiny_models import MLP, TinyCNN

TINY_MODELS = Path(__file__).resolve().parent / "tiny_models.py"
INPUTS = [[float(i + j) / 10 for j in range(8)] for i in range(3)]


@pytest.fixture(scope="module")
def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP().eval()


def expected(mlp: MLP, rows: list) -> list:
    with torch.inference_mode():
        return mlp(torch.tensor(rows)).tolist()


def same_numbers(answers: list, wanted: list) -> bool:
    return torch.allclose(torch.tensor(answers), torch.tensor(wanted), atol=1e-5)


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlp) -> Path:
    work = tmp_path_factory.mktemp("ts_handlers")
    store = work / "store"
    # An eager model: its class in --model-file, its weights as a state_dict.
    model_file = work / "mlp_model.py"
    model_file.write_text(TINY_MODELS.read_text().split("\n\nclass TinyCNN")[0] + "\n")
    torch.save(mlp.state_dict(), work / "mlp_state.pt")
    archive_model(store, "eager", HANDLERS / "ts_mlp_handler.py",
                  extra=["--model-file", str(model_file), "--serialized-file", str(work / "mlp_state.pt")])
    # The same network as TorchScript.
    torch.jit.script(mlp).save(str(work / "mlp_scripted.pt"))
    archive_model(store, "scripted", HANDLERS / "ts_mlp_handler.py",
                  extra=["--serialized-file", str(work / "mlp_scripted.pt")])
    archive_model(store, "probe", HANDLERS / "ts_probe.py")
    return store


MODELS = ["eager=eager.mar", "scripted=scripted.mar", "probe=probe.mar"]


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("server"), store, MODELS, default_workers_per_model=1)
    yield server
    server.stop()


def predict(server, model: str, rows) -> httpx.Response:
    return httpx.post(f"{server.inference_url}/predictions/{model}", json=rows, timeout=60)


def test_an_eager_model_with_model_file_and_state_dict_answers_as_torch_does(server, mlp):
    answers = [predict(server, "eager", row).json() for row in INPUTS]
    assert same_numbers(answers, expected(mlp, INPUTS))


def test_a_torchscript_model_answers_as_torch_does(server, mlp):
    answers = [predict(server, "scripted", row).json() for row in INPUTS]
    assert same_numbers(answers, expected(mlp, INPUTS))


def test_a_prediction_exception_from_preprocess_reaches_the_client(server):
    response = httpx.post(f"{server.inference_url}/predictions/eager", content=b"raw bytes", timeout=60)
    assert response.status_code == 400
    assert response.json()["message"] == "expected a JSON list of numbers"


def test_without_torchserve_ts_is_pyserves_own(server):
    report = httpx.post(f"{server.inference_url}/predictions/probe", content=b"x", timeout=60).json()
    assert "pyserve" in report["ts_file"]
    assert report["context_is_pyserves"] is True
    assert report["base_handler_module"] == "pyserve.handlers.base_handler"


@pytest.fixture(scope="module")
def real_torchserve(tmp_path_factory) -> Path:
    """torchserve 0.12.0 from PyPI, installed into a folder of its own."""
    target = tmp_path_factory.mktemp("torchserve")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         "torchserve==0.12.0"], capture_output=True, text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"torchserve 0.12.0 could not be installed from PyPI: {done.stderr[-300:]}")
    # Only its Python backend is needed; the Java frontend's jar is dead weight here.
    shutil.rmtree(target / "ts" / "frontend", ignore_errors=True)
    return target


def test_with_torchserve_installed_its_own_base_handler_runs_with_pyserves_context(
    store, real_torchserve, tmp_path, mlp
):
    server = start_server(tmp_path, store, MODELS, env={"PYTHONPATH": str(real_torchserve)},
                          default_workers_per_model=1)
    try:
        report = httpx.post(f"{server.inference_url}/predictions/probe", content=b"x", timeout=60).json()
        eager = [predict(server, "eager", row).json() for row in INPUTS]
        scripted = [predict(server, "scripted", row).json() for row in INPUTS]
    finally:
        server.stop()
    assert report["ts_file"].startswith(str(real_torchserve))
    assert report["base_handler_module"] == "ts.torch_handler.base_handler"
    assert same_numbers(eager, expected(mlp, INPUTS))
    assert same_numbers(scripted, expected(mlp, INPUTS))


# -- the built-in image classifier -----------------------------------------------------------

@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from PIL import Image

    work = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(1)
    cnn = TinyCNN().eval()
    torch.jit.script(cnn).save(str(work / "cnn.pt"))
    labels = {str(i): f"class_{i}" for i in range(10)}
    (work / "index_to_name.json").write_text(json.dumps(labels))
    image = Image.new("RGB", (320, 240))
    image.putdata([((x * 7) % 256, (y * 5) % 256, (x + y) % 256) for y in range(240) for x in range(320)])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    store = work / "store"
    archive_model(store, "cnn", "image_classifier",
                  extra=["--serialized-file", str(work / "cnn.pt"),
                         "--extra-files", str(work / "index_to_name.json")])
    server = start_server(work, store, ["cnn=cnn.mar"], default_workers_per_model=1)
    yield server, buffer.getvalue(), work
    server.stop()


def in_process_answer(work: Path, jpeg: bytes) -> list:
    """What pyserve's ImageClassifier answers when called directly, without the server."""
    from pyserve.handlers.image_classifier import ImageClassifier
    from pyserve.worker.context import Context
    from pyserve.worker.metrics import MetricsCache

    model_dir = work / "direct"
    model_dir.mkdir(exist_ok=True)
    shutil.copy(work / "cnn.pt", model_dir)
    shutil.copy(work / "index_to_name.json", model_dir)
    manifest = {"model": {"modelName": "cnn", "serializedFile": "cnn.pt", "handler": "image_classifier"}}
    context = Context("cnn", str(model_dir), manifest, 1, None, "0.12.0", metrics=MetricsCache("cnn"))
    handler = ImageClassifier()
    handler.initialize(context)
    return handler.handle([{"body": jpeg}], context)


def test_the_builtin_image_classifier_answers_top5_labels_for_a_jpeg(classifier):
    server, jpeg, work = classifier
    response = httpx.post(f"{server.inference_url}/predictions/cnn", content=jpeg, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer) == 5
    assert all(label.startswith("class_") for label in answer)
    probabilities = list(answer.values())
    assert probabilities == sorted(probabilities, reverse=True)
    assert answer == pytest.approx(in_process_answer(work, jpeg)[0])


def test_the_image_classifier_takes_a_multipart_upload_too(classifier):
    server, jpeg, _ = classifier
    raw = httpx.post(f"{server.inference_url}/predictions/cnn", content=jpeg, timeout=60).json()
    uploaded = httpx.post(f"{server.inference_url}/predictions/cnn",
                          files={"data": ("kitten.jpg", jpeg, "image/jpeg")}, timeout=60).json()
    assert uploaded == raw
