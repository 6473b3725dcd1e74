"""Class-balanced sampling of the training split (``--data.sampler balanced``)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DistributedSampler

from vitkit.errors import DataError

#: From this ratio of the largest to the smallest training class, check-data and fit suggest balancing.
IMBALANCED = 3.0


def balanced_weights(targets: np.ndarray) -> np.ndarray:
    """Per-sample weights that make every class equally likely to be drawn: ``1 / count`` of the sample's class.

    ``targets`` are class indices ``(N,)``, or 0/1 label vectors ``(N, L)`` for multi-label data, where a sample is
    weighted by its rarest positive label (samples without any label form a group of their own).
    """
    targets = np.asarray(targets)
    if targets.ndim == 1:
        if targets.dtype.kind == "f":
            raise DataError("sampler balanced needs class labels or label sets; regression targets have no classes.")
        counts = np.bincount(targets, minlength=int(targets.max()) + 1)
        return 1.0 / counts[targets]
    if not np.isin(targets, (0.0, 1.0)).all():
        raise DataError("sampler balanced needs class labels or label sets; regression targets have no classes.")
    present = targets >= 0.5
    counts = present.sum(axis=0).astype(np.float64)
    rarest = np.where(present, 1.0 / np.maximum(counts, 1.0), 0.0).max(axis=1)  # 1 / count of the rarest label
    empty = ~present.any(axis=1)
    rarest[empty] = 1.0 / max(int(empty.sum()), 1)
    return rarest


class BalancedSampler(DistributedSampler):
    """Draws training samples with replacement, with probabilities from :func:`balanced_weights` (what torch's
    ``WeightedRandomSampler`` does, without its limit of 2^24 samples), split across DDP processes.

    Each epoch every process draws ``ceil(N / world_size)`` indices, so an epoch is as long as without balancing.
    All processes draw the same seeded list (``seed + epoch``: :meth:`set_epoch`, which Lightning calls every epoch)
    and each takes every ``world_size``-th index, so together they make one weighted draw. A ``DistributedSampler``
    subclass, so Lightning keeps it under DDP instead of wrapping it in its own distributed sampler.
    """

    def __init__(self, targets: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        weights = balanced_weights(targets)
        super().__init__(range(len(weights)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.probabilities = weights / weights.sum()
        self.num_samples = math.ceil(len(weights) / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        drawn = rng.choice(len(self.probabilities), size=self.total_size, replace=True, p=self.probabilities)
        return iter(drawn[self.rank : self.total_size : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def warn_if_corrected_twice(sampler: str | None, task: object) -> None:
    """Warn (once, on rank 0) where the balanced sampler and an automatic loss weight both correct the imbalance."""
    if sampler != "balanced":
        return
    if getattr(task, "class_weights", None) == "auto":
        weighting = "--model.task.init_args.class_weights auto"
    elif getattr(task, "use_pos_weight", None) is True:
        weighting = "--model.task.init_args.pos_weight true"
    else:
        return
    rank_zero_warn(
        f"vitkit: --data.sampler balanced and {weighting} both correct the class imbalance, so rare "
        "classes are favoured twice (squared); choose one of them."
    )


def balancing_advice(ratio: float, kind: str = "class") -> str | None:
    """What to do about a largest/smallest training count ``ratio`` above :data:`IMBALANCED`, else None."""
    if ratio <= IMBALANCED:
        return None
    fix = ("--data.sampler balanced, or --model.task.init_args.class_weights auto" if kind == "class"
           else "--data.sampler balanced, or --model.task.init_args.pos_weight true")  # fmt: skip
    plural = "classes" if kind == "class" else f"{kind}s"
    return f"rare {plural} may never be predicted; balance the training: {fix}"


def imbalance_of(targets: np.ndarray, names: list[str]) -> tuple[float, str, str] | None:
    """``(ratio, largest, smallest)`` of the training counts per class (class indices) or per label (0/1 label
    vectors); None for regression targets or fewer than 2 classes."""
    targets = np.asarray(targets)
    if targets.ndim == 1 and targets.dtype.kind in "iu":
        counts = np.bincount(targets, minlength=len(names))
    elif targets.ndim == 2 and np.isin(targets, (0.0, 1.0)).all():
        counts = targets.sum(axis=0)
    else:
        return None
    if len(counts) < 2 or len(counts) != len(names):
        return None
    largest, smallest = int(np.argmax(counts)), int(np.argmin(counts))
    return float(counts[largest]) / max(float(counts[smallest]), 1.0), names[largest], names[smallest]
