"""The ``vitkit`` command: LightningCLI wiring a recipe's backbone, head, task, data and trainer together."""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import (
    BasePredictionWriter,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from vitkit import recipes
from vitkit.callbacks import EpochLines, ValidationReport, wandb_loggers_of
from vitkit.callbacks import ProgressBar as VitkitProgressBar
from vitkit.checkpoints import AtomicCheckpointIO, RunInfo, is_pretraining_checkpoint, read_checkpoint
from vitkit.data.base import ImageDataModule
from vitkit.errors import DataError, VitkitError, concise_parse_error
from vitkit.loggers import configure_loggers, finish_logger_runs
from vitkit.module import TransferModule
from vitkit.resume import check_resumable
from vitkit.runs import best_checkpoint, discard_if_empty, find_checkpoint, is_launched_process, new_run_dir, run_dir_of
from vitkit.sweep import Recipe
from vitkit.trainer import VitkitTrainer
from vitkit.tune import tune_folder
from vitkit.writers import CSVPredictionWriter

#: Where runs go when neither the recipe nor the command line sets ``--trainer.default_root_dir``.
DEFAULT_ROOT = "runs"
#: Commands that only use a trained model: nothing to log.
_USE_MODEL = ("predict", "embed", "export", "explain", "report", "publish", "serve")
_LINKED = ("num_outputs", "class_names", "label_stats")
#: Commands that main() runs itself, outside LightningCLI's subcommands.
OWN_COMMANDS = ("pretrain", "shard", "check-data", "recipes")


class ConfigToLoggers(SaveConfigCallback):
    """The run's full resolved ``config.yaml`` in its folder (``fit``; ``validate``/``test`` in theirs), also in
    every logger's hyperparameters; a W&B run keeps the YAML file among its files."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":  # evaluations record their checkpoint and data in metrics.json instead
            super().setup(trainer, pl_module, stage)

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


class VitkitArgumentParser(LightningArgumentParser):
    """LightningCLI's parser; a bad option is one line naming it, not the usage of all options and a type dump, and
    options must be spelled out (``--trainer.max_epoch`` is not taken for ``--trainer.max_epochs``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        wrong = re.search(r"argument subcommand: invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if wrong:  # every command, also those main() runs itself, and the nearest to what was typed
            import difflib

            commands = [*re.findall(r"'([^']+)'", wrong.group(2)), *OWN_COMMANDS]
            near = difflib.get_close_matches(wrong.group(1), commands, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            sys.stderr.write(f"vitkit: error: unknown command '{wrong.group(1)}'{hint}; commands: "
                             f"{', '.join(commands)} (vitkit --help)\n")  # fmt: skip
            self.exit(2)
        sys.stderr.write(f"vitkit: error: {concise_parse_error(message)} (options: {prog} --help)\n")
        self.exit(2)


class VitkitCLI(LightningCLI):
    """LightningCLI with vitkit's run folders, links and defaults.

    - Recipes are named or given as files: ``--config quickstart`` is the shipped recipe (``vitkit recipes``).
    - ``fit`` writes everything of a run into one folder, ``<default_root_dir>/version_N`` (:mod:`vitkit.runs`),
      whatever logger the recipe has; ``--ckpt_path last`` (or ``best``) finds the latest run's checkpoint and
      ``fit`` resumes it in its own folder (and W&B run).
    - ``data.num_outputs``, ``data.class_names`` and ``data.label_stats`` are linked into the model: recipes never
      state them. Given ``--ckpt_path``, the checkpoint's model and data configs are the defaults, so
      ``vitkit validate --ckpt_path C`` needs nothing else; ``--data.root`` / ``--data.csv`` re-point the data.
    - ``checkpoint``: a ModelCheckpoint keeping the best epoch on ``checkpoint.monitor``; ``fit`` also rewrites
      ``last.ckpt`` at every epoch end.
    - LearningRateMonitor (when logging), a Rich progress bar, a ValidationReport (fit, validate, test) and a CSV
      writer (predict) are added unless the recipe already has callbacks of those kinds.
    """

    #: Whether the model is a pretraining method (``vitkit pretrain``): its checkpoints are not a fit's.
    pretraining = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("args")
        argv = resolve_argv(list(given) if isinstance(given, list) else sys.argv[1:])
        self.ckpt_path = _value_of(argv, "--ckpt_path")
        checkpoint = read_checkpoint(self.ckpt_path, mmap=True) if self.ckpt_path else {}
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        self.checkpoint_hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
        self.checkpoint_info: dict[str, Any] = dict(checkpoint.get("vitkit") or {})
        #: A pretraining checkpoint's method (``vitkit.MAE``, ...); None for a fit's.
        self.checkpoint_class_path: str | None = hparams.get("_class_path")
        # The recipe's task as typed: Lightning replaces the model's config by the checkpoint's (see check_resumable).
        self.recipe_task = _value_of(argv, "--model.task") or _from_configs(argv, "model", "task")
        _check_kind(self.ckpt_path, self.checkpoint_class_path, self.pretraining)
        if argv[:1] != ["fit"] and self.checkpoint_info.get("data") and "--config" in argv:
            # Evaluating or using a trained model: its own data, not the recipe's placeholder (--data.* re-points it).
            at = len(argv) - argv[::-1].index("--config") + 1
            argv = [*argv[:at], "--data", json.dumps(self.checkpoint_info["data"]), *argv[at:]]
        if isinstance(given, list):
            kwargs["args"] = argv
        elif given is None:
            sys.argv[1:] = argv  # DDP processes that Lightning launches re-run sys.argv: the same files for all
        self.run_dir: Path | None = None
        kwargs.setdefault("trainer_defaults", {}).setdefault("default_root_dir", default_root(argv))
        # Lightning's layer table (FLOPs 0, modules in train mode) on every fit: --trainer.enable_model_summary true
        kwargs["trainer_defaults"].setdefault("enable_model_summary", False)
        kwargs.setdefault("parser_class", VitkitArgumentParser)
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            if getattr(self, "subcommand", None) in ("fit", "tune") and self.run_dir and not is_launched_process():
                # A run that never started leaves no empty version_N behind (nor a failed tune its config alone,
                # nor a fit that stopped before its first checkpoint the logger's files alone).
                finish_logger_runs(getattr(self, "trainer", None))
                discard_if_empty(self.run_dir, ignore=("config.yaml",) if self.subcommand == "tune" else (),
                                 logger_files=self.subcommand == "fit")  # fmt: skip
            raise

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's fit/validate/test/predict, and :class:`~vitkit.trainer.VitkitTrainer`'s
        embed/export/explain/tune/report."""
        lightning = LightningCLI.subcommands()
        return {
            **lightning,
            # Their `verbose` (print the metrics: on by default) gives way to vitkit's --verbose (all output).
            "validate": {*lightning["validate"], "verbose"},
            "test": {*lightning["test"], "verbose"},
            "embed": {"model", "datamodule"},
            "export": {"model", "datamodule"},
            "explain": {"model", "datamodule"},
            "tune": {"model", "datamodule"},
            "report": {"model", "datamodule"},
            "publish": {"model", "datamodule"},
            "serve": {"model", "datamodule"},
        }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--verbose", action="store_true", help="Also what vitkit leaves out: Lightning's model "
                            "summary and its bookkeeping lines (steps estimate, checkpoint restores).")  # fmt: skip
        if not self.checkpoint_hparams:  # a trained model's outputs are its own (TransferModule.setup checks the data)
            for name in _LINKED:
                parser.link_arguments(f"data.{name}", f"model.{name}", self._linked_value(name), "instantiate")
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
        if self.checkpoint_hparams:  # `--ckpt_path` given: the checkpoint's model and data configs are the defaults
            parser.set_defaults({f"model.{k}": v for k, v in self.checkpoint_hparams.items()})
            # The data it was trained on (re-pointed by --data.root / --data.csv); else just images to predict on.
            data = self.checkpoint_info.get("data") or {"class_path": "vitkit.data.ImageDataModule"}
            parser.set_defaults({"data": data})

    def _linked_value(self, name: str) -> Any:
        """Link function: the data module's value; without labels (no checkpoint either) nothing sizes the model."""

        def value(from_data: Any) -> Any:
            if from_data is not None or name == "label_stats":  # label stats are optional
                return from_data
            raise DataError(
                "the data has no labels to size the model's output from: train with labelled data "
                "(--data.class_path vitkit.data.ClassFolderDataModule --data.root DIR), or give a trained "
                "model with --ckpt_path."
            )

        return value

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("ckpt_path") and config.get("model.backbone.init_args") is not None:
            # The checkpoint holds the backbone's weights; fetching hub weights or the old file again is waste.
            config["model.backbone.init_args.pretrained"] = False
            config["model.backbone.init_args.weights"] = None
        if self.subcommand is None:
            return
        if config.get("verbose"):
            config["trainer.enable_model_summary"] = True
            for name in _QUIETED:
                for found in [f for f in logging.getLogger(name).filters if isinstance(f, _Quiet)]:
                    found.verbose = True
        if self.subcommand == "tune":  # the recipe as given, before its folders are set: sweeps build trials from it
            self.recipe_config = self.config.clone()
        _check_strategy(config.get("trainer.strategy"), config.get("trainer.accelerator"))
        root = Path(config["trainer.default_root_dir"] or DEFAULT_ROOT).expanduser()
        if self.subcommand == "fit":
            resumed = self.ckpt_path is not None and run_dir_of(self.ckpt_path).joinpath("checkpoints").is_dir()
            self.run_dir = run_dir_of(self.ckpt_path) if resumed else new_run_dir(root)
            output = self.run_dir
            if config.get("checkpoint.dirpath") is None:
                config["checkpoint.dirpath"] = str(self.run_dir / "checkpoints")
            wandb_id = self.checkpoint_info.get("wandb_id") if resumed else None
            name = f"{self.run_dir.parent.name}/{self.run_dir.name}"
        elif self.subcommand == "tune":  # a run folder per tuning job; the same sweep command continues its own
            command = yaml.safe_load(self.parser.dump(self.recipe_config, skip_none=False))[self.subcommand]
            self.run_dir = output = tune_folder(root, config["mode"], config.get("sweep"), command)
        else:  # outputs go next to the checkpoint, into its run folder (--output puts them elsewhere)
            self.run_dir = run_dir_of(self.ckpt_path) if self.ckpt_path else root
            output = self.run_dir / self.subcommand if self.subcommand in ("validate", "test") else self.run_dir
            if self.subcommand in ("validate", "test") and config.get("output"):
                output = Path(config["output"])
        config["trainer.default_root_dir"] = str(output)
        if self.subcommand != "fit":  # tune's sweep trials log as the recipe says (vitkit.sweep); evaluations write
            config["trainer.logger"] = False  # metrics.json and the report, with --config or not: no logger run
        else:
            config["trainer.logger"] = configure_loggers(config.get("trainer.logger"), output, wandb_id, name)

    def before_tune(self) -> None:
        """``vitkit tune --mode sweep`` builds a model, data and trainer per trial from the recipe."""
        self.trainer.recipe = Recipe(self.parser, self.recipe_config)

    def after_instantiate_classes(self) -> None:
        if self.subcommand is not None and isinstance(self.model, TransferModule):
            # The model's own config (class_path/init_args), so its checkpoints rebuild it: see TransferModule.
            model_config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))[self.subcommand]["model"]
            self.model.hparams.update({k: v for k, v in model_config.items() if k not in _LINKED})
            if self.subcommand == "fit" and self.ckpt_path:  # before anything is written into its run folder
                check_resumable(self.ckpt_path, self.checkpoint_hparams, self.recipe_task, self.datamodule)
        super().after_instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        key = f"{self.subcommand}.trainer" if self.subcommand else "trainer"
        trainer_config = self.config_init.get(key) or {}
        callbacks = list(trainer_config.get("callbacks") or [])
        has = lambda kind: any(isinstance(c, kind) for c in callbacks)  # noqa: E731
        if trainer_config.get("logger") not in (False, None) and not has(LearningRateMonitor):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if trainer_config.get("enable_progress_bar", True) is not False and not has(ProgressBar):
            # A terminal gets Rich bars; a log file (nohup, SLURM, CI) one line per epoch.
            callbacks.append(VitkitProgressBar() if sys.stdout.isatty() else EpochLines())
        if self.subcommand == "fit":
            data = yaml.safe_load(self.parser.dump(self.config, skip_none=False))[self.subcommand].get("data")
            callbacks.append(RunInfo(data=data))
        if self.subcommand in ("fit", "validate", "test") and not has(ValidationReport):
            callbacks.append(ValidationReport())
        if self.subcommand == "predict" and not has(BasePredictionWriter):
            callbacks.append(CSVPredictionWriter())
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())  # crash-safe writes, weights_only reads
        if self.subcommand == "test":
            self.datamodule.require_split("test")  # one line, before the trainer, any weights or images
        try:
            trainer = super().instantiate_trainer(callbacks=callbacks, plugins=plugins, **kwargs)
        except (ValueError, MisconfigurationException) as err:  # devices, strategy, precision that cannot be had here
            raise VitkitError(f"trainer settings: {err}") from err
        if self.subcommand != "fit":  # checkpointing callbacks have nothing to do there, and warn about their dirpath
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
        if self.subcommand == "fit":
            # Lightning's save_last only refreshes last.ckpt when a new best is saved; resuming needs every epoch.
            # Added after the best checkpoint's callback, so last.ckpt holds that epoch's best-model state.
            best = self.config_init[self.subcommand].get("checkpoint")
            trainer.callbacks.append(
                ModelCheckpoint(
                    dirpath=getattr(best, "dirpath", None),
                    filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
                    monitor=None,
                    save_top_k=1,
                    enable_version_counter=False,
                )
            )
        return trainer


def _check_strategy(strategy: Any, accelerator: Any) -> None:
    """Fail before building a model for settings this machine cannot run (Lightning checks only later)."""
    import torch

    name = strategy if isinstance(strategy, str) else str(getattr(strategy, "class_path", ""))
    if "fsdp" in name.lower() and (accelerator == "cpu" or not torch.cuda.is_available()):
        raise VitkitError(
            "trainer settings: the FSDP strategy needs GPUs (Lightning runs FSDP on CUDA only); on this machine use "
            "--trainer.strategy ddp, or the ddp_bf16 recipe."
        )


def default_root(argv: list[str]) -> str:
    """Where runs go unless ``trainer.default_root_dir`` says: ``runs/<recipe name>`` (the last ``--config``'s file
    name, so a copied recipe gets its own runs), else ``runs``."""
    configs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-c", "--config") and Path(argv[i + 1]).is_file()]
    return f"{DEFAULT_ROOT}/{Path(configs[-1]).stem}" if configs else DEFAULT_ROOT


def resolve_argv(argv: list[str]) -> list[str]:
    """Named recipes to their files, and ``--ckpt_path last|best`` to the latest run's checkpoint."""
    argv = _with_logger_save_dir(recipes.resolve_config_args(argv))
    which = _value_of(argv, "--ckpt_path")
    if which in ("last", "best"):
        dirpath = _value_of(argv, "--checkpoint.dirpath") or _from_configs(argv, "checkpoint", "dirpath")
        root = _value_of(argv, "--trainer.default_root_dir") or _from_configs(argv, "trainer", "default_root_dir")
        if dirpath and Path(dirpath, "last.ckpt").is_file():  # checkpoints kept outside the run folders
            found = str(Path(dirpath, "last.ckpt") if which == "last" else best_checkpoint(Path(dirpath, "last.ckpt")))
        else:
            found = str(find_checkpoint(Path(root or default_root(argv)).expanduser(), which, argv[:1] == ["fit"]))
        _say(f"--ckpt_path {which}: {found}")
        argv = [found if a == which and i and argv[i - 1] == "--ckpt_path" else a for i, a in enumerate(argv)]
        argv = [f"--ckpt_path={found}" if a == f"--ckpt_path={which}" else a for a in argv]
    return argv


def _with_logger_save_dir(argv: list[str]) -> list[str]:
    """A CSVLogger or TensorBoardLogger chosen as typed (``--trainer.logger lightning.pytorch.loggers.CSVLogger``,
    or by class path in a ``--config``): those require a ``save_dir``, which vitkit sets to the run folder anyway
    (:func:`vitkit.loggers.configure_loggers`); give the parser one right after the choice."""
    chosen, at = None, -1
    for i, arg in enumerate(argv):
        if arg == "--trainer.logger" and i + 1 < len(argv):
            chosen, at = argv[i + 1], i + 2
        elif arg in ("-c", "--config") and i + 1 < len(argv) and Path(argv[i + 1]).is_file():
            logger = ((yaml.safe_load(Path(argv[i + 1]).read_text()) or {}).get("trainer") or {}).get("logger")
            if isinstance(logger, dict) and logger.get("class_path"):
                given = "save_dir" in (logger.get("init_args") or {})
                chosen, at = (None, -1) if given else (logger["class_path"], i + 2)
            elif isinstance(logger, str):
                chosen, at = logger, i + 2
        elif arg.startswith("--trainer.logger.") and "save_dir" in arg:
            chosen = None
    if chosen and _requires_save_dir(chosen):
        return [*argv[:at], "--trainer.logger.init_args.save_dir", DEFAULT_ROOT, *argv[at:]]
    return argv


def _requires_save_dir(class_path: str) -> bool:
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    try:
        parameter = inspect.signature(getattr(importlib.import_module(module), name)).parameters.get("save_dir")
    except (ImportError, AttributeError, ValueError, TypeError):
        return False  # the parser says what is wrong with it
    return parameter is not None and parameter.default is inspect.Parameter.empty


def _value_of(argv: list[str], flag: str) -> str | None:
    """The last value given for ``flag`` (``--flag value`` or ``--flag=value``)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _from_configs(argv: list[str], section: str, key: str) -> str | None:
    """``section.key`` from the ``--config`` files in ``argv`` (the last that sets it)."""
    value = None
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg in ("-c", "--config") and i + 1 < len(argv) else None
        if path and Path(path).is_file():
            config = yaml.safe_load(Path(path).read_text()) or {}
            value = (config.get(section) or {}).get(key, value)
    return value


def _say(message: str) -> None:
    """A line for the user from the first process only."""
    if not is_launched_process():
        print(f"vitkit: {message}", file=sys.stderr, flush=True)


class _Quiet(logging.Filter):
    """Lightning's advert for its paid logger on every run, and the seed line of commands that train nothing."""

    def __init__(self, seed_too: bool) -> None:
        super().__init__()
        self.seed_too = seed_too
        #: ``--verbose``: Lightning's bookkeeping lines too.
        self.verbose = False

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if not self.verbose and any(text.startswith(noise) for noise in _LIGHTNING_NOISE):
            return False
        return "litlogger" not in text and not (self.seed_too and text.startswith("Seed set to"))


#: The loggers whose records :class:`_Quiet` sifts.
_QUIETED = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed")
#: Lightning's lines about its own bookkeeping: the steps estimate, and checkpoint restores that read as a restart at
#: the end of fit (the report scores the best checkpoint); vitkit says which checkpoint a command uses itself.
_LIGHTNING_NOISE = ("Loading `train_dataloader` to estimate", "Restoring states from the checkpoint path",
                    "Loaded model weights from the checkpoint at", "Restored all states from the checkpoint",
                    "TPU available:", "HPU available:", "`Trainer.fit` stopped: `max_epochs")  # fmt: skip


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    """Warnings as ``UserWarning: text``, without the source line that Python prints under them."""
    return f"{category.__name__}: {message}\n"


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``vitkit`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    quiet = _Quiet(seed_too=argv[:1] != ["fit"])
    for name in _QUIETED:
        logging.getLogger(name).addFilter(quiet)
    # Lightning 2.6 on torch >= 2.10 warns about its own pytree use on every step; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # The CLI re-creates the checkpointing callbacks itself; Lightning's reminder to do so is noise here. So are: the
    # run folder's checkpoints when resuming it; a small dataset's epoch shorter than the logging interval (metrics
    # are logged per epoch anyway); the model summary's FLOP count, which it cannot make under bf16.
    for noise in (r"Be aware that when using `ckpt_path`, callbacks used to create", r"Checkpoint directory .* exists "
                  r"and is not empty", r"The number of training batches \(\d+\) is smaller than the logging interval",
                  r"Precision .* is not supported by the model summary",
                  r"Experiment logs directory .* exists and is not empty",  # vitkit's CSVLogger keeps the rows
                  r"Your .IterableDataset. has .__len__. defined",  # streams' lengths are exact
                  r"Couldn't infer the batch indices"):  # the writers read streamed keys from the batch  # fmt: skip
        warnings.filterwarnings("ignore", message=noise)
    warnings.formatwarning = _one_line_warning
    try:
        if argv[:1] == ["check-data"]:
            from vitkit.data.check import check_data_main

            raise SystemExit(check_data_main(argv[1:]))
        if argv[:1] == ["recipes"]:
            raise SystemExit(recipes.recipes_main(argv[1:]))
        if argv[:1] == ["shard"]:
            from vitkit.data.shard import shard_main

            raise SystemExit(shard_main(argv[1:]))
        if argv[:1] == ["embed"] and is_pretraining_checkpoint(_value_of(resolve_argv(argv), "--ckpt_path")):
            from vitkit.pretrain.cli import pretrain_embed_main  # an encoder's embeddings: the natural use of it

            pretrain_embed_main(resolve_argv(argv))
            return
        if argv[:1] == ["pretrain"]:  # self-supervised pretraining on unlabelled images (vitkit.pretrain)
            from vitkit.pretrain.cli import pretrain_main

            pretrain_main(argv[1:], from_command_line=args is None)
            return
        VitkitCLI(
            TransferModule,
            ImageDataModule,
            trainer_class=VitkitTrainer,
            subclass_mode_data=True,
            args=args,
            save_config_callback=ConfigToLoggers,
            seed_everything_default=0,
            parser_kwargs={
                "description": "vitkit: transfer learning with Vision Transformers (timm + Lightning). Start with "
                "`vitkit fit --config quickstart --data.root my_images`.",
                "epilog": "Also: `vitkit recipes` lists the shipped recipes (`--config NAME`); `vitkit check-data "
                "--data.root DIR` scans a dataset before training; `vitkit shard --data.root DIR --output OUT` writes "
                "WebDataset shards. `vitkit pretrain --config pretrain --data.root DIR` pretrains the encoder on "
                "unlabelled images (MAE, DINO, distillation).",
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
    "pass batches) runs out. Lower --data.num_workers or --data.batch_size, or give the machine "
    "or container more memory (Docker: --shm-size). With --data.num_workers 0 images load in the main "
    "process, where any error shows its full traceback."
)


def _vitkit_error_in(err: BaseException | None) -> Exception | None:
    """The VitkitError that caused ``err`` (jsonargparse wraps errors raised while linking arguments), or the
    ValueError a vitkit class raised on a bad argument value while the config was instantiated."""
    top = err
    while err is not None and not isinstance(err, VitkitError):
        if err is not top and isinstance(err, ValueError) and _raised_by_vitkit(err):
            return err
        err = err.__cause__ or err.__context__
    return err


def _raised_by_vitkit(err: BaseException) -> bool:
    """Whether ``err`` was raised inside the vitkit package (an argument check), not in a library."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(Path(__file__).parent)


def _check_kind(ckpt_path: str | None, class_path: str | None, pretraining: bool) -> None:
    """A pretraining checkpoint given to fit/evaluate/use commands (or a fit's to ``vitkit pretrain``): one line."""
    if ckpt_path and class_path and not pretraining:
        raise VitkitError(
            f"{ckpt_path} is a `vitkit pretrain` checkpoint ({class_path}): start a fit from its encoder with "
            f"--model.backbone.init_args.weights {ckpt_path} (--ckpt_path resumes or uses a fit's checkpoint; `vitkit "
            "embed` also takes a pretraining one)."
        )
    if ckpt_path and pretraining and not class_path:
        raise VitkitError(
            f"{ckpt_path} is not a `vitkit pretrain` checkpoint: --ckpt_path resumes a pretraining run; to start "
            f"from a fitted model's encoder give --model.backbone.init_args.weights {ckpt_path}."
        )


if __name__ == "__main__":
    main()
