"""Export a trained model to ONNX or TorchScript, with a JSON sidecar saying how to feed it and read it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from vitkit.finetune import merge_adapters

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAME, OUTPUT_NAME = "images", "predictions"


class Predictor(nn.Module):
    """Normalised image batch ``(B, 3, H, W)`` to the task's predictions: what an exported file computes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head, self.task = model.backbone, model.head, model.task

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.task.predict(self.head(self.backbone(images)))


def export_model(
    model: nn.Module,
    output: str | Path,
    format: Literal["onnx", "torchscript"] = "onnx",
    opset: int | None = None,
) -> Path:
    """Write ``model`` (a :class:`~vitkit.module.TransferModule`) to ``output`` with a dynamic batch dimension, and
    ``<output>.json`` beside it (class names, input size, mean/std, task); return the model file's path.

    The exported graph takes images resized, cropped and normalised as the sidecar says, and returns the task's
    predictions: class probabilities, label probabilities, or values in the training targets' units. LoRA
    adapters are merged first. ONNX export needs the ``export`` extra (onnx, onnxscript).
    """
    if format not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {format!r}.")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model = merge_adapters(model.float().eval().cpu())
    predictor = Predictor(model).eval()
    config = model.data_config
    example = torch.randn(2, *config["input_size"])
    with torch.no_grad():
        if format == "onnx":
            _export_onnx(predictor, example, output, opset)
        else:
            with warnings.catch_warnings():  # torch deprecates jit in favour of torch.export; the format still loads
                warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                torch.jit.trace(predictor, example).save(str(output))
    sidecar = output.with_name(output.name + ".json")
    sidecar.write_text(json.dumps(export_metadata(model, output, format), indent=2) + "\n")
    return output


def _export_onnx(predictor: nn.Module, example: torch.Tensor, output: Path, opset: int | None) -> None:
    try:
        import onnxscript  # noqa: F401  torch's exporter needs it; say so before torch fails deep inside
    except ImportError as err:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'vitkit[export]'.") from err
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        predictor,
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"images": {0: batch}},
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    program.save(str(output))


def export_metadata(model: nn.Module, output: Path, format: str) -> dict[str, Any]:
    """What a deployment needs to know besides the graph: inputs, preprocessing, outputs."""
    config = model.data_config
    return {
        "format": format,
        "file": output.name,
        "model_name": getattr(model.backbone, "model_name", None),
        "model_kwargs": getattr(model.backbone, "model_kwargs", None),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_size": list(config["input_size"]),
        "mean": list(config["mean"]),
        "std": list(config["std"]),
        "interpolation": config.get("interpolation"),
        "crop_pct": config.get("crop_pct"),
        "crop_mode": config.get("crop_mode"),
        "class_names": list(model.task.names),
        **model.task.export_info(),
    }
