"""DINO: self-distillation with an EMA teacher over multi-crop views."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from vitkit.backbone import Backbone
from vitkit.module import _default_optimizer
from vitkit.pretrain.base import PretrainModule, embedding_spread

#: Below this :func:`~vitkit.pretrain.embedding_spread` at the end of an epoch, DINO warns that it has collapsed
#: (healthy runs, even the first epochs of a tiny ViT, stay above 0.2).
COLLAPSED_SPREAD = 0.05


class DINO(PretrainModule):
    """DINO (Caron et al., 2021) with lightly's projection head, loss (centering, sharpening), momentum update
    and multi-crop transform; works with any timm backbone.

    The student (``backbone`` + ``head``) sees two global crops and ``n_local_views`` small local crops of each
    image; the teacher (``teacher_backbone`` + ``teacher_head``, an exponential moving average of the student)
    sees the global crops, and the student learns to match the teacher's output distribution across views.

    DINO can collapse: every image gets the same embedding, and the loss still falls. ``train/embedding_spread``
    (:func:`~vitkit.pretrain.embedding_spread` of the student's global-crop embeddings, mean over the epoch) shows
    it, and an epoch that ends below :data:`COLLAPSED_SPREAD` is warned about, once per run.

    Args:
        backbone: any timm model. Local crops smaller than the input need a model that takes other sizes: a CNN,
            or a ViT built with ``model_kwargs: {dynamic_img_size: true}``; other ViTs get local crops at full size.
        output_dim, hidden_dim, bottleneck_dim: sizes of the projection head (the paper: 65536, 2048, 256).
        norm_last_layer: weight-normalise the head's last layer (more stable; the paper's ViT-S setting).
        freeze_last_layer: epochs during which the head's last layer does not train.
        teacher_momentum: EMA momentum at the first step, raised to 1 over training on a cosine schedule.
        teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs: teacher softmax temperature, linearly
            warmed up from ``warmup_teacher_temp`` over the first epochs.
        student_temp: student softmax temperature.
        center_momentum: momentum of the teacher-output centre.
        n_local_views: local crops per image (0: only the two global crops).
        local_crop_size: side of the local crops; default 96/224 of the input size, rounded to whole patches.
        global_crop_scale, local_crop_scale: area ranges of the random crops.
        transform_kwargs: further lightly ``DINOTransform`` arguments (``cj_strength``, ``gaussian_blur``,
            ``sigmas``, ``solarization_prob``, ``random_gray_scale``, ``hf_prob``, ...).
        optimizer, lr_scheduler, scheduler_interval, knn_k, knn_t: see :class:`~vitkit.pretrain.PretrainModule`.
    """

    def __init__(
        self,
        backbone: Backbone,
        output_dim: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        freeze_last_layer: int = 1,
        teacher_momentum: float = 0.996,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        n_local_views: int = 6,
        local_crop_size: int | None = None,
        global_crop_scale: tuple[float, float] = (0.4, 1.0),
        local_crop_scale: tuple[float, float] = (0.05, 0.4),
        transform_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        knn_k: int = 20,
        knn_t: float = 0.1,
    ) -> None:
        super().__init__(backbone, optimizer, lr_scheduler, scheduler_interval, knn_k, knn_t)
        if not 0.0 <= teacher_momentum <= 1.0:
            raise ValueError(f"DINO: teacher_momentum must be in [0, 1], got {teacher_momentum}.")
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        head_args = (backbone.num_features, hidden_dim, bottleneck_dim, output_dim)
        with warnings.catch_warnings():  # lightly's head uses torch's older weight_norm, deprecated since torch 2.1
            warnings.filterwarnings("ignore", message=r".*weight_norm.* is deprecated", category=FutureWarning)
            self.head = DINOProjectionHead(*head_args, freeze_last_layer=freeze_last_layer,
                                           norm_last_layer=norm_last_layer)  # fmt: skip
            self.teacher_head = DINOProjectionHead(*head_args, norm_last_layer=norm_last_layer)  # no deepcopy
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs,
                                  student_temp, center_momentum)  # fmt: skip
        self.teacher_momentum = teacher_momentum
        self.n_local_views = n_local_views
        self.local_crop_size = local_crop_size
        self.global_crop_scale = tuple(global_crop_scale)
        self.local_crop_scale = tuple(local_crop_scale)
        self.transform_kwargs = dict(transform_kwargs or {})
        self._collapse_warned = False

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher_backbone, self.teacher_head]

    def train_transform(self, data_config: dict[str, Any]) -> Callable:
        from lightly.transforms import DINOTransform

        size = tuple(data_config["input_size"][1:])
        return DINOTransform(
            global_crop_size=size,
            global_crop_scale=self.global_crop_scale,
            local_crop_size=self.local_crop_size or self._default_local_size(size),
            local_crop_scale=self.local_crop_scale,
            n_local_views=self.n_local_views,
            normalize={"mean": list(data_config["mean"]), "std": list(data_config["std"])},
            **self.transform_kwargs,
        )

    def _default_local_size(self, size: tuple[int, ...]) -> int | tuple[int, ...]:
        model = self.backbone.model
        if not getattr(model, "dynamic_img_size", True):  # a ViT with a fixed input size
            if self.n_local_views:
                rank_zero_info("DINO: local crops at the full input size; build the ViT with dynamic_img_size: true "
                               "in model_kwargs for smaller, cheaper local crops.")  # fmt: skip
            return size
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", (1,))[0]
        return max(patch, round(min(size) * 96 / 224 / patch) * patch)

    def momentum(self) -> float:
        """The teacher's EMA momentum at this step (cosine from ``teacher_momentum`` to 1)."""
        from lightly.utils.scheduler import cosine_schedule

        total = max(1, int(self.trainer.estimated_stepping_batches))
        return cosine_schedule(min(self.global_step, total), total, self.teacher_momentum, 1.0)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher = momentum * teacher + (1 - momentum) * student, for backbone and head."""
        from lightly.models.utils import update_momentum

        update_momentum(self.backbone, self.teacher_backbone, momentum)
        update_momentum(self.head, self.teacher_head, momentum)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.update_teacher(self.momentum())
        views = batch[0]
        global_views, local_views = torch.cat(views[:2]), views[2:]
        with torch.no_grad():
            teacher_out = self.teacher_head(self.teacher_backbone(global_views)).chunk(2)
        embeddings = self.backbone(global_views)
        student_out = list(self.head(embeddings).chunk(2))
        spread = embedding_spread(embeddings)
        self.log(
            "train/embedding_spread", spread, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(embeddings)
        )
        if local_views:  # one forward pass for all local crops (same size)
            student_out += self.head(self.backbone(torch.cat(local_views))).chunk(len(local_views))
        loss = self.criterion(list(teacher_out), student_out, epoch=self.current_epoch)
        self.log_loss(loss, views[0].shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        spread = self.trainer.callback_metrics.get("train/embedding_spread")
        if spread is not None and float(spread) < COLLAPSED_SPREAD and not self._collapse_warned:
            self._collapse_warned = True
            rank_zero_warn(
                f"DINO has collapsed at epoch {self.current_epoch}: every image gets nearly the same embedding "
                f"(train/embedding_spread {float(spread):.3f}, below {COLLAPSED_SPREAD}); lower the learning rate, "
                "raise teacher_momentum or warm the teacher temperature up (warmup_teacher_temp_epochs)."
            )

    def on_after_backward(self) -> None:
        self.head.cancel_last_layer_gradients(current_epoch=self.current_epoch)
