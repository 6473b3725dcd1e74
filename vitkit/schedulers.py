"""Learning-rate schedules stepped per optimizer step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineLR(LambdaLR):
    """Linear warm-up from ``warmup_start_factor * lr`` to ``lr``, then cosine decay to ``min_lr_factor * lr``.

    Args:
        warmup: warm-up length in steps (int) or as a fraction of ``total_steps`` (float in [0, 1)).
        total_steps: steps of the whole run; vitkit's module fills it from ``trainer.estimated_stepping_batches``.
        min_lr_factor: final LR as a fraction of the base LR.
        warmup_start_factor: first LR as a fraction of the base LR.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup: int | float = 0.05,
        total_steps: int | None = None,
        min_lr_factor: float = 0.0,
        warmup_start_factor: float = 0.01,
        last_epoch: int = -1,
    ) -> None:
        if total_steps is None or total_steps < 1:
            raise ValueError(f"WarmupCosineLR: total_steps must be a positive int, got {total_steps}.")
        if isinstance(warmup, float) and not 0.0 <= warmup < 1.0:
            raise ValueError(f"WarmupCosineLR: a fractional warmup must be in [0, 1), got {warmup}.")
        self.total_steps = int(total_steps)
        self.warmup_steps = round(warmup * total_steps) if isinstance(warmup, float) else int(warmup)
        self.min_lr_factor = min_lr_factor
        self.warmup_start_factor = warmup_start_factor
        super().__init__(optimizer, self.factor, last_epoch=last_epoch)

    def factor(self, step: int) -> float:
        """LR multiplier at ``step``."""
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * step / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr_factor + (1.0 - self.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
