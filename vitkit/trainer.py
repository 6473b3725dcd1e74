"""VitkitTrainer: Lightning's Trainer plus the commands that use a trained model (``vitkit embed|export|explain``).

LightningCLI turns each Trainer method it is told about into a subcommand with the same ``--config``,
``--ckpt_path``, ``--model``, ``--data`` and ``--trainer`` arguments as ``fit`` and ``predict``; the work itself is in
:mod:`vitkit.export`, :mod:`vitkit.explain` and :mod:`vitkit.writers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from vitkit.checkpoints import read_checkpoint
from vitkit.data.images import is_image_file, list_images
from vitkit.errors import DataError, WeightsError
from vitkit.writers import EmbeddingWriter


class VitkitTrainer(L.Trainer):
    """A Lightning Trainer with ``embed``, ``export`` and ``explain``."""

    def embed(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        output: str | None = None,
    ) -> Path:
        """Write the pooled backbone features of the data's predict images (.npy) with an index CSV.

        Args:
            model: the model whose backbone encodes the images.
            datamodule: the images (``--data.predict_root DIR``, else the test or val split).
            ckpt_path: the trained checkpoint.
            output: output path without suffix; default ``<default_root_dir>/embeddings`` (``.npy`` and ``.csv``).
        """
        writer = EmbeddingWriter(output)
        self.callbacks.append(writer)
        model.predict_output = "embedding"
        try:
            self.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)
        finally:
            model.predict_output = "task"
            self.callbacks.remove(writer)
        stem = writer.stem(self)
        rank_zero_info(f"embeddings written to {stem.with_suffix('.npy')} (index: {stem.with_suffix('.csv')})")
        return stem.with_suffix(".npy")

    def export(
        self,
        model: L.LightningModule,
        ckpt_path: str,
        datamodule: L.LightningDataModule | None = None,
        format: Literal["onnx", "torchscript"] = "onnx",
        output: str | None = None,
        opset: int | None = None,
    ) -> Path:
        """Export a trained model to ONNX or TorchScript, with a JSON sidecar (classes, input size, mean/std, task).

        Args:
            model: the model, rebuilt from the checkpoint's config.
            ckpt_path: the trained checkpoint.
            datamodule: not used.
            format: ``onnx`` (needs the ``export`` extra) or ``torchscript``.
            output: the model file; default: the checkpoint's path with ``.onnx`` / ``.pt``.
            opset: ONNX opset version (torch's default if not given).
        """
        from vitkit.export import FORMATS, export_model

        load_weights(model, ckpt_path)
        target = Path(output) if output else Path(ckpt_path).with_suffix(FORMATS.get(format, ""))
        written = export_model(model, target, format, opset)
        print(f"exported {format} model to {written} (metadata: {written}.json)")
        return written

    def explain(
        self,
        model: L.LightningModule,
        ckpt_path: str,
        images: str | list[str],
        datamodule: L.LightningDataModule | None = None,
        method: Literal["rollout", "cls"] = "rollout",
        head_fusion: Literal["mean", "max"] = "mean",
        alpha: float = 0.5,
        output: str | None = None,
    ) -> list[Path]:
        """Draw where the ViT attends (attention rollout or last-layer CLS attention) over images, as PNGs.

        Args:
            model: the model, rebuilt from the checkpoint's config.
            ckpt_path: the trained checkpoint.
            images: an image file, a folder (searched recursively), or a list of them.
            datamodule: not used.
            method: ``rollout`` (attention through all layers, with the residual path) or ``cls`` (the last
                layer's attention from the class token).
            head_fusion: combine the heads' attention by ``mean`` or ``max``.
            alpha: opacity of the heat map over the image.
            output: folder for the PNGs; default ``<default_root_dir>/attention``.
        """
        from vitkit.explain import explain_images

        load_weights(model, ckpt_path)
        paths = _image_paths([images] if isinstance(images, str) else images)
        folder = Path(output) if output else Path(self.default_root_dir) / "attention"
        device = self.strategy.root_device
        written = explain_images(model, paths, folder, method, head_fusion, alpha, device=device)
        print(f"wrote {len(written)} attention maps ({method}) to {folder}")
        return written


def load_weights(model: L.LightningModule, ckpt_path: str) -> None:
    """Load a vitkit checkpoint's weights into ``model`` (``weights_only``: no code in the file runs)."""
    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path)
    model.on_load_checkpoint(checkpoint)
    missing, unexpected = model.load_state_dict(checkpoint.get("state_dict", {}), strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit the model: missing {missing[:10]}, unexpected {unexpected[:10]}. "
            "Use the checkpoint's own config (only --ckpt_path), not another recipe's model."
        )


def _image_paths(items: list[str]) -> list[Path]:
    """Image files named directly or found under folders."""
    paths: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            paths += list_images(path)
        elif path.is_file() and is_image_file(path):
            paths.append(path)
        else:
            raise DataError(f"not an image file or folder: {path}")
    if not paths:
        raise DataError(f"no images found in {', '.join(items)}.")
    return paths
