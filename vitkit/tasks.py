"""Tasks: the loss, output activation and torchmetrics for one kind of target."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


class Task:
    """What a head's raw outputs mean. Subclasses set ``monitor``/``mode`` for the usual best-checkpoint metric."""

    monitor: str = "val/loss"
    mode: str = "min"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Turn raw head outputs into the task's prediction scores (probabilities, values, ...)."""
        raise NotImplementedError

    def metrics(self, num_outputs: int) -> MetricCollection:
        """A fresh metric collection; the module clones it per stage (train/val/test)."""
        raise NotImplementedError


class Classification(Task):
    """Single-label multi-class classification: cross-entropy on logits, softmax scores.

    Metrics: ``acc`` (micro accuracy), ``acc_top5`` when there are more than 5 classes, and ``f1_macro``.

    Args:
        label_smoothing: cross-entropy label smoothing in [0, 1).
    """

    monitor = "val/acc"
    mode = "max"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Classification: label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = label_smoothing

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Soft targets (mixup/cutmix) are probability rows; F.cross_entropy handles both forms.
        return F.cross_entropy(outputs.float(), targets, label_smoothing=self.label_smoothing)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(dim=-1)

    def metrics(self, num_outputs: int) -> MetricCollection:
        if num_outputs < 2:
            raise ValueError(f"Classification needs at least 2 classes, got {num_outputs}.")
        metrics = {
            "acc": MulticlassAccuracy(num_outputs, average="micro"),
            "f1_macro": MulticlassF1Score(num_outputs, average="macro"),
        }
        if num_outputs > 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_outputs, top_k=5, average="micro")
        return MetricCollection(metrics)
