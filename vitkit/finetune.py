"""Fine-tuning strategies: which parameters train, in which optimizer groups, with which learning rates.

A strategy is the model's ``finetune`` argument (``class_path`` in a recipe). It can freeze or adapt the backbone
when the model is built (:meth:`FineTuning.setup`), decides the optimizer's parameter groups
(:meth:`FineTuning.param_groups`: layer-wise LR decay, no weight decay on norms, biases, position embeddings and
class tokens) and adds the callbacks it needs (:meth:`FineTuning.callbacks`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer


class FineTuning:
    """Full fine-tuning: every parameter trains.

    Args:
        layer_decay: layer-wise LR decay for ViTs (e.g. 0.75), with timm's layer grouping: the head, final norm and
            last block keep the base LR, each earlier block gets ``layer_decay`` times the LR of the one after it,
            and the embeddings (patch, position, class token) the lowest. ``None``: one LR for all.
        weight_decay: weight decay of the decaying groups; ``None`` keeps the optimizer's own. Norms, biases,
            position embeddings and class tokens never decay.
    """

    def __init__(self, layer_decay: float | None = None, weight_decay: float | None = None) -> None:
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"{type(self).__name__}: layer_decay must be in (0, 1], got {layer_decay}.")
        self.layer_decay = layer_decay
        self.weight_decay = weight_decay

    def setup(self, module: L.LightningModule) -> None:
        """Prepare the freshly built model (freeze, add adapters)."""

    def callbacks(self) -> list[L.Callback]:
        """Callbacks this strategy needs during training."""
        return []

    def param_groups(self, module: L.LightningModule) -> list[dict[str, Any]]:
        """Optimizer groups of the trainable parameters; a group's ``lr_scale`` multiplies the optimizer's LR."""
        # timm.optim imports timm.utils, which imports wandb (~0.7 s): only when an optimizer is built
        from timm.optim import param_groups_layer_decay, param_groups_weight_decay

        backbone = module.backbone.model
        no_decay = set(getattr(backbone, "no_weight_decay", set)())
        decay = 1.0 if self.weight_decay is None else self.weight_decay  # placeholder, dropped below if None
        if self.layer_decay is not None and hasattr(backbone, "group_matcher"):
            groups = param_groups_layer_decay(
                backbone, weight_decay=decay, no_weight_decay_list=no_decay, layer_decay=self.layer_decay
            )
        else:
            groups = param_groups_weight_decay(backbone, weight_decay=decay, no_weight_decay_list=no_decay)
        groups += param_groups_weight_decay(module.head, weight_decay=decay)
        for group in groups:
            group.pop("param_names", None)
            if self.weight_decay is None and group["weight_decay"] > 0:
                del group["weight_decay"]  # the optimizer's configured weight decay applies
        return [g for g in groups if g["params"]]


class LinearProbe(FineTuning):
    """Only the head trains: the backbone is frozen (no gradients, no optimizer state) and kept in eval mode, so
    dropout, drop-path and norm statistics behave as at inference."""

    def __init__(self) -> None:
        super().__init__()

    def setup(self, module: L.LightningModule) -> None:
        BaseFinetuning.freeze(module.backbone, train_bn=False)

    def callbacks(self) -> list[L.Callback]:
        return [_FrozenInEvalMode()]


class FreezeThenUnfreeze(FineTuning):
    """Head only for ``unfreeze_at_epoch`` epochs, then the backbone too, at ``backbone_lr_factor`` times the LR.

    Args:
        unfreeze_at_epoch: first epoch (0-based) in which the backbone trains.
        backbone_lr_factor: the backbone's LR relative to the head's once unfrozen.
        blocks_per_epoch: unfreeze gradually from the last transformer block backwards, this many blocks per epoch
            (the rest of the backbone — embeddings and final norm — once all blocks train); ``None``: all at once.
        layer_decay, weight_decay: as for :class:`FineTuning`, applied to the groups unfrozen.
    """

    def __init__(
        self,
        unfreeze_at_epoch: int = 1,
        backbone_lr_factor: float = 0.1,
        blocks_per_epoch: int | None = None,
        layer_decay: float | None = None,
        weight_decay: float | None = None,
    ) -> None:
        super().__init__(layer_decay, weight_decay)
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.backbone_lr_factor = backbone_lr_factor
        self.blocks_per_epoch = blocks_per_epoch

    def callbacks(self) -> list[L.Callback]:
        return [_Unfreeze(self)]


class LoRA(FineTuning):
    """Low-rank adapters (``peft``) on the backbone's attention and MLP linears; only adapters and head train.

    Checkpoints hold the base weights and the adapters; :func:`merge_adapters` folds the adapters into the base
    weights for export. Needs the ``lora`` extra (``pip install vitkit[lora]``).

    Args:
        rank: adapter rank r.
        alpha: scaling numerator (the update is scaled by ``alpha / rank``).
        dropout: dropout on the adapter input.
        target_modules: names of the linears to adapt (timm ViT: ``qkv``, ``proj``, ``fc1``, ``fc2``).
    """

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        weight_decay: float | None = None,
    ) -> None:
        super().__init__(None, weight_decay)
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = list(target_modules or ["qkv", "proj", "fc1", "fc2"])

    def setup(self, module: L.LightningModule) -> None:
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as err:
            raise ImportError("LoRA needs the peft package: pip install 'vitkit[lora]'") from err
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=self.target_modules)  # fmt: skip
        model = module.backbone.model
        model.requires_grad_(False)
        inject_adapter_in_model(config, model)  # adds lora_A/lora_B, trainable, to the target linears
        if not any("lora_" in name for name, _ in model.named_parameters()):
            raise ValueError(f"LoRA: no module of the backbone matches target_modules={self.target_modules}.")


def merge_adapters(module: L.LightningModule) -> L.LightningModule:
    """Fold LoRA adapters into the backbone's linears in place (for export); outputs stay the same."""
    for parent in list(module.backbone.model.modules()):
        for name, child in list(parent.named_children()):
            if hasattr(child, "merge") and hasattr(child, "base_layer"):  # a peft LoRA layer
                child.merge()
                setattr(parent, name, child.get_base_layer())
    return module


def scaled_optimizer_groups(optimizer: Optimizer) -> None:
    """Apply each group's ``lr_scale`` to its LR (torch optimizers ignore the key)."""
    for group in optimizer.param_groups:
        scale = group.get("lr_scale", 1.0)
        group["lr"] = group["lr"] * scale
        group["initial_lr"] = group["lr"]


def match_modes_to_gradients(module: nn.Module, parent_training: bool = True) -> None:
    """Train mode for modules with trainable parameters, eval mode for frozen ones; modules without parameters
    (dropout, drop-path, activations) follow their parent."""
    params = list(module.parameters(recurse=False)) or list(module.parameters())
    module.training = any(p.requires_grad for p in params) if params else parent_training
    for child in module.children():
        match_modes_to_gradients(child, module.training)


class _FrozenInEvalMode(L.Callback):
    """Frozen parts of the backbone run in eval mode (dropout, drop-path and norm statistics as at inference)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        match_modes_to_gradients(pl_module.backbone)


class _Unfreeze(BaseFinetuning):
    """The schedule of :class:`FreezeThenUnfreeze`."""

    def __init__(self, strategy: FreezeThenUnfreeze) -> None:
        super().__init__()
        self.strategy = strategy

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(pl_module.backbone, train_bn=False)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)  # runs finetune_function
        match_modes_to_gradients(pl_module.backbone)  # frozen parts in eval mode, unfrozen ones training

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        strategy = self.strategy
        if epoch < strategy.unfreeze_at_epoch:
            return
        model = pl_module.backbone.model
        blocks = list(getattr(model, "blocks", []))
        if strategy.blocks_per_epoch and blocks:
            count = min(len(blocks), (epoch - strategy.unfreeze_at_epoch + 1) * strategy.blocks_per_epoch)
            modules: list[nn.Module] = blocks[len(blocks) - count :]
            if count == len(blocks):
                modules = [model]  # the rest: patch/position embeddings, class token, final norm
        else:
            modules = [model]
        frozen = {id(p) for m in modules for p in m.parameters() if not p.requires_grad}
        if not frozen:
            return
        for m in modules:
            self.make_trainable(m)
        groups = [g for g in strategy.param_groups(pl_module) if any(id(p) in frozen for p in g["params"])]
        scheduler = _scheduler_of(pl_module)
        factor = _schedule_factor(scheduler)
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) in frozen]
            base_lr = optimizer.defaults["lr"] * strategy.backbone_lr_factor * group.pop("lr_scale", 1.0)
            group["lr"] = group["initial_lr"] = base_lr * factor
            optimizer.add_param_group(group)
            if scheduler is not None:  # keep the new group on the same schedule as the others
                scheduler.base_lrs.append(base_lr)
                if hasattr(scheduler, "lr_lambdas"):
                    scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])


def _scheduler_of(pl_module: L.LightningModule) -> Any:
    configs = pl_module.trainer.lr_scheduler_configs
    return configs[0].scheduler if configs else None


def _schedule_factor(scheduler: Any) -> float:
    """The current LR multiplier of a LambdaLR-style schedule (1 without one)."""
    if scheduler is None or not hasattr(scheduler, "lr_lambdas"):
        return 1.0
    return scheduler.lr_lambdas[0](scheduler.last_epoch)
