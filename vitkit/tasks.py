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
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassStatScores,
    MultilabelAUROC,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)
from torchmetrics.wrappers import ClasswiseWrapper

from vitkit.losses import output_weights, softmax_focal_loss

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

    def calibrate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Fit the task's calibration buffers (temperature, thresholds) on val ``outputs`` (raw head outputs) and
        ``targets`` (see :mod:`vitkit.calibration`); return what was fitted. Nothing for tasks without scores."""
        return {}

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
    """Single-label multi-class classification: cross-entropy on logits, softmax scores (divided by a temperature
    fitted on val, see :mod:`vitkit.calibration`).

    Metrics: ``acc`` (micro accuracy), ``acc_top5`` when there are more than 5 classes, and ``f1_macro``; at
    validation and test also ``balanced_acc`` (mean recall over classes) and per class ``precision/<class>``,
    ``recall/<class>``, ``f1/<class>`` and ``support/<class>``.

    Args:
        label_smoothing: cross-entropy label smoothing in [0, 1).
        class_weights: weight each class's loss: ``auto`` (inverse training frequency, from the data module's
            ``class_counts``), one weight per class, or ``{class name: weight}`` (others 1).
        focal_gamma: use the focal loss with this gamma (2 is usual) instead of cross-entropy: easy, confident
            samples count less.
    """

    headline = ("acc",)

    def __init__(
        self,
        label_smoothing: float = 0.0,
        class_weights: Literal["auto"] | list[float] | dict[str, float] | None = None,
        focal_gamma: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Classification: label_smoothing must be in [0, 1), got {label_smoothing}.")
        if focal_gamma is not None and focal_gamma < 0:
            raise ValueError(f"Classification: focal_gamma must be >= 0, got {focal_gamma}.")
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self.focal_gamma = focal_gamma

    def bind(self, num_outputs: int, names: list[str] | None = None, label_stats: LabelStats | None = None) -> None:
        if num_outputs < 2:
            raise ValueError(f"Classification needs at least 2 classes, got {num_outputs}.")
        super().bind(num_outputs, names, label_stats)
        weight = torch.ones(num_outputs)
        if self.class_weights is not None:
            counts = (label_stats or {}).get("class_counts")
            weight = output_weights(self.class_weights, self.names, counts, "Classification(class_weights)")
        self.register_buffer("class_weight", weight)
        self.register_buffer("temperature", torch.ones(()))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Soft targets (mixup/cutmix) are probability rows; F.cross_entropy handles both forms.
        weight = self.class_weight if self.class_weights is not None else None
        if self.focal_gamma is not None:
            return softmax_focal_loss(outputs.float(), targets, self.focal_gamma, weight, self.label_smoothing)
        return F.cross_entropy(outputs.float(), targets, weight=weight, label_smoothing=self.label_smoothing)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return (outputs.float() / self.temperature).softmax(dim=-1)

    def calibrate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        from vitkit.calibration import fit_temperature

        self.temperature.fill_(fit_temperature(outputs, targets))
        return {"temperature": float(self.temperature)}

    def metrics(self, stage: str) -> MetricCollection:
        n = self.num_outputs
        metrics = {"acc": MulticlassAccuracy(n, average="micro"), "f1_macro": MulticlassF1Score(n, average="macro")}
        if n > 5:
            metrics["acc_top5"] = MulticlassAccuracy(n, top_k=5, average="micro")
        if stage != "train":
            metrics["balanced_acc"] = MulticlassAccuracy(n, average="macro")
            for name, metric in (("precision", MulticlassPrecision), ("recall", MulticlassRecall),
                                 ("f1", MulticlassF1Score), ("support", _Support)):  # fmt: skip
                metrics[name] = ClasswiseWrapper(metric(n, average=None), labels=self.names, prefix=f"{name}/")
        # No compute groups: the per-class metrics share state shapes with f1_macro, but are computed differently.
        return MetricCollection(metrics, compute_groups=False)

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
        return {
            "task": "classification",
            "outputs": "class probabilities (softmax of logits / temperature), one per class_names entry",
            "temperature": float(self.temperature),
            "calibrated": float(self.temperature) != 1.0,
        }


class MultiLabel(Task):
    """Multi-label classification: independent sigmoid per label, binary cross-entropy on logits. Scores are the
    sigmoid of logits / temperature, and each label has its own threshold; both are fitted on val at the end of
    each validation of a fit (:mod:`vitkit.calibration`) and stored in the checkpoint.

    Metrics: ``map`` (macro average precision), ``f1_micro`` and ``f1_macro`` at ``threshold``, and per-label
    AUROC (``auroc/<label>``) at validation and test.

    Args:
        threshold: probability from which a label counts as present, until thresholds are tuned on val.
        pos_weight: weight each label's positives: ``true`` by ``negatives / positives`` in the training data (needs
            the data module's ``label_stats``), or one weight per label, or ``{label: weight}`` (others 1).
        focal_gamma: use torchvision's sigmoid focal loss with this gamma (2 is usual) instead of BCE.
        target_precision: tune each label's threshold to reach this precision on val with the most recall;
            by default thresholds maximise each label's F1.
    """

    headline = ("map",)

    def __init__(
        self,
        threshold: float = 0.5,
        pos_weight: bool | list[float] | dict[str, float] = False,
        focal_gamma: float | None = None,
        target_precision: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"MultiLabel: threshold must be in (0, 1), got {threshold}.")
        if focal_gamma is not None and focal_gamma < 0:
            raise ValueError(f"MultiLabel: focal_gamma must be >= 0, got {focal_gamma}.")
        if target_precision is not None and not 0.0 < target_precision <= 1.0:
            raise ValueError(f"MultiLabel: target_precision must be in (0, 1], got {target_precision}.")
        self.threshold = threshold
        self.use_pos_weight = pos_weight
        self.focal_gamma = focal_gamma
        self.target_precision = target_precision

    def bind(self, num_outputs: int, names: list[str] | None = None, label_stats: LabelStats | None = None) -> None:
        super().bind(num_outputs, names, label_stats)
        weight = torch.ones(num_outputs)
        if self.use_pos_weight is True:
            if not label_stats or "positive_fraction" not in label_stats:
                raise ValueError("MultiLabel(pos_weight=True) needs label frequencies: use a ManifestDataModule.")
            fraction = torch.tensor(label_stats["positive_fraction"]).clamp(1e-3, 1 - 1e-3)
            weight = (1 - fraction) / fraction
        elif self.use_pos_weight is not False:
            weight = output_weights(self.use_pos_weight, self.names, None, "MultiLabel(pos_weight)")
        self.register_buffer("pos_weight", weight)
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("thresholds", torch.full((num_outputs,), float(self.threshold)))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs, targets = outputs.float(), targets.float()
        if self.focal_gamma is None:
            return F.binary_cross_entropy_with_logits(outputs, targets, pos_weight=self.pos_weight)
        from torchvision.ops import sigmoid_focal_loss

        focal = sigmoid_focal_loss(outputs, targets, alpha=-1, gamma=self.focal_gamma, reduction="none")
        return (focal * (1 + (self.pos_weight - 1) * targets)).mean()  # positives weighted as BCE's pos_weight

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return (outputs.float() / self.temperature).sigmoid()

    def calibrate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        from vitkit.calibration import fit_temperature, tune_thresholds

        self.temperature.fill_(fit_temperature(outputs, targets, multilabel=True))
        tuned = tune_thresholds(self.predict(outputs), targets, self.threshold, self.target_precision)
        self.thresholds.copy_(tuned.to(self.thresholds.device))
        return {"temperature": float(self.temperature), "thresholds": self.thresholds.tolist()}

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
        # Uncalibrated: the logged metrics do not move with the temperature fitted at each validation.
        metrics.update(outputs.detach().float().sigmoid(), targets.round().long())

    def describe(self, prediction: torch.Tensor, top_k: int = 5) -> dict[str, str]:
        present = [name for name, p, t in zip(self.names, prediction.tolist(), self.thresholds.tolist(), strict=True)
                   if p >= t]  # fmt: skip
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
            "outputs": "label probabilities (sigmoid of logits / temperature), one per class_names entry; a label is "
            "present from its entry in thresholds",
            "threshold": self.threshold,
            "thresholds": self.thresholds.tolist(),
            "temperature": float(self.temperature),
            "calibrated": float(self.temperature) != 1.0,
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


class _Support(MulticlassStatScores):
    """Samples per true class (torchmetrics' stat scores: tp, fp, tn, fn, support)."""

    def compute(self) -> torch.Tensor:
        return super().compute()[..., 4].float()
