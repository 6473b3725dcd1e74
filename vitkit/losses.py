"""Loss weighting for imbalanced data: class weights from a spec, and the focal loss for softmax outputs.

The sigmoid focal loss (multi-label) is torchvision's ``sigmoid_focal_loss``; torchvision has no softmax one, so
:func:`softmax_focal_loss` is the few lines on top of ``log_softmax`` that Lin et al. (2017) define.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vitkit.errors import DataError

#: ``"auto"`` (inverse training frequency), one weight per output, or ``{name: weight}`` (others 1).
WeightSpec = str | Sequence[float] | Mapping[str, float] | None


def output_weights(spec: Any, names: list[str], counts: Sequence[float] | None, what: str) -> torch.Tensor:
    """One weight per output from ``spec``.

    Args:
        spec: ``"auto"``: ``N / (K * count)`` per class (scikit-learn's "balanced"; 1 on average over the
            training samples), from ``counts``; a list with one weight per output; or ``{name: weight}``.
        names: the outputs' names, in order.
        counts: training counts per output, for ``"auto"``.
        what: the argument's name, for errors (``Classification(class_weights)``).
    """
    if isinstance(spec, str):
        if spec != "auto":
            raise ValueError(f"{what} must be 'auto', a list or a mapping of names to weights, got {spec!r}.")
        if counts is None:
            raise DataError(
                f"{what}='auto' needs the training label counts (label_stats) from the data module: use a "
                "ClassFolderDataModule, ManifestDataModule or HFDatasetDataModule, or give the weights as a list."
            )
        counts_t = torch.tensor(list(counts), dtype=torch.float32).clamp_min(1.0)
        return counts_t.sum() / (len(counts_t) * counts_t)
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise DataError(f"{what} names {', '.join(unknown)}, which are not outputs; they are {', '.join(names)}.")
        weights = torch.tensor([float(spec.get(name, 1.0)) for name in names])
    else:
        weights = torch.tensor([float(w) for w in spec])
        if len(weights) != len(names):
            raise DataError(f"{what} has {len(weights)} weights for {len(names)} outputs ({', '.join(names)}).")
    if (weights <= 0).any() or not torch.isfinite(weights).all():
        raise ValueError(f"{what} must be positive and finite, got {weights.tolist()}.")
    return weights


def softmax_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Focal loss for single-label classification: ``-sum_c q_c w_c (1 - p_c)^gamma log p_c`` per sample, with ``q``
    the (smoothed) target distribution; averaged like ``F.cross_entropy`` (by the summed weights of the true
    classes for class indices, by the batch size for probability targets), which it equals at ``gamma = 0``
    without label smoothing.
    """
    log_p = F.log_softmax(logits, dim=-1)
    hard = targets.ndim == 1
    q = F.one_hot(targets, logits.shape[-1]).to(log_p.dtype) if hard else targets.to(log_p.dtype)
    if label_smoothing:
        q = q * (1 - label_smoothing) + label_smoothing / logits.shape[-1]
    w = weight.to(log_p.dtype) if weight is not None else torch.ones_like(log_p[0])
    per_sample = -(q * w * (1 - log_p.exp()).pow(gamma) * log_p).sum(dim=-1)
    denominator = w[targets].sum() if hard else torch.tensor(float(len(logits)), device=logits.device)
    return per_sample.sum() / denominator
