"""Scores people can trust: a temperature and per-label thresholds fitted on the val split, kept in the checkpoint.

- **Temperature scaling** (Guo et al., 2017): one scalar ``T`` divides the logits before the softmax (or sigmoid),
  chosen to minimise the val negative log-likelihood. Rankings and accuracy do not change; the scores become
  calibrated (a 0.8 is right about 80% of the time). ``T`` is a buffer of the task, so checkpoints carry it and
  ``predict``, ``export`` (inside the graph) and the report use it.
- **Thresholds** (multi-label): per label, the probability from which it counts as present, tuned on val to
  maximise F1, or to reach a target precision with the most recall.

:class:`Calibrate` fits both at the end of every validation epoch of a fit, before the checkpoints of that epoch
are saved: each checkpoint carries the calibration of its own weights (``TransferModule(calibrate=False)`` turns
it off). Under DDP the val logits of all processes are gathered (torchmetrics), so every process fits the same.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.aggregation import CatMetric
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_calibration_error,
    multilabel_precision_recall_curve,
)

#: Temperatures are kept in this range: a tiny val set that the model gets all right would push T towards 0.
T_RANGE = (0.05, 20.0)
#: Bins of the expected calibration error (torchmetrics' default).
N_BINS = 15


#: Folds of the cross-fitting check that a temperature helps on images it was not fitted on.
FOLDS = 5
#: The held-out NLL must fall by this fraction too: on a small val split of an already calibrated model, noise alone
#: makes ECE fall in 1 of 2 draws (a synthetic check: 45 of 90 held-out ECEs made worse by the ECE test alone, 6 of 90
#: with both tests, with the same gain on over- and under-confident models).
NLL_MARGIN = 0.01


def fit_temperature(
    logits: torch.Tensor, targets: torch.Tensor, multilabel: bool = False, folds: int | None = None
) -> float:
    """The temperature minimising the NLL of ``logits / T`` (softmax cross-entropy, or per-label sigmoid BCE with
    ``multilabel``), by L-BFGS on ``log T``; 1.0 when there is nothing to fit.

    With ``folds`` (default :data:`FOLDS`; at least ``2 * folds`` samples) the temperature is kept only if it
    lowers the ECE and the NLL on held-out samples: each fold is scored with a temperature fitted on the other
    folds (:func:`cross_fitted`). Fitted and scored on the same small val split, temperature scaling can look like
    a gain and be a loss on new images (ECE 0.144 -> 0.202 on a test split, issue 24); then 1.0 (no scaling).
    """
    logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
    folds = FOLDS if folds is None else folds
    value = _fit(logits, targets, multilabel)
    if value == 1.0 or not folds or len(logits) < 2 * folds:
        return value
    held_out = cross_fitted(logits, targets, multilabel, folds)
    plain = logits.sigmoid() if multilabel else logits.softmax(-1)
    ece_helps = expected_calibration_error(held_out, targets, multilabel) < expected_calibration_error(
        plain, targets, multilabel
    )
    nll_helps = _nll_of(held_out, targets, multilabel) < (1 - NLL_MARGIN) * _nll_of(plain, targets, multilabel)
    return value if ece_helps and nll_helps else 1.0


def cross_fitted(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool = False, folds: int = FOLDS):
    """Out-of-fold calibrated probabilities: sample ``i`` (fold ``i % folds``) divided by the temperature fitted
    on the other folds, so each score comes from a temperature that never saw it (held-out ECE without a test
    split)."""
    logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
    fold = torch.arange(len(logits)) % folds
    scaled = torch.empty_like(logits)
    for k in range(folds):
        rest = fold != k
        scaled[~rest] = logits[~rest] / _fit(logits[rest], targets[rest], multilabel)
    return scaled.sigmoid() if multilabel else scaled.softmax(-1)


def _nll_of(probabilities: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> float:
    p = probabilities.clamp(1e-7, 1 - 1e-7)
    if multilabel:
        return float(F.binary_cross_entropy(p, targets.float()))
    return float(F.nll_loss(p.log(), targets.long()))


def _fit(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> float:
    """The NLL-minimising temperature of ``logits`` (float, CPU) for ``targets``, within :data:`T_RANGE`."""
    if len(logits) == 0:
        return 1.0
    targets = targets.float() if multilabel else targets.long()
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        scaled = logits / log_t.exp()
        loss = F.binary_cross_entropy_with_logits(scaled, targets) if multilabel else F.cross_entropy(scaled, targets)
        loss.backward()
        return loss

    optimizer.step(nll)
    value = float(log_t.detach().exp())
    return min(max(value, T_RANGE[0]), T_RANGE[1]) if value == value else 1.0  # NaN: leave the scores alone


def expected_calibration_error(probabilities: torch.Tensor, targets: torch.Tensor, multilabel: bool = False) -> float:
    """ECE (L1, :data:`N_BINS` equal-width bins, torchmetrics): over the top class's confidence, or over every
    label's probability for multi-label."""
    if multilabel:
        return float(binary_calibration_error(probabilities.flatten(), targets.flatten().long(), n_bins=N_BINS))
    classes = probabilities.shape[-1]
    return float(multiclass_calibration_error(probabilities, targets.long(), classes, n_bins=N_BINS))


def tune_thresholds(
    probabilities: torch.Tensor, targets: torch.Tensor, default: float = 0.5, target_precision: float | None = None
) -> torch.Tensor:
    """Per label, the probability threshold that maximises F1 on ``(probabilities, targets)``, or with
    ``target_precision`` the one with the most recall at that precision or more (the highest precision reachable
    when none reaches it). Thresholds sit halfway between the chosen score and the next lower one, so that val
    scores on either side keep their side. Labels without positives keep ``default``.
    """
    probabilities, targets = probabilities.detach().float().cpu(), targets.detach().cpu().round().long()
    labels = probabilities.shape[-1]
    precision, recall, thresholds = multilabel_precision_recall_curve(probabilities, targets, labels)
    chosen = torch.full((labels,), float(default))
    for label in range(labels):
        if targets[:, label].sum() == 0:
            continue
        p, r, t = precision[label][:-1], recall[label][:-1], thresholds[label]  # the last point has no threshold
        if target_precision is None:
            best = int(torch.argmax(2 * p * r / (p + r).clamp_min(1e-12)))
        else:
            reached = torch.nonzero(p >= target_precision).flatten()
            best = int(reached[torch.argmax(r[reached])]) if len(reached) else int(torch.argmax(p))
        below = probabilities[:, label][probabilities[:, label] < t[best]]
        chosen[label] = float((t[best] + below.max()) / 2) if len(below) else float(t[best]) / 2
    return chosen


class Calibrate(L.Callback):
    """At the end of each validation epoch of a fit, fit the task's calibration (:meth:`vitkit.tasks.Task.calibrate`:
    temperature, multi-label thresholds) on that epoch's val outputs, before that epoch's checkpoints are written.
    Added by :class:`~vitkit.module.TransferModule` unless ``calibrate=False``; inactive outside ``fit``."""

    def __init__(self) -> None:
        self._outputs: CatMetric | None = None
        self._targets: CatMetric | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.state.fn == "fit" and not trainer.sanity_checking

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._outputs = self._targets = None
        if self._active(trainer):
            self._outputs = CatMetric(nan_strategy="disable").to(pl_module.device)
            self._targets = CatMetric(nan_strategy="disable").to(pl_module.device)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if self._outputs is not None and isinstance(outputs, dict):
            self._outputs.update(outputs["outputs"].float())
            self._targets.update(outputs["targets"].float())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._outputs is None or not self._outputs.update_called:
            return
        logits, targets = self._outputs.compute(), self._targets.compute()  # all processes' val outputs
        pl_module.task.calibrate(logits, targets)
        for buffer in pl_module.task.buffers():  # one process's fit for all, whatever rounding did
            buffer.copy_(trainer.strategy.broadcast(buffer.detach().clone(), src=0).to(buffer.device))
        self._outputs = self._targets = None
