"""INT8 ONNX models with onnxruntime's quantization: dynamic (weights int8, activations quantized per batch at run
time) or static (activation ranges calibrated on training images). Only the matrix products are quantized: layer
norms, softmax and the calibration temperature stay float, so the exported graph still returns calibrated scores.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vitkit.errors import VitkitError

METHODS = ("dynamic", "static")
#: The operators quantized: the linear layers and attention products, where a ViT spends its time.
QUANTIZED_OPS = ["MatMul", "Gemm"]


def require_onnxruntime() -> None:
    """Fail in one line when the ``export`` extra is missing."""
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as err:
        raise VitkitError("--quantize int8 uses onnxruntime's quantization: pip install 'vitkit[export]'.") from err


def quantize_onnx(
    source: str | Path,
    target: str | Path,
    method: Literal["dynamic", "static"] = "dynamic",
    calibration: Iterable[np.ndarray] | None = None,
    input_name: str = "images",
) -> Path:
    """Write an INT8 copy of the float ONNX model ``source`` to ``target``; return ``target``.

    Args:
        method: ``dynamic`` (no data needed) or ``static`` (needs ``calibration``: float32 image batches, normalised
            as the model expects; a few hundred images).
        calibration: the batches static quantization calibrates activation ranges on.
    """
    require_onnxruntime()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise VitkitError(f"quantization method must be one of {', '.join(METHODS)}, got {method!r}.")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vitkit-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # shapes inferred, graph optimised
        if method == "dynamic":
            quantize_dynamic(prepared, target, weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS,
                             per_channel=False)  # fmt: skip
        else:
            if calibration is None:
                raise VitkitError("static quantization needs calibration images (the training data's).")
            reader = _BatchReader(input_name, iter(calibration))
            quantize_static(prepared, target, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=QUANTIZED_OPS)  # fmt: skip
    return target


class _BatchReader:
    """onnxruntime's calibration-data reader protocol over an iterator of image batches."""

    def __init__(self, input_name: str, batches: Iterator[np.ndarray]) -> None:
        self.input_name, self.batches = input_name, batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}


def calibration_batches(
    datamodule: Any, data_config: dict, images: int = 256, batch_size: int = 32
) -> list[np.ndarray]:
    """Up to ``images`` training images (an even spread of the split), transformed as at evaluation, in batches."""
    from timm.data import create_transform

    from vitkit.data.images import load_image

    samples = datamodule.samples("train") if datamodule is not None and hasattr(datamodule, "samples") else None
    if not samples:
        raise VitkitError("--quantization static calibrates on the training images: give the data (--data.root DIR), "
                          "or use --quantization dynamic.")  # fmt: skip
    chosen = samples[:: max(1, len(samples) // images)][:images]
    transform = create_transform(**data_config, is_training=False)
    arrays = np.stack([transform(load_image(sample[0])).numpy() for sample in chosen])
    return [arrays[i : i + batch_size] for i in range(0, len(arrays), batch_size)]


def export_int8(
    model: Any,
    output: str | Path,
    method: Literal["dynamic", "static"] = "dynamic",
    datamodule: Any = None,
    opset: int | None = None,
    images: int = 256,
) -> Path:
    """Export ``model`` (a :class:`~vitkit.module.TransferModule`) to an INT8 ONNX file and its JSON sidecar (that of
    :func:`vitkit.export.export_model`, plus ``quantization``); return the file's path. ``static`` calibrates on up to
    ``images`` training images of ``datamodule``."""
    from vitkit.export import export_model

    require_onnxruntime()
    output = Path(output)
    calibration = calibration_batches(datamodule, model.data_config, images) if method == "static" else None
    with tempfile.TemporaryDirectory(prefix="vitkit-export-") as tmp:
        fp32 = export_model(model, Path(tmp) / "model.onnx", "onnx", opset)
        quantize_onnx(fp32, output, method, calibration)
        meta = json.loads(fp32.with_name(fp32.name + ".json").read_text())
    meta["file"] = output.name
    meta["quantization"] = {"dtype": "int8", "method": method, "operators": QUANTIZED_OPS,
                            "calibration_images": sum(map(len, calibration)) if calibration else 0}  # fmt: skip
    output.with_name(output.name + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return output
