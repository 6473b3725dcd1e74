"""Distillation: the backbone learns to reproduce a frozen teacher's features on the user's images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from vitkit.backbone import Backbone
from vitkit.module import _default_optimizer
from vitkit.pretrain.base import PretrainModule


class Distillation(PretrainModule):
    """Feature distillation from a frozen teacher into the backbone, e.g. a large fine-tuned model into a small
    deployable one, on unlabelled images of the target domain.

    Each image (one random crop) goes to both models; the student's pooled embedding, through a linear
    ``projection`` when the two feature sizes differ, is pulled towards the teacher's. When the teacher's data
    config (input size, mean, std) differs from the student's, its input is converted: resized and re-normalised.

    Args:
        backbone: the student.
        teacher: a :class:`vitkit.Backbone` with weights: a timm model with ``pretrained: true``, a weights file,
            or a vitkit checkpoint (its backbone). Frozen and kept in eval mode.
        loss: ``cosine`` (1 - cosine similarity, scale-free) or ``mse`` (on the raw features).
        augment: ``timm.data.create_transform`` training arguments for the crops (``scale``, ``hflip``,
            ``color_jitter``, ``auto_augment``, ...).
        optimizer, lr_scheduler, scheduler_interval, knn_k, knn_t: see :class:`~vitkit.pretrain.PretrainModule`.
    """

    def __init__(
        self,
        backbone: Backbone,
        teacher: Backbone,
        loss: Literal["cosine", "mse"] = "cosine",
        augment: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        knn_k: int = 20,
        knn_t: float = 0.1,
    ) -> None:
        super().__init__(backbone, optimizer, lr_scheduler, scheduler_interval, knn_k, knn_t)
        if loss not in ("cosine", "mse"):
            raise ValueError(f"Distillation: loss must be 'cosine' or 'mse', got {loss!r}.")
        self.teacher = teacher.requires_grad_(False)
        width, teacher_width = backbone.num_features, teacher.num_features
        self.projection = nn.Linear(width, teacher_width) if width != teacher_width else nn.Identity()
        self.loss = loss
        self.augment = dict(augment or {})
        student, config = backbone.data_config, teacher.data_config
        self.teacher_size = tuple(config["input_size"][1:])
        self.resize = self.teacher_size != tuple(student["input_size"][1:])
        # x_teacher = (x_student * std_s + mean_s - mean_t) / std_t; not saved in checkpoints (persistent=False)
        std_s, mean_s = _channels(student["std"]), _channels(student["mean"])
        std_t, mean_t = _channels(config["std"]), _channels(config["mean"])
        self.register_buffer("input_scale", std_s / std_t, persistent=False)
        self.register_buffer("input_shift", (mean_s - mean_t) / std_t, persistent=False)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def train_transform(self, data_config: dict[str, Any]) -> Callable:
        from timm.data import create_transform

        return create_transform(**data_config, is_training=True, **self.augment)

    def teacher_input(self, images: torch.Tensor) -> torch.Tensor:
        """``images``, normalised for the student, as the teacher expects them (its size, mean and std)."""
        images = images * self.input_scale + self.input_shift
        if self.resize:
            images = F.interpolate(images, size=self.teacher_size, mode="bicubic", align_corners=False)
        return images

    def distillation_loss(self, images: torch.Tensor) -> torch.Tensor:
        """How far the (projected) student features of ``images`` are from the teacher's."""
        with torch.no_grad():
            target = self.teacher(self.teacher_input(images)).float()
        predicted = self.projection(self.backbone(images)).float()
        if self.loss == "cosine":
            return (1.0 - F.cosine_similarity(predicted, target, dim=-1)).mean()
        return F.mse_loss(predicted, target)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0]
        loss = self.distillation_loss(images)
        self.log_loss(loss, images.shape[0])
        return loss


def _channels(values: Any) -> torch.Tensor:
    return torch.tensor([float(v) for v in values]).view(1, -1, 1, 1)
