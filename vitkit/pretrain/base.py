"""PretrainModule: what the pretraining methods share (backbone, optimizer, k-NN monitor, encoder export)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics.aggregation import CatMetric

from vitkit.backbone import Backbone
from vitkit.errors import WeightsError
from vitkit.module import _default_optimizer, _is_plain, with_scheduler


def _require_lightly() -> None:
    try:
        import lightly  # noqa: F401
    except ImportError as err:
        raise ImportError("vitkit pretrain needs the lightly package: pip install 'vitkit[pretrain]'") from err


class PretrainModule(L.LightningModule):
    """What the pretraining methods share: the backbone, the injected optimizer and scheduler, the k-NN monitor
    and the encoder export. Subclasses define ``training_step`` and ``train_transform``.

    Args:
        backbone: the encoder to pretrain, as in fit recipes (hub weights, a file or a vitkit checkpoint).
        optimizer: called with the parameter groups (no weight decay on norms, biases, position embeddings and
            class tokens); AdamW lr=1e-4, wd=0.05 by default.
        lr_scheduler: called with the optimizer (and ``total_steps`` if it takes it, as
            :class:`vitkit.WarmupCosineLR` does).
        scheduler_interval: step the scheduler every optimizer ``step`` or every ``epoch``.
        knn_k: neighbours of the k-NN monitor, which runs when the data has labelled validation images (a
            ``knn_root`` of :class:`vitkit.UnlabelledDataModule`, or a labelled data module's val split).
        knn_t: temperature of its similarity weighting.
    """

    def __init__(
        self,
        backbone: Backbone,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        knn_k: int = 20,
        knn_t: float = 0.1,
    ) -> None:
        super().__init__()
        _require_lightly()
        # Live objects (modules, functions) are not hyperparameters: loggers would serialise a whole ViT, and Lightning
        # would keep a deep copy of it. The CLI adds their class_path/init_args config instead (PretrainCLI).
        self.save_hyperparameters(ignore=["backbone", "teacher", "optimizer", "lr_scheduler"])
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.knn_k, self.knn_t = knn_k, knn_t
        # Features and labels of the validation images, gathered from every process when computed.
        self.knn_features = CatMetric(nan_strategy="disable")
        self.knn_labels = CatMetric(nan_strategy="disable")

    @property
    def data_config(self) -> dict[str, Any]:
        """The backbone's timm data config; the data module sizes its transforms from it."""
        return self.backbone.data_config

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that never train (teachers): kept in eval mode, so no dropout, drop-path or norm updates."""
        return []

    def train(self, mode: bool = True) -> PretrainModule:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def on_train_start(self) -> None:
        self.train(self.training)  # not in __init__: Lightning warns about modules in eval mode before this hook

    def train_transform(self, data_config: dict[str, Any]) -> Callable:
        """The method's augmentation of a PIL image, for the data module's training split."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """The encoder's pooled features of a batch's images (``vitkit embed --ckpt_path PRETRAIN.ckpt``)."""
        return self(batch[0] if isinstance(batch, (list, tuple)) else batch)

    def log_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """``train/loss`` of each step (this process) and ``train/loss_epoch``, the mean over all processes."""
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels = batch[0], batch[1]
        if labels.ndim != 1 or labels.is_floating_point():  # multi-label or regression targets: no k-NN
            return
        self.knn_features.update(F.normalize(self.backbone(images).float(), dim=1))
        self.knn_labels.update(labels)

    def on_validation_epoch_end(self) -> None:
        if not self.knn_labels.update_called:
            return
        features, labels = self.knn_features.compute(), self.knn_labels.compute().long()
        self.knn_features.reset()
        self.knn_labels.reset()
        if len(labels) >= 2:
            self.log("val/knn_acc", knn_accuracy(features, labels, self.knn_k, self.knn_t), prog_bar=True)

    def configure_optimizers(self) -> Any:
        from timm.optim import param_groups_weight_decay

        model = self.backbone.model
        no_decay = {f"backbone.model.{name}" for name in getattr(model, "no_weight_decay", set)()}
        groups = param_groups_weight_decay(self, weight_decay=1.0, no_weight_decay_list=no_decay)
        for group in groups:
            group.pop("param_names", None)
            if group["weight_decay"] > 0:
                del group["weight_decay"]  # the optimizer's own weight decay applies
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        return with_scheduler(self, optimizer)

    def configure_callbacks(self) -> list[L.Callback]:
        return [EncoderExport()]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # As TransferModule: config data only (weights_only loading), and no re-download of weights on rebuild.
        hparams = {k: copy.deepcopy(v) for k, v in checkpoint.get("hyper_parameters", {}).items() if _is_plain(v)}
        checkpoint["hyper_parameters"] = hparams
        for name in ("backbone", "teacher"):
            if isinstance(hparams.get(name), dict):
                args = hparams[name].get("init_args", hparams[name])
                args["pretrained"], args["weights"] = False, None


def knn_accuracy(
    features: torch.Tensor, labels: torch.Tensor, k: int = 20, t: float = 0.1, bank: torch.Tensor | None = None
) -> float:
    """Weighted k-NN accuracy (lightly's ``knn_predict``) of L2-normalised ``features``.

    ``bank`` (a boolean mask) marks the labelled reference images and the rest are classified by their neighbours
    among them; by default, sorted by class, every other image is in the bank. Within a class images are sorted by
    their first feature, so the halves do not depend on the order the images came in (one process or several).
    """
    from lightly.utils.benchmarking.knn import knn_predict

    if bank is None:
        order = torch.argsort(features[:, 0])
        order = order[torch.sort(labels[order], stable=True).indices]
        features, labels = features[order], labels[order]
        bank = torch.arange(len(labels), device=labels.device) % 2 == 0
    predicted = knn_predict(features[~bank], features[bank].T, labels[bank], int(labels.max()) + 1,
                            knn_k=min(k, int(bank.sum())), knn_t=t)  # fmt: skip
    return float((predicted[:, 0] == labels[~bank]).float().mean())


def embedding_spread(embeddings: torch.Tensor) -> float:
    """How spread out a batch's embeddings are: the per-dimension standard deviation of the L2-normalised
    embeddings across the batch, averaged over dimensions and scaled by sqrt(dimensions) (about 1 for embeddings
    spread evenly over the sphere, 0 for a collapsed encoder that gives every image the same embedding)."""
    normalised = F.normalize(embeddings.detach().float(), dim=1)
    return float(normalised.std(dim=0).mean() * normalised.shape[1] ** 0.5)


class EncoderExport(L.Callback):
    """At the end of ``fit``, write the backbone's weights in timm's layout as ``encoder.safetensors`` next to the
    checkpoints (else in the run folder), with the timm model name and arguments in the file's metadata."""

    def __init__(self, filename: str = "encoder.safetensors") -> None:
        self.filename = filename

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        checkpoint = trainer.checkpoint_callback
        folder = getattr(checkpoint, "dirpath", None) or trainer.log_dir or trainer.default_root_dir
        path = save_encoder(pl_module.backbone, Path(folder) / self.filename)
        rank_zero_info(f"encoder weights (timm layout) written to {path}")


def save_encoder(backbone: Backbone, path: str | Path) -> Path:
    """Save ``backbone.model``'s weights as safetensors; ``Backbone(backbone.model_name, weights=path,
    model_kwargs=...)`` loads them (name and arguments are in the file's metadata)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    metadata = {"model_name": backbone.model_name, "model_kwargs": json.dumps(backbone.model_kwargs, default=str)}
    save_file(state, str(path), metadata=metadata)
    return path


def require_vit(model: nn.Module, method: str) -> None:
    """Raise a one-line WeightsError unless ``model`` is a timm VisionTransformer that lightly can mask."""
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer) and model.pos_embed is not None and not hasattr(model, "dist_token"):
        return
    raise WeightsError(
        f"{method} needs a timm VisionTransformer backbone (patch embedding, transformer blocks, position embedding, "
        "class token), e.g. vit_tiny_patch16_224, vit_small_patch16_224, vit_base_patch16_224, deit_small_patch16_224;"
        f" got {type(model).__name__}. vitkit.DINO and vitkit.Distillation pretrain other backbones too."
    )
