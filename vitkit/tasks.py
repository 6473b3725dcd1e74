"""Tasks: the loss, output activation, metrics and prediction columns for one kind of target.

A task is an ``nn.Module`` so that statistics it learns from the training data (target mean/std, label
frequencies) are buffers: they move with the model and are saved in, and restored from, its checkpoints.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, R2Score
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelAUROC,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)
from torchmetrics.wrappers import ClasswiseWrapper

#: Statistics of the training targets, computed by the data module (see ``ImageDataModule.label_stats``).
LabelStats = dict[str, list[float]]


class Task(nn.Module):
    """What a head's raw outputs mean.

    The model calls :meth:`bind` once with the output size, output names and training statistics.
    """

    #: Metrics shown on the progress bar (besides the loss); all metrics go to the loggers.
    headline: tuple[str, ...] = ()

    def bind(self, num_outputs: int, names: list[str] | None = None, label_stats: LabelStats | None = None) -> None:
        """Learn the output size, names (class or target names) and training-target statistics."""
        self.num_outputs = num_outputs
        self.names = list(names) if names is not None else [str(i) for i in range(num_outputs)]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw head outputs to the task's predictions (probabilities, values in original units, ...)."""
        raise NotImplementedError

    def metrics(self, stage: str) -> MetricCollection:
        """A fresh metric collection for ``stage`` (train/val/test)."""
        raise NotImplementedError

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Feed one batch to ``metrics``."""
        metrics.update(self.predict(outputs.detach()), targets)

    def describe(self, prediction: torch.Tensor, top_k: int = 5) -> dict[str, str]:
        """CSV columns for one image's prediction."""
        raise NotImplementedError

    def describe_target(self, target: Any | None) -> dict[str, str]:
        """CSV columns for one image's target; empty values when it is unknown (``None``)."""
        raise NotImplementedError

    def export_info(self) -> dict[str, Any]:
        """What an exported model's outputs mean (written to the export's JSON sidecar)."""
        return {"task": type(self).__name__.lower(), "outputs": "task predictions, one per class_names entry"}


class Classification(Task):
    """Single-label multi-class classification: cross-entropy on logits, softmax scores.

    Metrics: ``acc`` (micro accuracy), ``acc_top5`` when there are more than 5 classes, and ``f1_macro``.

    Args:
        label_smoothing: cross-entropy label smoothing in [0, 1).
    """

    headline = ("acc",)

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Classification: label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = label_smoothing

    def bind(self, num_outputs: int, names: list[str] | None = None, label_stats: LabelStats | None = None) -> None:
        if num_outputs < 2:
            raise ValueError(f"Classification needs at least 2 classes, got {num_outputs}.")
        super().bind(num_outputs, names, label_stats)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Soft targets (mixup/cutmix) are probability rows; F.cross_entropy handles both forms.
        return F.cross_entropy(outputs.float(), targets, label_smoothing=self.label_smoothing)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(dim=-1)

    def metrics(self, stage: str) -> MetricCollection:
        n = self.num_outputs
        metrics = {"acc": MulticlassAccuracy(n, average="micro"), "f1_macro": MulticlassF1Score(n, average="macro")}
        if n > 5:
            metrics["acc_top5"] = MulticlassAccuracy(n, top_k=5, average="micro")
        return MetricCollection(metrics)

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if targets.ndim == 1:  # soft (mixup) targets have no single true class to score
            metrics.update(outputs.detach().float(), targets)

    def describe(self, prediction: torch.Tensor, top_k: int = 5) -> dict[str, str]:
        scores, ranked = prediction.topk(min(top_k, prediction.numel()))
        row = {"prediction": self.names[int(ranked[0])], "score": f"{float(scores[0]):.6f}"}
        for i, (index, score) in enumerate(zip(ranked.tolist(), scores.tolist(), strict=True), start=1):
            row[f"top{i}"], row[f"top{i}_score"] = self.names[index], f"{score:.6f}"
        return row

    def describe_target(self, target: Any | None) -> dict[str, str]:
        return {"target": self.names[int(target)] if target is not None else ""}

    def export_info(self) -> dict[str, Any]:
        return {"task": "classification", "outputs": "class probabilities (softmax), one per class_names entry"}


class MultiLabel(Task):
    """Multi-label classification: independent sigmoid per label, binary cross-entropy on logits.

    Metrics: ``map`` (macro average precision), ``f1_micro`` and ``f1_macro`` at ``threshold``, and per-label
    AUROC (``auroc/<label>``) at validation and test.

    Args:
        threshold: probability from which a label counts as present.
        pos_weight: weight positives by ``negatives / positives`` of each label in the training data, to balance
            rare labels (needs the data module's ``label_stats``).
    """

    headline = ("map",)

    def __init__(self, threshold: float = 0.5, pos_weight: bool = False) -> None:
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"MultiLabel: threshold must be in (0, 1), got {threshold}.")
        self.threshold = threshold
        self.use_pos_weight = pos_weight

    def bind(self, num_outputs: int, names: list[str] | None = None, label_stats: LabelStats | None = None) -> None:
        super().bind(num_outputs, names, label_stats)
        weight = torch.ones(num_outputs)
        if self.use_pos_weight:
            if not label_stats or "positive_fraction" not in label_stats:
                raise ValueError("MultiLabel(pos_weight=True) needs label frequencies: use a ManifestDataModule.")
            fraction = torch.tensor(label_stats["positive_fraction"]).clamp(1e-3, 1 - 1e-3)
            weight = (1 - fraction) / fraction
        self.register_buffer("pos_weight", weight)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs.float(), targets.float(), pos_weight=self.pos_weight)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().sigmoid()

    def metrics(self, stage: str) -> MetricCollection:
        n, t = self.num_outputs, self.threshold
        metrics: dict[str, Any] = {
            "map": MultilabelAveragePrecision(n, average="macro"),
            "f1_micro": MultilabelF1Score(n, threshold=t, average="micro"),
            "f1_macro": MultilabelF1Score(n, threshold=t, average="macro"),
        }
        if stage != "train":
            metrics["auroc"] = ClasswiseWrapper(MultilabelAUROC(n, average=None), labels=self.names, prefix="auroc/")
        return MetricCollection(metrics)

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        metrics.update(self.predict(outputs.detach()), targets.round().long())

    def describe(self, prediction: torch.Tensor, top_k: int = 5) -> dict[str, str]:
        present = [name for name, p in zip(self.names, prediction.tolist(), strict=True) if p >= self.threshold]
        row = {"prediction": "|".join(present)}
        row.update({f"p_{name}": f"{p:.6f}" for name, p in zip(self.names, prediction.tolist(), strict=True)})
        return row

    def describe_target(self, target: Any | None) -> dict[str, str]:
        if target is None:
            return {"target": ""}
        return {"target": "|".join(name for name, y in zip(self.names, target, strict=True) if y >= 0.5)}

    def export_info(self) -> dict[str, Any]:
        return {
            "task": "multilabel",
            "outputs": "label probabilities (sigmoid), one per class_names entry; present from threshold",
            "threshold": self.threshold,
        }


class Regression(Task):
    """Regression of one or more values. Targets are standardised with the training mean/std for the loss;
    predictions and metrics are in the original units.

    Metrics: ``mae``, ``rmse`` and ``r2`` (averaged over targets), plus ``mae/<target>`` and ``r2/<target>`` when
    there are several.

    Args:
        loss: ``mse``, ``l1`` or ``huber`` (on standardised targets).
        huber_delta: the Huber loss's delta, in standard deviations.
        standardize: learn standardised targets (recommended); off, the head regresses raw values.
    """

    headline = ("r2",)

    def __init__(
        self, loss: Literal["mse", "l1", "huber"] = "mse", huber_delta: float = 1.0, standardize: bool = True
    ) -> None:
        super().__init__()
        if loss not in ("mse", "l1", "huber"):
            raise ValueError(f"Regression: loss must be 'mse', 'l1' or 'huber', got {loss!r}.")
        self.loss_name = loss
        self.huber_delta = huber_delta
        self.standardize = standardize

    def bind(self, num_outputs: int, names: list[str] | None = None, label_stats: LabelStats | None = None) -> None:
        super().bind(num_outputs, names, label_stats)
        mean, std = torch.zeros(num_outputs), torch.ones(num_outputs)
        if self.standardize and label_stats and "mean" in label_stats:
            mean = torch.tensor(label_stats["mean"], dtype=torch.float32)
            std = torch.tensor(label_stats["std"], dtype=torch.float32).clamp_min(1e-8)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        scaled = (targets.float().view_as(outputs) - self.mean) / self.std
        if self.loss_name == "l1":
            return F.l1_loss(outputs.float(), scaled)
        if self.loss_name == "huber":
            return F.huber_loss(outputs.float(), scaled, delta=self.huber_delta)
        return F.mse_loss(outputs.float(), scaled)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float() * self.std + self.mean

    def metrics(self, stage: str) -> MetricCollection:
        metrics: dict[str, Any] = {
            "mae": MeanAbsoluteError(),
            "rmse": MeanSquaredError(squared=False),
            "r2": R2Score(multioutput="uniform_average"),
        }
        if self.num_outputs > 1:
            per_target = MeanAbsoluteError(num_outputs=self.num_outputs)
            metrics["mae_per_target"] = ClasswiseWrapper(per_target, labels=self.names, prefix="mae/")
            r2 = R2Score(multioutput="raw_values")
            metrics["r2_per_target"] = ClasswiseWrapper(r2, labels=self.names, prefix="r2/")
        # No compute groups: a wrapped R2Score would share the plain one's state and be computed un-updated.
        return MetricCollection(metrics, compute_groups=False)

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        predictions = self.predict(outputs.detach())
        targets = targets.float().view_as(predictions)
        if self.num_outputs == 1:
            predictions, targets = predictions.squeeze(-1), targets.squeeze(-1)
        metrics.update(predictions, targets)

    def describe(self, prediction: torch.Tensor, top_k: int = 5) -> dict[str, str]:
        return {name: f"{v:.6g}" for name, v in zip(self.names, prediction.tolist(), strict=True)}

    def describe_target(self, target: Any | None) -> dict[str, str]:
        values = [None] * self.num_outputs if target is None else list(target)
        return {f"target_{n}": "" if v is None else f"{v:.6g}" for n, v in zip(self.names, values, strict=True)}

    def export_info(self) -> dict[str, Any]:
        return {"task": "regression", "outputs": "values in the training targets' units, one per class_names entry"}
