"""``vitkit tune``: Lightning's learning-rate finder and batch-size scaler on a recipe's model and data, and Optuna
sweeps over recipe keys (:mod:`vitkit.sweep`).

Each tuning job is a run of the recipe, in its own run folder (:mod:`vitkit.runs`; the CLI sets
``trainer.default_root_dir`` to it)::

    runs/<recipe>/version_N/    --mode lr:          config.yaml, lr_find.png (loss vs LR, the suggestion marked),
                                                    lr_find.json
                                --mode batch_size:  config.yaml, batch_size.json
                                --mode sweep:       config.yaml, sweep.yaml (the search space), study.db (Optuna,
                                                    SQLite), trial_NNN/ (config.yaml, the logger's files),
                                                    <recipe>-best.yaml

The same sweep command again continues its folder's study (a killed sweep resumes); any other command gets a new
folder.

The LR range test is in :mod:`vitkit.lr_find`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.tuner import Tuner

from vitkit.errors import VitkitError
from vitkit.runs import new_run_dir, versions
from vitkit.sweep import STUDY, sweep_record
from vitkit.sweep_space import load_space, sweep_path

MODES = ("lr", "batch_size", "sweep")
#: Share taken off the largest batch that fitted, as Lightning's scaler does: memory use varies between steps.
BATCH_MARGIN = 0.05
LR_FLAG = "--model.optimizer.init_args.lr"
BATCH_FLAG = "--data.batch_size"


def tune_folder(root: Path, mode: str, sweep: str | None, command: dict[str, Any]) -> Path:
    """The run folder of a tuning job: a new ``root/version_N``, except that a sweep continues the latest folder of
    the same command (the same recipe, values and search space; ``--trials`` may differ), from its ``study.db``.

    Args:
        command: the ``vitkit tune`` command's resolved config (recorded in the folder as ``config.yaml``).
    """
    if mode != "sweep":
        if sweep:
            raise VitkitError(f"--sweep {sweep} is a search space for --mode sweep, not for --mode {mode}.")
        return new_run_dir(root)
    if not sweep:
        raise VitkitError("--mode sweep needs a search space: --sweep FILE.yaml (recipe keys and what to try).")
    path = sweep_path(sweep)
    load_space(path)  # a space that does not parse fails now, before any model is built
    record = sweep_record(path, command)
    for run in reversed(versions(root)):  # the same command's sweep, to continue
        if (run / STUDY).is_file() and all(_text(run / name) == text for name, text in record.items()):
            return run
    return new_run_dir(root)  # vitkit.sweep.run_sweep writes the record once the space fits the recipe


def _text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def run_tune(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    mode: str,
    sweep: str | None,
    trials: int,
    min_lr: float,
    max_lr: float,
    lr_steps: int,
    max_batch_size: int,
) -> Any:
    """What :meth:`vitkit.trainer.VitkitTrainer.tune` does, by ``mode``."""
    if mode not in MODES:
        raise VitkitError(f"--mode {mode}: expected one of {', '.join(MODES)}.")
    if mode == "lr" and lr_steps < 20:
        raise VitkitError(f"--lr_steps {lr_steps}: the LR range test needs at least 20 steps (default 100).")
    if mode == "lr" and not 0 < min_lr < max_lr:
        raise VitkitError(f"--min_lr {min_lr} --max_lr {max_lr}: expected 0 < min_lr < max_lr.")
    if mode == "sweep":
        from vitkit.sweep import run_sweep

        if isinstance(trainer.strategy, ParallelStrategy):
            raise VitkitError(
                "--mode sweep runs each trial on one device (drop --trainer.devices / --trainer.strategy, or set "
                "--trainer.devices 1); for more devices, scale the best LR by the linear rule afterwards."
            )
        return run_sweep(trainer.recipe, sweep_path(sweep or ""), trials, Path(trainer.default_root_dir))
    if mode == "batch_size" and isinstance(trainer.strategy, ParallelStrategy):
        raise VitkitError(
            "--mode batch_size: Lightning's batch-size search does not run under DDP or other multi-device "
            "strategies. Run it on one device (--trainer.devices 1 --trainer.strategy auto): the per-device batch "
            "that fits is the same."
        )
    trainer.announce = False  # Lightning's tuner runs through fit; this is no training run
    try:
        if mode == "lr":
            from vitkit.lr_find import find_lr

            return find_lr(trainer, model, datamodule, min_lr, max_lr, lr_steps)
        return find_batch_size(trainer, model, datamodule, max_batch_size)
    finally:
        trainer.announce = True


def find_batch_size(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    max_batch_size: int = 8192,
) -> int:
    """Lightning's batch-size scaler (binary search on ``datamodule.batch_size``, from the recipe's batch); prints
    the largest per-device batch that fits, less a margin, and the recipe's LR scaled linearly to it."""
    if datamodule is None or not hasattr(datamodule, "batch_size"):
        raise VitkitError("--mode batch_size needs a data module with a batch_size argument.")
    start, recipe_lr = int(datamodule.batch_size), _recipe_lr(model)
    trainer.fit_loop.max_epochs = max(trainer.max_epochs or 0, 1)
    found = Tuner(trainer).scale_batch_size(model, datamodule=datamodule, mode="binsearch", init_val=start,
                                            max_val=max_batch_size, margin=0.0)  # fmt: skip
    if found is None:  # fast_dev_run
        raise VitkitError("--mode batch_size does not run with --trainer.fast_dev_run.")
    size = _train_size(datamodule)
    whole = size is not None and found >= size
    capped = found >= max_batch_size
    batch = found if whole or capped else max(1, math.floor(found * (1 - BATCH_MARGIN)))
    lr = recipe_lr * batch / start
    if trainer.is_global_zero:
        folder = Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"batch_size": batch, "largest_fitted": found, "recipe_batch_size": start, "recipe_lr": recipe_lr,
                  "scaled_lr": lr, "train_images": size, "device": str(trainer.strategy.root_device)}  # fmt: skip
        (folder / "batch_size.json").write_text(json.dumps(record, indent=1) + "\n")
        if whole:
            why = f"the whole training set ({size} images) fits in one batch: memory was not the limit"
        elif capped:
            why = f"the search stops at --max_batch_size {max_batch_size}: memory was not the limit"
        else:
            why = f"the largest that fitted was {found}; {BATCH_MARGIN:.0%} is kept free"
        print(
            f"largest batch per device on {trainer.strategy.root_device}: {batch} ({why})\n"
            f"  {BATCH_FLAG} {batch} {lr_flags(model, lr)}\n"
            f"(the LR scaled linearly from the recipe's {recipe_lr:.1e} at batch {start}: lr x {batch}/{start})\n"
            f"written to {_shown(folder / 'batch_size.json')}",
            flush=True,
        )
    return batch


def _train_size(datamodule: L.LightningDataModule) -> int | None:
    """Training images per epoch on one device, if the data knows (streams may not)."""
    try:
        return len(datamodule.train_dataloader().dataset)
    except (TypeError, AttributeError, NotImplementedError):
        return None


def _recipe_lr(model: L.LightningModule) -> float:
    """The optimizer's base LR as the recipe configures it."""
    params = [p for p in model.parameters() if p.requires_grad][:1]
    return float(model.optimizer_factory(params).defaults["lr"])


def lr_flags(model: L.LightningModule, lr: float) -> str:
    """The command-line flag setting the model's LR to ``lr`` (with the optimizer's class when the recipe names
    none, so the flag parses)."""
    if "lr" in getattr(model.optimizer_factory, "keywords", {}):
        return f"{LR_FLAG} {lr:.1e}"
    optimizer = model.optimizer_factory([p for p in model.parameters() if p.requires_grad][:1])
    cls = type(optimizer)
    decay = optimizer.defaults.get("weight_decay")
    extra = f" --model.optimizer.init_args.weight_decay {decay}" if decay is not None else ""
    return f"--model.optimizer {cls.__module__}.{cls.__qualname__} {LR_FLAG} {lr:.1e}{extra}"


def _require(module: str, what: str) -> None:
    """A one-line error naming the ``tune`` extra when an optional package is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise VitkitError(f"{what} needs {module}: pip install 'vitkit[tune]'")


def _shown(path: Path) -> str:
    from vitkit.trainer import _shown as shown

    return shown(path)
