"""TransferModule: backbone + head + task, trained by Lightning with an injected optimizer and scheduler."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric

from vitkit.augment import MixupCutmix
from vitkit.backbone import Backbone
from vitkit.calibration import Calibrate
from vitkit.data.balance import warn_if_corrected_twice
from vitkit.errors import DataError
from vitkit.finetune import FineTuning, scaled_optimizer_groups
from vitkit.heads import HeadFactory, LinearHead
from vitkit.tasks import Classification, LabelStats, Task


def _default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)


class TransferModule(L.LightningModule):
    """A pretrained encoder with a fresh head for one task.

    Args:
        backbone: the encoder, usually :class:`vitkit.Backbone`.
        num_outputs: head output size; the CLI links it from the data module (number of classes).
        head: class or function called as ``head(backbone.num_features, num_outputs)``.
        task: loss, activation and metrics; defaults to :class:`vitkit.tasks.Classification`.
        class_names: names of the outputs (classes, labels or targets), stored in checkpoints; the CLI links them
            from the data module.
        label_stats: statistics of the training targets (regression mean/std, label frequencies) that the task
            uses; the CLI links them from the data module, and checkpoints restore them with the weights.
        finetune: the fine-tuning strategy (:mod:`vitkit.finetune`): full (default), linear probe, freeze then
            unfreeze, LoRA; layer-wise LR decay and weight-decay groups.
        batch_augment: Mixup / CutMix on training batches (:class:`vitkit.augment.MixupCutmix`, classification).
        optimizer: called with the strategy's parameter groups (AdamW lr=1e-4, wd=0.05 by default).
        lr_scheduler: called with the optimizer; if it accepts ``total_steps`` (like
            :class:`vitkit.schedulers.WarmupCosineLR`) it gets ``trainer.estimated_stepping_batches``.
        scheduler_interval: step the scheduler every optimizer ``step`` or every ``epoch``.
        compile: ``torch.compile`` the backbone (in place: checkpoint keys do not change). Worth it on GPUs for
            long runs; off by default, since compiling takes minutes and gains little on a CPU.
        calibrate: at each validation of a fit, fit the task's temperature (and multi-label thresholds) on the val
            outputs, so that every checkpoint carries calibrated scores (:mod:`vitkit.calibration`).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_outputs: int,
        head: HeadFactory = LinearHead,
        task: Task | None = None,
        class_names: list[str] | None = None,
        label_stats: LabelStats | None = None,
        finetune: FineTuning | None = None,
        batch_augment: MixupCutmix | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        compile: bool = False,
        calibrate: bool = True,
    ) -> None:
        super().__init__()
        if class_names is not None and len(class_names) != num_outputs:
            raise ValueError(f"TransferModule: {len(class_names)} class_names for num_outputs={num_outputs}.")
        # Live objects (modules, functions) are not hyperparameters: loggers would serialise a whole ViT, and Lightning
        # would keep a deep copy of it. The CLI adds their class_path/init_args config instead (VitkitCLI).
        given = {"backbone": backbone, "head": head, "task": task, "finetune": finetune,
                 "batch_augment": batch_augment, "optimizer": optimizer, "lr_scheduler": lr_scheduler}  # fmt: skip
        self.save_hyperparameters(ignore=[name for name, value in given.items() if not _is_plain(value)])
        self.backbone = backbone
        self.head = head(backbone.num_features, num_outputs)
        self.task = task if task is not None else Classification()
        self.task.bind(num_outputs, class_names, label_stats)
        if batch_augment is not None and not isinstance(self.task, Classification):
            raise ValueError("TransferModule: batch_augment (Mixup/CutMix) needs the Classification task.")
        self.batch_augment = batch_augment
        self.finetune = finetune if finetune is not None else FineTuning()
        self.finetune.setup(self)
        self.num_outputs = num_outputs
        self.class_names = list(class_names) if class_names is not None else None
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.compile = compile
        self.calibrate = calibrate
        #: What ``predict_step`` returns: the task's predictions, the backbone's pooled features (``vitkit embed``),
        #: or the head's raw outputs (``vitkit report``).
        self.predict_output: Literal["task", "embedding", "logits"] = "task"
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_metrics = self.task.metrics("train").clone(prefix="train/")
        self.val_metrics = self.task.metrics("val").clone(prefix="val/")
        self.test_metrics = self.task.metrics("test").clone(prefix="test/")

    @property
    def data_config(self) -> dict[str, Any]:
        """The backbone's timm data config; data modules build their transforms from it."""
        return self.backbone.data_config

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def _shared_step(self, batch: Any, stage: str) -> dict[str, torch.Tensor]:
        images, targets = batch[0], batch[1]
        outputs = self(images)
        loss = self.task.loss(outputs, targets)
        self.task.update_metrics(getattr(self, f"{stage}_metrics"), outputs, targets)
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=images.shape[0])
        return {"loss": loss, "outputs": outputs.detach(), "targets": targets}

    def _log_epoch_metrics(self, stage: str) -> None:
        # compute() syncs across processes once per epoch; per-label metrics (ClasswiseWrapper) come back as one
        # value per label. The loss is the sample-weighted mean over all processes.
        metrics, loss = getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_loss")
        updated = any(m.update_called for m in metrics.values())  # not with soft (mixup) targets
        values = {k: v for k, v in metrics.compute().items() if v.numel() == 1} if updated else {}
        values["train/loss_epoch" if stage == "train" else f"{stage}/loss"] = loss.compute()
        # The loss and the task's headline metric on the progress bar; the rest (F1, per-label AUROC, per-target MAE)
        # go to the logger only, so the bar stays one readable line.
        shown = {f"{stage}/loss", *(f"{stage}/{name}" for name in self.task.headline)} if stage == "val" else set()
        # The values are already reduced over processes (torchmetrics); sync_dist only tells Lightning so.
        sync = self.trainer.world_size > 1
        self.log_dict({k: v for k, v in values.items() if k in shown}, prog_bar=True, sync_dist=sync)
        self.log_dict({k: v for k, v in values.items() if k not in shown}, sync_dist=sync)
        metrics.reset()
        loss.reset()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.batch_augment is not None:
            batch = self.batch_augment(batch[0], batch[1], self.num_outputs)
        step = self._shared_step(batch, "train")
        self.log("train/loss", step["loss"], prog_bar=True, batch_size=batch[0].shape[0])  # this process, per step
        return step["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._shared_step(batch, "val")  # outputs and targets go on to callbacks (vitkit.callbacks)

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._shared_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def on_fit_start(self) -> None:
        batch_size = getattr(self.trainer.datamodule, "batch_size", None)
        if batch_size is None:
            return
        world, accumulate = self.trainer.world_size, self.trainer.accumulate_grad_batches
        effective = batch_size * world * accumulate
        rank_zero_info(
            f"effective batch size {effective} = {batch_size} per device x {world} x {accumulate} accumulated"
        )
        for logger in self.loggers:
            logger.log_hyperparams({"effective_batch_size": effective, "world_size": world})

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        if self.predict_output == "embedding":
            return self.backbone(images)
        if self.predict_output == "logits":
            return self(images)
        return self.task.predict(self(images))

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule if stage in ("fit", "validate", "test") else None
        names = getattr(data, "class_names", None)
        if names is not None and self.class_names is not None and list(names) != self.class_names:
            raise DataError(
                f"the data's classes {list(names)} differ from the model's {self.class_names}. Use data with the same "
                "classes (folders, labels or target columns), or start a new model from this one's encoder with "
                "--model.backbone.init_args.weights CHECKPOINT."
            )
        if stage == "fit":
            warn_if_corrected_twice(getattr(data, "sampler", None), self.task)
        # here, not configure_model: Lightning's EMA callback warns about sharding for models that override that
        if self.compile and not getattr(self.backbone.model, "_compiled_call_impl", None):
            self.backbone.model.compile()

    def configure_callbacks(self) -> list[L.Callback]:
        callbacks = [*self.finetune.callbacks(), *([Calibrate()] if self.calibrate else [])]
        # A later predict (the report after fit) finds them attached already: keep those, without Lightning's notice.
        present = {type(c) for c in self.trainer.callbacks} if self._trainer is not None else set()
        return [c for c in callbacks if type(c) not in present]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.finetune.param_groups(self))
        scaled_optimizer_groups(optimizer)
        return with_scheduler(self, optimizer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("class_names")
        if saved is not None and self.class_names is not None and list(saved) != self.class_names:
            raise DataError(
                f"the data's classes {self.class_names} differ from the checkpoint's {list(saved)}. "
                "Use data with the same class folders, or start a new model from this one's backbone with "
                "--model.backbone.init_args.weights=CHECKPOINT."
            )
        # Checkpoints from before the task had calibration buffers (temperature, thresholds) load with their
        # defaults (no calibration) instead of failing on missing keys.
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            for key, value in self.task.state_dict(prefix="task.").items():
                state.setdefault(key, value)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Objects passed from Python (modules, functions) would be pickled; keep only config data, so checkpoints
        # load with weights_only=True. Checkpoints from the CLI hold class_path/init_args dicts and keep everything.
        hparams = {k: copy.deepcopy(v) for k, v in checkpoint.get("hyper_parameters", {}).items() if _is_plain(v)}
        checkpoint["hyper_parameters"] = hparams
        # The checkpoint carries the weights: rebuilding it must not download hub weights or need the old file.
        backbone = hparams.get("backbone")
        if isinstance(backbone, dict):
            args = backbone.get("init_args", backbone)
            if args.get("pretrained") or args.get("weights"):
                args["pretrained"], args["weights"] = False, None


def with_scheduler(module: Any, optimizer: Any) -> Any:
    """``configure_optimizers``'s answer: the optimizer, with the module's scheduler (given the run's total steps
    when it takes them) stepped every ``module.scheduler_interval``, if it has one."""
    if module.scheduler_factory is None:
        return optimizer
    if _accepts(module.scheduler_factory, "total_steps"):
        total = int(module.trainer.estimated_stepping_batches)
        scheduler = module.scheduler_factory(optimizer, total_steps=total)
    else:
        scheduler = module.scheduler_factory(optimizer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": module.scheduler_interval}}


def _accepts(factory: Callable, name: str) -> bool:
    """Whether ``factory`` (a class, function or jsonargparse partial) takes a keyword argument ``name``."""
    if name in getattr(factory, "keywords", {}):
        return True
    target = factory.args[-1] if getattr(factory, "args", None) else factory  # jsonargparse: partial(fn, .., cls)
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def _is_plain(value: Any) -> bool:
    """Whether ``value`` is YAML-like config data (what the CLI stores), not a live Python object."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False
