"""Batch-level augmentation applied in the training step (per-image augmentation is in the data transforms)."""

from __future__ import annotations

from typing import Any

import torch


class MixupCutmix:
    """timm's Mixup / CutMix on training batches, for classification: targets become soft class probabilities
    (the task's label smoothing still applies on top).

    Args:
        mixup_alpha: Beta(alpha, alpha) of mixup; 0 turns mixup off.
        cutmix_alpha: Beta(alpha, alpha) of cutmix; 0 turns cutmix off.
        prob: chance that a batch is mixed at all.
        switch_prob: chance of cutmix instead of mixup when both are on.
    """

    def __init__(
        self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5
    ) -> None:
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self._mixup: Any = None

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._mixup is None or self._mixup.num_classes != num_classes:
            from timm.data import Mixup  # lazily: see vitkit.backbone

            self._mixup = Mixup(mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha, prob=self.prob,
                                switch_prob=self.switch_prob, label_smoothing=0.0, num_classes=num_classes)  # fmt: skip
        if images.shape[0] % 2:  # timm mixes a batch with its reverse, which needs an even batch
            return images, torch.nn.functional.one_hot(targets, num_classes).to(images.dtype)
        return self._mixup(images, targets)
