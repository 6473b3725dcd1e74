"""The ``vitkit`` command: LightningCLI wiring a recipe's backbone, head, task, data and trainer together."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import (
    BasePredictionWriter,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO

from vitkit.callbacks import ValidationReport, wandb_loggers_of
from vitkit.checkpoints import AtomicCheckpointIO, read_checkpoint
from vitkit.data.base import ImageDataModule
from vitkit.errors import DataError, VitkitError
from vitkit.module import TransferModule
from vitkit.trainer import VitkitTrainer
from vitkit.writers import CSVPredictionWriter


class ConfigToLoggers(SaveConfigCallback):
    """Lightning's config.yaml next to the logs, plus the full resolved config in every logger's hyperparameters;
    a W&B run also keeps the YAML file among its files."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        config = yaml.safe_load(text)
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})
        for logger in wandb_loggers_of(trainer):
            run = logger.experiment
            path = Path(run.dir) / self.config_filename
            path.write_text(text)
            run.save(str(path), base_path=run.dir, policy="now")


class VitkitCLI(LightningCLI):
    """LightningCLI with vitkit's links and defaults.

    - ``data.num_outputs``, ``data.class_names`` and ``data.label_stats`` are linked into the model: recipes never
      state them.
    - ``checkpoint``: a ModelCheckpoint keeping the best epoch on ``checkpoint.monitor``; ``fit`` also
      rewrites ``last.ckpt`` at every epoch end, for ``--ckpt_path last``.
    - LearningRateMonitor (when a logger is on), a Rich progress bar, a ValidationReport (``fit``, ``validate``)
      and a CSV writer (``predict``) are added unless the recipe already has callbacks of those kinds.
    - The full resolved config is saved next to the logs and sent to the loggers (W&B run config and files).
    - With ``--ckpt_path``, the model config comes from the checkpoint and no pretrained weights are re-loaded.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        argv = kwargs.get("args")
        self.checkpoint_hparams = _checkpoint_hparams(argv if isinstance(argv, list) else sys.argv[1:])
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's fit/validate/test/predict, and :class:`~vitkit.trainer.VitkitTrainer`'s embed/export/explain."""
        return {
            **LightningCLI.subcommands(),
            "embed": {"model", "datamodule"},
            "export": {"model", "datamodule"},
            "explain": {"model", "datamodule"},
        }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in ("num_outputs", "class_names", "label_stats"):
            parser.link_arguments(f"data.{name}", f"model.{name}", self._from_data_or_checkpoint(name), "instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": False,  # see instantiate_trainer: `last.ckpt` is its own callback
                "checkpoint.filename": "best-epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        if self.checkpoint_hparams:  # `--ckpt_path` given: the checkpoint's model config is the default
            # Linked from the data; class names are checked against the checkpoint, label stats restored from it.
            skip = {"num_outputs", "class_names", "label_stats"}
            parser.set_defaults({f"model.{k}": v for k, v in self.checkpoint_hparams.items() if k not in skip})
            # Unless a recipe or --data says otherwise, the data is just the images to predict on (predict_root).
            parser.set_defaults({"data": {"class_path": "vitkit.data.ImageDataModule"}})

    def _from_data_or_checkpoint(self, name: str) -> Any:
        """Link function: the data module's value, else (data without labels) the checkpoint's."""

        def value(from_data: Any) -> Any:
            if from_data is not None:
                return from_data
            if name in self.checkpoint_hparams or name == "label_stats":  # label stats are optional
                return self.checkpoint_hparams.get(name)
            raise DataError(
                "the data has no labels to size the model's output from: train with labelled data "
                "(--data.class_path vitkit.data.ClassFolderDataModule --data.init_args.root DIR), or give a trained "
                "model with --ckpt_path."
            )

        return value

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand in ("predict", "embed", "export", "explain") and config.get("trainer.logger") is None:
            config["trainer.logger"] = False  # nothing to log: no lightning_logs/ folder unless a recipe asks
        if config.get("ckpt_path") and config.get("model.backbone.init_args") is not None:
            # The checkpoint holds the backbone's weights; fetching hub weights or the old file again is waste.
            config["model.backbone.init_args.pretrained"] = False
            config["model.backbone.init_args.weights"] = None

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        key = f"{self.subcommand}.trainer" if self.subcommand else "trainer"
        trainer_config = self.config_init.get(key) or {}
        callbacks = list(trainer_config.get("callbacks") or [])
        has = lambda kind: any(isinstance(c, kind) for c in callbacks)  # noqa: E731
        if trainer_config.get("logger") is not False and not has(LearningRateMonitor):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if trainer_config.get("enable_progress_bar", True) is not False and not has(ProgressBar):
            callbacks.append(RichProgressBar())
        if self.subcommand == "fit":
            # Lightning's save_last only refreshes last.ckpt when a new best is saved; resuming needs every epoch.
            best = self.config_init[self.subcommand].get("checkpoint")
            callbacks.append(
                ModelCheckpoint(
                    dirpath=getattr(best, "dirpath", None),
                    filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
                    monitor=None,
                    save_top_k=1,
                    enable_version_counter=False,
                )
            )
        if self.subcommand in ("fit", "validate") and not has(ValidationReport):
            callbacks.append(ValidationReport())
        if self.subcommand == "predict" and not has(BasePredictionWriter):
            callbacks.append(CSVPredictionWriter())
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())  # crash-safe writes, weights_only reads
        return super().instantiate_trainer(callbacks=callbacks, plugins=plugins, **kwargs)


def _checkpoint_hparams(argv: list[str]) -> dict[str, Any]:
    """Model hyperparameters of the checkpoint named by ``--ckpt_path`` in ``argv`` (empty if none or not a file)."""
    path = None
    for i, arg in enumerate(argv):
        if arg == "--ckpt_path" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--ckpt_path="):
            path = arg.split("=", 1)[1]
    if path is None or not Path(path).is_file():
        return {}
    checkpoint = read_checkpoint(path, mmap=True)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    return {k: v for k, v in hparams.items() if not k.startswith("_")}


class _NoAdverts(logging.Filter):
    """Lightning prints a tip to install its paid logger on every run without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


#: Recipe sections that ``vitkit check-data`` accepts in a ``--config`` and ignores (it only needs ``data``).
_NOT_DATA = ("model", "trainer", "checkpoint", "optimizer", "lr_scheduler", "seed_everything", "ckpt_path")


def check_data_main(args: list[str]) -> int:
    """``vitkit check-data``: scan a dataset as training would and print a per-class summary; exit 1 if any image
    cannot be read."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from vitkit.data.check import check_data

    parser = ArgumentParser(
        prog="vitkit check-data",
        description="Scan a dataset as `vitkit fit` would (folders or manifest rows, then every image decoded) and "
        "print images per split and class, image sizes and modes, and every unreadable file with its reason. "
        "Exits 1 if any image cannot be read. Examples: `vitkit check-data --data.root my_images`, "
        "`vitkit check-data --config recipes/multilabel.yaml --data.init_args.csv labels.csv`.",
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="A recipe; only its data section is used.")
    parser.add_subclass_arguments(ImageDataModule, "data", help="The data module (default: class folders).")
    parser.set_defaults({"data": {"class_path": "vitkit.data.ClassFolderDataModule"}})
    parser.add_argument("--workers", type=int | None, default=None, help="Decoding threads (default: all cores).")
    for key in _NOT_DATA:
        parser.add_argument(f"--{key}", type=dict | list | str | float | bool | None, help=argparse.SUPPRESS)
    config = parser.parse_args(args)
    data = parser.instantiate_classes(config).data
    report = check_data(data, workers=config.workers)
    print(report.format())
    return 0 if report.ok else 1


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``vitkit`` console script."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())
    argv = list(sys.argv[1:] if args is None else args)
    # Lightning 2.6 on torch >= 2.10 warns about its own pytree use on every step; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # The CLI re-creates the checkpointing callbacks itself; Lightning's reminder to do so is noise here.
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
    try:
        if argv[:1] == ["check-data"]:
            raise SystemExit(check_data_main(argv[1:]))
        if argv[:1] == ["shard"]:
            from vitkit.data.shard import shard_main

            raise SystemExit(shard_main(argv[1:]))
        VitkitCLI(
            TransferModule,
            ImageDataModule,
            trainer_class=VitkitTrainer,
            subclass_mode_data=True,
            args=args,
            save_config_callback=ConfigToLoggers,
            parser_kwargs={
                "epilog": "Also: `vitkit check-data --data.root DIR` scans a dataset before training "
                "(images per class, sizes, unreadable files); see `vitkit check-data --help`."
            },
            save_config_kwargs={"overwrite": True},
        )
    except Exception as err:
        cause = _vitkit_error_in(err)
        if cause is not None:
            print(f"vitkit: error: {cause}", file=sys.stderr)
            raise SystemExit(2) from None
        if _WORKER_DIED.search(str(err)):
            print(f"vitkit: error: a DataLoader worker process died: {err}\n{_WORKER_HINT}", file=sys.stderr)
            raise SystemExit(1) from None
        raise


_WORKER_DIED = re.compile(r"DataLoader worker \(pid")
_WORKER_HINT = (
    "The usual cause is memory: the kernel kills the largest process when RAM (or /dev/shm, which workers use to "
    "pass batches) runs out. Lower --data.init_args.num_workers or --data.init_args.batch_size, or give the machine "
    "or container more memory (Docker: --shm-size). With --data.init_args.num_workers 0 images load in the main "
    "process, where any error shows its full traceback."
)


def _vitkit_error_in(err: BaseException | None) -> VitkitError | None:
    """The VitkitError that caused ``err`` (jsonargparse wraps errors raised while linking arguments)."""
    while err is not None and not isinstance(err, VitkitError):
        err = err.__cause__
    return err


if __name__ == "__main__":
    main()
