"""Where a run's files live: the one place that decides run folders and finds ``last`` / ``best`` checkpoints.

Every ``vitkit fit`` writes into its own folder, ``<default_root_dir>/version_N`` (the recipe's ``default_root_dir``,
e.g. ``runs/quickstart``; Lightning's numbering)::

    runs/quickstart/version_3/
      config.yaml                 the full resolved config of this run
      checkpoints/                best-epochNNN.ckpt (best on checkpoint.monitor) and last.ckpt (every epoch)
      validation/                 the validation report as PNGs (when W&B is off)
      wandb/  metrics.csv         the logger's local files
      predictions/ embeddings/ attention/ validate/ test/    what later commands made from its checkpoints

Resuming (``--ckpt_path last`` or a checkpoint inside a run folder) continues that run's folder. Commands given a
checkpoint write next to it, into the run folder it belongs to.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from vitkit.errors import VitkitError

VERSION_PREFIX = "version_"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
#: Environment variable through which the first process hands its run folder to the DDP processes it launches.
RUN_DIR_ENV = "VITKIT_RUN_DIR"

_VERSION = re.compile(rf"^{VERSION_PREFIX}(\d+)$")


def versions(root: Path) -> list[Path]:
    """The ``version_N`` run folders under ``root``, in numeric order."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _VERSION.match(p.name))]
    return [p for _, p in sorted(found)]


def next_run_dir(root: Path, claim: bool = True) -> Path:
    """The next free ``root/version_N``; with ``claim`` it is created (atomically: concurrent runs get different N)."""
    number = 1 + max((int(_VERSION.match(p.name).group(1)) for p in versions(root)), default=-1)
    while True:
        run = root / f"{VERSION_PREFIX}{number}"
        if not claim:
            return run if not run.exists() else next_run_dir(root, claim=False)
        root.mkdir(parents=True, exist_ok=True)
        try:
            run.mkdir()
            return run
        except FileExistsError:
            number += 1


def is_launched_process() -> bool:
    """Whether this process is a DDP worker started by another (Lightning's launcher or torchrun), not the first."""
    return any(os.environ.get(name, "0") != "0" for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def new_run_dir(root: Path) -> Path:
    """This fit's run folder: a new ``version_N`` in the first process; the DDP processes it launched reuse it."""
    if is_launched_process():
        handed = os.environ.get(RUN_DIR_ENV)
        # torchrun/SLURM start every process alike: only rank 0 writes files, so others only need a path.
        return Path(handed) if handed else next_run_dir(root, claim=False)
    run = next_run_dir(root)
    os.environ[RUN_DIR_ENV] = str(run)
    return run


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), else the checkpoint's own folder."""
    checkpoint = Path(checkpoint)
    parent = checkpoint.parent
    return parent.parent if parent.name == CHECKPOINTS else parent


def find_checkpoint(root: str | Path, which: str, fitting: bool = False) -> Path:
    """``last``: the ``last.ckpt`` written most recently by ``root``'s runs (``root/version_N``, else
    ``root/*/version_N``: the latest run of any recipe under ``runs/``); ``best``: that run's best checkpoint.

    Raises:
        VitkitError: no run under ``root`` has a checkpoint (nothing to resume or evaluate).
    """
    root = Path(root)
    # The runs of one recipe (runs/quickstart/version_N), or of every recipe under a parent folder (runs/*/...).
    runs = versions(root) or [run for folder in sorted(root.glob("*/")) for run in versions(folder)]
    lasts = [p for run in runs if (p := run / CHECKPOINTS / LAST).is_file()]
    if not lasts:
        listed = ", ".join(str(p) for p in runs[-3:]) or "no runs"
        todo = "start a new run without --ckpt_path" if fitting else "train one with `vitkit fit`"
        raise VitkitError(
            f"--ckpt_path {which}: no run under {root} has a checkpoint ({listed}): {todo}, or give a checkpoint "
            "file (or --trainer.default_root_dir of the runs) explicitly."
        )
    last = max(lasts, key=lambda p: p.stat().st_mtime_ns)
    if which == "last":
        return last
    return best_checkpoint(last)


def best_checkpoint(last: Path) -> Path:
    """The best checkpoint beside ``last``: the one its ModelCheckpoint state names, else the newest ``best-*``."""
    from vitkit.checkpoints import read_checkpoint

    states = read_checkpoint(last, mmap=True).get("callbacks", {})
    named = [
        Path(s["best_model_path"]).name for k, s in states.items() if "ModelCheckpoint" in k and "best_model_path" in s
    ]
    for name in named:
        if name and name != LAST and (last.parent / name).is_file():
            return last.parent / name
    bests = sorted(last.parent.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    if not bests:
        raise VitkitError(f"--ckpt_path best: {last.parent} has no best-*.ckpt; use --ckpt_path last.")
    return bests[-1]


#: Folders of a run that its logger fills from the start (W&B, CSV, TensorBoard): worth nothing without a checkpoint.
LOGGER_FOLDERS = ("wandb", "lightning_logs", "csv", "tensorboard")


def discard_if_empty(run: Path, ignore: tuple[str, ...] = (), logger_files: bool = False) -> None:
    """Remove a run folder that a failed start left without any file (but those named in ``ignore``, directly in
    it; with ``logger_files``, also the logger folders and files of a run that saved no checkpoint), and the folders
    above it that it emptied."""
    if not run.is_dir():
        return
    skip: set[str] = set()
    if logger_files and not any(run.rglob("*.ckpt")):
        skip, ignore = set(LOGGER_FOLDERS), (*ignore, "metrics.csv", "hparams.yaml")
    for path in run.rglob("*"):
        parts = path.relative_to(run).parts
        if path.is_file() and parts[0] not in skip and not (len(parts) == 1 and path.name in ignore):
            return
    shutil.rmtree(run, ignore_errors=True)
    for folder in (run.parent, run.parent.parent):  # runs/<recipe>, runs
        if folder.name and folder.resolve() != Path.cwd() and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
