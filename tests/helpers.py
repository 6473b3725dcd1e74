"""Running the real `vitkit` console script from tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import TINY_VIT

REPO = Path(__file__).resolve().parent.parent
VITKIT = str(Path(sys.executable).with_name("vitkit"))
TIMEOUT_S = 300

#: Overrides that shrink the quickstart recipe's ViT to 2 blocks of 8x8 patches, loading data in-process.
TINY_ARGS = ["--model.backbone.init_args.model_kwargs", json.dumps(TINY_VIT["model_kwargs"]),
             "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "16"]  # fmt: skip


def vitkit(
    *args: object, check: bool = True, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``vitkit *args`` (W&B offline, tests importable); fail with its output if it fails.

    It runs in ``cwd``, by default a fresh empty folder that must still be empty afterwards: a command given its
    paths writes nothing into the current folder.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", **(env or {})}
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_SERVICE", None)  # set by W&B runs made inside the test process; children must not share it
    env.pop("VITKIT_RUN_DIR", None)
    folder = Path(cwd) if cwd is not None else Path(tempfile.mkdtemp(prefix="vitkit-cwd-"))
    # Own process group: a hung run (and the DDP workers it launched) is killed whole instead of hanging the suite.
    command = [VITKIT, *map(str, args)]
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{' '.join(command)} ran over {TIMEOUT_S} s:\n{stdout}\n{stderr}") from None
    if cwd is None:
        left = sorted(p.name for p in folder.iterdir())
        shutil.rmtree(folder, ignore_errors=True)
        assert not left, f"{' '.join(command)} wrote into the current folder: {left}\n{stdout}\n{stderr}"
    if check and process.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def fit_quickstart(root: Path, run: Path, *extra: object, env: dict[str, str] | None = None, check: bool = True):
    """`vitkit fit` with the quickstart recipe and :data:`TINY_ARGS` on class folders ``root``, into ``run``."""
    return vitkit("fit", "--config", "quickstart", *TINY_ARGS, "--data.init_args.root", root,
                  "--trainer.default_root_dir", run, *extra, env=env, check=check)  # fmt: skip


def run_folder(root: Path) -> Path:
    """The one run folder (``version_N``) a fit made under ``root`` (its ``--trainer.default_root_dir``)."""
    (run,) = sorted(Path(root).glob("version_*"))
    return run
