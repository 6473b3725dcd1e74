"""Callbacks vitkit adds to runs: a visual report of each validation epoch and of a test."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar as LightningProgressBar
from lightning.pytorch.callbacks import RichProgressBar
from PIL import Image, ImageDraw, ImageFont
from torchmetrics.classification import MulticlassConfusionMatrix

from vitkit.tasks import Classification


class ProgressBar(RichProgressBar):
    """Lightning's Rich progress bar without the logger's version (``v_num``: a W&B run id says nothing there)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class EpochLines(LightningProgressBar):
    """Progress for a log file (stdout not a terminal: nohup, SLURM, CI), as timm and Ultralytics print it: one line
    per epoch with the progress bar's headline metrics, ``epoch 3/20  train/loss 0.512  val/loss 0.431  val/acc 0.83
    (12 s)``. Said when the epoch's metrics are all in: at the next epoch's start, or at the end of training."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled, self._started, self._pending = True, 0.0, False

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._say(trainer, trainer.current_epoch)  # the previous epoch, whose train metrics are logged by now
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending, self._seconds = True, time.monotonic() - self._started

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._say(trainer, trainer.current_epoch)

    def _say(self, trainer: L.Trainer, epochs_done: int) -> None:
        if not self._pending or not self._enabled or not trainer.is_global_zero:
            return
        self._pending = False
        shown = {k: v for k, v in trainer.progress_bar_metrics.items() if k not in ("train/loss", "v_num")}
        if "train/loss_epoch" in trainer.callback_metrics:
            shown = {"train/loss": float(trainer.callback_metrics["train/loss_epoch"]), **shown}
        values = "  ".join(f"{k} {float(v):.4g}" for k, v in shown.items())
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        print(f"epoch {epochs_done}{total}  {values}  ({self._seconds:.0f} s)", flush=True)


class ValidationReport(L.Callback):
    """At the end of validation (and of ``vitkit test``): a confusion-matrix image (classification) and a table of
    images with their predictions and targets. Logged to Weights & Biases when a WandbLogger is attached, otherwise
    saved as PNG files: ``<run>/validation/*_epochNNN.png`` during fit, ``<run>/validate/*.png`` and
    ``<run>/test/*.png`` for those commands.

    Args:
        num_samples: images in the table.
        every_n_epochs: report every n-th validation epoch.
    """

    def __init__(self, num_samples: int = 16, every_n_epochs: int = 1) -> None:
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self._confusion: MulticlassConfusionMatrix | None = None
        self._samples: list[tuple[torch.Tensor, torch.Tensor, Any]] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self._collect(trainer, pl_module, outputs, batch)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self._collect(trainer, pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._samples = []
        self._confusion = None
        if self._active(trainer) and isinstance(pl_module.task, Classification):
            self._confusion = MulticlassConfusionMatrix(pl_module.num_outputs).to(pl_module.device)

    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any) -> None:
        if not self._active(trainer) or not isinstance(outputs, dict):
            return
        if self._confusion is not None and outputs["targets"].ndim == 1:
            self._confusion.update(outputs["outputs"], outputs["targets"])
        # a few per batch, so the table spans classes (validation sets are often sorted by class)
        take = min(self.num_samples - len(self._samples), max(1, self.num_samples // 8))
        if take > 0 and trainer.is_global_zero:
            predictions = pl_module.task.predict(outputs["outputs"][:take]).cpu()
            for image, prediction, target in zip(
                batch[0][:take].cpu(), predictions, outputs["targets"][:take].cpu(), strict=True
            ):
                self._samples.append((image, prediction, target))

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._active(trainer):
            return
        # A collective call: every process makes it, before only rank 0 goes on.
        matrix = self._confusion.compute().cpu() if self._confusion is not None else None
        if not trainer.is_global_zero:
            return
        task, names = pl_module.task, pl_module.task.names
        images = [to_pil(img, pl_module.data_config) for img, _, _ in self._samples]
        rows = [(_caption(task.describe(p)), _caption(task.describe_target(t))) for _, p, t in self._samples]
        wandb_loggers = wandb_loggers_of(trainer)
        if wandb_loggers:
            import wandb

            for logger in wandb_loggers:
                if matrix is not None:
                    logger.log_image(f"{stage}/confusion_matrix", [render_confusion_matrix(matrix, names)], step=None)
                data = [[wandb.Image(img), pred, target] for img, (pred, target) in zip(images, rows, strict=True)]
                logger.log_table(f"{stage}/samples", columns=["image", "prediction", "target"], data=data)
            return
        fitting = trainer.state.fn == "fit"
        folder = Path(trainer.default_root_dir) / ("validation" if fitting else "")
        suffix = f"_epoch{trainer.current_epoch:03d}" if fitting else ""
        folder.mkdir(parents=True, exist_ok=True)
        if matrix is not None:
            render_confusion_matrix(matrix, names).save(folder / f"confusion_matrix{suffix}.png")
        if images:
            render_samples(images, rows).save(folder / f"samples{suffix}.png")


def wandb_loggers_of(trainer: L.Trainer) -> list[Any]:
    """The trainer's W&B loggers; without importing wandb (slow) when there are none: a WandbLogger instance
    means its module was imported already."""
    module = sys.modules.get("lightning.pytorch.loggers.wandb")
    return [logger for logger in trainer.loggers if module is not None and isinstance(logger, module.WandbLogger)]


def _caption(columns: dict[str, str]) -> str:
    if "prediction" in columns:
        return columns["prediction"] + (f" ({float(columns['score']):.2f})" if "score" in columns else "")
    if list(columns) == ["target"]:
        return columns["target"]
    return " ".join(f"{k.removeprefix('target_')}={v}" for k, v in columns.items())


def to_pil(image: torch.Tensor, data_config: dict[str, Any]) -> Image.Image:
    """Undo the transform's normalisation of a CHW tensor."""
    mean = torch.tensor(data_config["mean"]).view(-1, 1, 1)
    std = torch.tensor(data_config["std"]).view(-1, 1, 1)
    pixels = ((image.float() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels)


def render_confusion_matrix(matrix: torch.Tensor, names: list[str]) -> Image.Image:
    """A confusion matrix as a picture: rows are true classes, columns predicted; shade = share of the row."""
    n = matrix.shape[0]
    cell = max(14, min(48, 640 // n))
    label_w = 8 + 6 * min(16, max(len(name) for name in names))
    top = 24
    img = Image.new("RGB", (label_w + n * cell + 8, top + n * cell + label_w), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((4, 4), "rows: true class, columns: predicted", fill="black", font=font)
    shares = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp_min(1)
    for i in range(n):
        draw.text((4, top + i * cell + cell // 2 - 5), names[i][:16], fill="black", font=font)
        for j in range(n):
            shade = int(255 * (1 - float(shares[i, j])))
            x, y = label_w + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            if cell >= 24:
                colour = "white" if shade < 128 else "black"
                draw.text((x + 3, y + cell // 2 - 5), str(int(matrix[i, j])), fill=colour, font=font)
    column_labels = Image.new("RGB", (label_w, n * cell), "white")
    column_draw = ImageDraw.Draw(column_labels)
    for j in range(n):
        column_draw.text((4, j * cell + cell // 2 - 5), names[j][:16], fill="black", font=font)
    img.paste(column_labels.rotate(90, expand=True), (label_w, top + n * cell))
    return img


def render_samples(images: list[Image.Image], rows: list[tuple[str, str]], size: int = 96) -> Image.Image:
    """A grid of thumbnails captioned with prediction (p) and target (t)."""
    columns = min(8, len(images))
    lines = 28
    grid = Image.new("RGB", (columns * (size + 4), -(-len(images) // columns) * (size + lines + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (img, (prediction, target)) in enumerate(zip(images, rows, strict=True)):
        x, y = (i % columns) * (size + 4), (i // columns) * (size + lines + 4)
        grid.paste(img.resize((size, size)), (x, y))
        draw.text((x, y + size + 2), f"p: {prediction}"[:24], fill="black")
        label = prediction.split(" (")[0]
        colour = "black" if "=" in target else (0, 110, 0) if label == target else "red"  # values: no right/wrong
        draw.text((x, y + size + 14), f"t: {target}"[:24], fill=colour)
    return grid
