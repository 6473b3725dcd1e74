"""INT8 export: onnxruntime's quantized model is smaller, keeps the calibrated softmax, and agrees with fp32."""

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
from vitkit.quantize import export_int8, quantize_onnx
from vitkit.tasks import Classification

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def decisive_model(temperature: float = 3.0) -> TransferModule:
    """A tiny classifier whose top classes are well apart (random weights, scaled head), with a temperature."""
    torch.manual_seed(0)
    model = TransferModule(Backbone(**TINY_VIT), num_outputs=5, head=MLPHead, task=Classification(),
                           class_names=list("abcde"))  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.head[-1].weight.mul_(20)
        model.task.temperature.fill_(temperature)
    return model.eval()


def run(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["predictions"], {"images": images})[0]


def quantized_ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(64, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_model_agrees_with_fp32_and_keeps_the_calibrated_softmax(method, images, tmp_path):
    model = decisive_model()
    fp32 = export_model(model, tmp_path / "m.onnx", "onnx")
    calibration = [images[:32], images[32:]] if method == "static" else None
    int8 = quantize_onnx(fp32, tmp_path / "m.int8.onnx", method, calibration)
    ops = quantized_ops(int8)
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "QLinearMatMul"}, ops
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    reference, got = run(fp32, images), run(int8, images)
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-4)  # the softmax (and its temperature) is still in the graph
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.95
    assert np.abs(got - reference).mean() < 0.02


def test_temperature_divides_the_logits_inside_the_int8_graph(images, tmp_path):
    warm, cold = decisive_model(temperature=4.0), decisive_model(temperature=1.0)
    a = run(export_int8(warm, tmp_path / "warm.onnx"), images[:8])
    b = run(export_int8(cold, tmp_path / "cold.onnx"), images[:8])
    assert a.max(axis=1).mean() < b.max(axis=1).mean() - 0.05  # a higher temperature: flatter probabilities


def test_sidecar_says_the_model_is_int8(tmp_path):
    path = export_int8(decisive_model(), tmp_path / "q.onnx", "dynamic")
    meta = json.loads((tmp_path / "q.onnx.json").read_text())
    assert meta["file"] == path.name and meta["format"] == "onnx" and meta["class_names"] == list("abcde")
    assert meta["quantization"]["dtype"] == "int8" and meta["quantization"]["method"] == "dynamic"
    assert meta["temperature"] == 3.0 and meta["input_size"] == [3, 32, 32]


@pytest.mark.slow
def test_export_command_writes_a_statically_calibrated_int8_model(trained_checkpoint, tmp_path):
    vitkit("export", "--ckpt_path", trained_checkpoint, "--format", "onnx", "--quantize", "int8",
           "--quantization", "static", "--output", tmp_path / "shapes.int8.onnx")  # fmt: skip
    meta = json.loads((tmp_path / "shapes.int8.onnx.json").read_text())
    assert meta["quantization"]["method"] == "static" and meta["quantization"]["calibration_images"] > 50
    probabilities = run(tmp_path / "shapes.int8.onnx", np.zeros((2, 3, 32, 32), np.float32))
    assert probabilities.shape == (2, 4)


@pytest.mark.slow
def test_int8_torchscript_is_refused_in_one_line(trained_checkpoint, tmp_path):
    result = vitkit("export", "--ckpt_path", trained_checkpoint, "--format", "torchscript", "--quantize", "int8",
                    "--output", tmp_path / "m.pt", check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "vitkit: error: --quantize int8 makes an ONNX model: use it with --format onnx." in result.stderr
