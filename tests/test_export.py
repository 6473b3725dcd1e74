"""Export: ONNX (run with onnxruntime) and TorchScript files compute what the PyTorch model computes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import TINY_VIT
from tests.helpers import vitkit
from vitkit import Backbone, TransferModule
from vitkit.export import export_model
from vitkit.heads import MLPHead
from vitkit.tasks import Classification, MultiLabel, Regression

TASKS = {
    "classification": (Classification(), None),
    "multilabel": (MultiLabel(threshold=0.3), None),
    "regression": (Regression(), {"mean": [100.0, -3.0, 0.5], "std": [20.0, 2.0, 0.1]}),
}


def trained_like(task_name: str) -> TransferModule:
    """A tiny model with random (not initial) weights, so exports are compared on non-trivial outputs."""
    torch.manual_seed(0)
    task, stats = TASKS[task_name]
    model = TransferModule(Backbone(**TINY_VIT), num_outputs=3, head=MLPHead, task=task,
                           class_names=["a", "b", "c"], label_stats=stats)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def expected(model: TransferModule, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.task.predict(model(images)).numpy()


@pytest.mark.parametrize("task_name", list(TASKS))
def test_onnx_export_matches_pytorch_with_any_batch_size(task_name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = trained_like(task_name)
    path = export_model(model, tmp_path / "model.onnx", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # exported with a batch of 2
        images = torch.randn(batch, 3, 32, 32)
        (outputs,) = session.run(["predictions"], {"images": images.numpy()})
        assert outputs.shape == (batch, 3)
        assert np.abs(outputs - expected(model, images)).max() <= 1e-4


@pytest.mark.parametrize("task_name", list(TASKS))
def test_torchscript_export_matches_pytorch(task_name, tmp_path):
    model = trained_like(task_name)
    path = export_model(model, tmp_path / "model.pt", "torchscript")
    loaded = torch.jit.load(str(path))
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert np.abs(loaded(images).numpy() - expected(model, images)).max() <= 1e-5


def test_sidecar_says_how_to_feed_the_model_and_read_it(tmp_path):
    path = export_model(trained_like("multilabel"), tmp_path / "m.pt", "torchscript")
    meta = json.loads((tmp_path / "m.pt.json").read_text())
    assert meta["file"] == path.name and meta["format"] == "torchscript"
    assert meta["class_names"] == ["a", "b", "c"]
    assert meta["input_size"] == [3, 32, 32] and meta["input_name"] == "images"
    assert len(meta["mean"]) == 3 and len(meta["std"]) == 3 and meta["interpolation"]
    assert meta["task"] == "multilabel" and meta["threshold"] == 0.3


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="onnx, torchscript"):
        export_model(trained_like("classification"), tmp_path / "m.x", "tflite")


@pytest.mark.slow
def test_export_command_from_a_checkpoint_alone(trained_checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    vitkit("export", "--ckpt_path", trained_checkpoint, "--format", "onnx", "--output", tmp_path / "shapes.onnx")
    meta = json.loads((tmp_path / "shapes.onnx.json").read_text())
    assert meta["class_names"] == ["circle", "cross", "square", "triangle"] and meta["task"] == "classification"
    session = ort.InferenceSession(str(tmp_path / "shapes.onnx"), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"images": np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype("f")})
    assert probabilities.shape == (4, 4) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
