"""One trial of a sweep (:mod:`vitkit.sweep`): the recipe with the trial's values, fitted in its own folder with
Optuna's pruning callback, scored on the recipe's ``checkpoint.monitor`` at its best epoch."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import ParallelStrategy

from vitkit.callbacks import EpochLines
from vitkit.callbacks import ProgressBar as VitkitProgressBar
from vitkit.errors import VitkitError
from vitkit.loggers import WandbLogger as VitkitWandbLogger
from vitkit.loggers import configure_loggers


class BestScore(L.Callback):
    """The best value of ``monitor`` over the validation epochs (by ``mode``), the one ModelCheckpoint would keep."""

    def __init__(self, monitor: str, mode: str = "min") -> None:
        self.monitor = monitor
        self.mode = mode
        self.value: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or score is None:
            return
        score = float(score)
        if self.value is None or (score > self.value if self.mode == "max" else score < self.value):
            self.value = score


def fit_trial(recipe: Any, values: dict[str, Any], folder: Path, group: str, trial: Any, monitor: str,
              mode: str) -> float:  # fmt: skip
    """Fit ``values`` (a full recipe, see :class:`vitkit.sweep.Recipe`) in ``folder`` as Optuna ``trial``; returns
    its best ``monitor`` value. Its W&B run, if the recipe logs to W&B, is in ``group``."""
    from optuna_integration import PyTorchLightningPruningCallback

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    namespace = recipe.parse(values, f"trial {trial.number}")
    config = namespace[namespace["subcommand"]]
    config["trainer.default_root_dir"] = str(folder)
    config["trainer.logger"] = configure_loggers(config.get("trainer.logger"), folder, None, f"{group}/{folder.name}")
    _join_group(config["trainer.logger"], group)
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool):
        L.seed_everything(seed, workers=True, verbose=False)
    built = recipe.parser.instantiate_classes(namespace)[namespace["subcommand"]]
    arguments = {**built["trainer"]}
    callbacks = [c for c in arguments.pop("callbacks", None) or [] if not isinstance(c, ModelCheckpoint)]
    best = BestScore(monitor, mode)
    callbacks += [best, PyTorchLightningPruningCallback(trial, monitor=monitor)]
    has = lambda kind: any(isinstance(c, kind) for c in callbacks)  # noqa: E731
    if arguments.get("enable_progress_bar", True) is not False and not has(ProgressBar):
        callbacks.append(VitkitProgressBar() if sys.stdout.isatty() else EpochLines())
    if arguments.get("logger") not in (None, False) and not has(LearningRateMonitor):
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = L.Trainer(**{**arguments, "callbacks": callbacks, "enable_checkpointing": False})
    if isinstance(trainer.strategy, ParallelStrategy):
        raise VitkitError(f"trial {trial.number}: sweeps run each trial on one device; set --trainer.devices 1.")
    for logger in trainer.loggers:
        logger.log_hyperparams({"config": values, "trial": trial.number, **trial.params})
    try:
        trainer.fit(built["model"], datamodule=built["data"])
    finally:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()  # the next trial's logger would otherwise join this W&B run
    if best.value is None:
        raise VitkitError(
            f"trial {trial.number}: checkpoint.monitor {monitor!r} was never logged; set --checkpoint.monitor to a "
            "validation metric the model logs (val/loss, val/acc, ...)."
        )
    return best.value


def _join_group(config: Any, group: str) -> None:
    """W&B loggers in a (configured) ``trainer.logger`` put their run into ``group``."""
    for item in config if isinstance(config, list) else [config]:
        class_path = item.get("class_path") if hasattr(item, "get") else None
        if class_path:
            module, _, name = class_path.rpartition(".")
            cls = getattr(importlib.import_module(module), name)
            if issubclass(cls, WandbLogger):
                item.init_args.group = group
            if issubclass(cls, VitkitWandbLogger):
                item.init_args.quiet = True  # a trial's W&B history is in W&B; the sweep says each trial's score
