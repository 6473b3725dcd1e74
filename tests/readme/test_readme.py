"""Every command block of the README, run as written from a fresh folder that is not the repository.

The blocks run in order in one project folder (a later command uses what an earlier one made, as a reader's
would), with W&B offline and a local Hugging Face cache of randomly initialised timm repos for the hub weights
(:mod:`tests.hub`). What is filled in, and nothing else:

- placeholders: ``my_images`` (a class-folder tree), ``new_photos`` and ``my_unlabelled_images`` (flat folders),
  ``my_split_images`` (train/val/test trees) are drawn here; ``/data/...`` paths point at them; ``$NODE_RANK`` and
  ``$MASTER_ADDR`` are this machine;
- this machine has no GPU: commands with a GPU recipe get :data:`CPU_SMOKE` (an epoch of 2 steps, batch 4), the
  torchrun block runs 2 processes on 1 node, and the FSDP recipe (GPU-only in Lightning) must stop with the one line
  that says so;
- ``make`` lines are the repository's own commands, not a user's project commands: CI runs ``make test`` and
  ``make lint`` itself, ``tests/readme/test_demo.py`` runs the demo.

Afterwards the folder must hold only the placeholders, what the commands were told to make, and ``runs/``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.hub import fill_hub_cache, offline_hub_env
from vitkit.synthetic import make_shapes_folder

pytestmark = pytest.mark.slow

README = REPO / "README.md"
BIN = Path(sys.executable).parent
GPU_RECIPES = ("vit_base_classify", "multilabel_vit_base", "regression_vit_base", "ddp_bf16", "fsdp_vit_large",
               "pretrain_mae_vit_base", "pretrain_dino_vit_base", "distill_vit_base_to_small")  # fmt: skip
CPU_SMOKE = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
             "--data.batch_size", "4", "--data.num_workers", "0"]  # fmt: skip
#: Lightning runs FSDP on GPUs only: without one, the README's FSDP command must stop with this one line.
NEEDS_GPU = "vitkit: error: trainer settings: the FSDP strategy needs GPUs"
HUB_MODELS = {  # what the README's recipes and Python blocks load with pretrained: true
    "vit_base_patch16_224.augreg_in21k_ft_in1k": {},
    "vit_tiny_patch16_224.augreg_in21k_ft_in1k": {},
    "vit_small_patch16_224.augreg_in21k_ft_in1k": {},  # the distillation recipe's student
}
PLACEHOLDERS = {
    "/data/my_images": "my_images",
    "/data/unlabelled_images": "my_unlabelled_images",
    "$NODE_RANK": "0",
    "$MASTER_ADDR": "127.0.0.1",
    "--nnodes 2": "--nnodes 1",
    "--nproc-per-node 8": "--nproc-per-node 2",
    "--trainer.num_nodes 2": "--trainer.num_nodes 1",
    "--trainer.devices 8": "--trainer.devices 2",
}
#: What the project folder may hold after the README: its placeholders and what commands were asked to write.
EXPECTED = {"my_images", "new_photos", "my_split_images", "demo_data", "runs", "my_recipe.yaml", "readme_block.py",
            "my_shards", "my_dataset", "my_unlabelled_images"}  # fmt: skip


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def commands(code: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comment lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def fill_in(command: str) -> str:
    """Placeholders filled in; GPU-sized runs shrunk to 2 CPU steps (see the module docstring)."""
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    words = shlex.split(command.split(" #")[0])
    recipe = words[words.index("--config") + 1] if "--config" in words else None
    if recipe in GPU_RECIPES and "--trainer.limit_train_batches" not in words:
        command = command.split(" #")[0] + " " + " ".join(CPU_SMOKE)
    return command


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme-project")
    make_shapes_folder(folder / "my_images", per_class=20, sizes=(24, 64), seed=3)
    photos = make_shapes_folder(tmp_path_factory.mktemp("photos"), per_class=3, sizes=(30, 50), seed=9)
    (folder / "new_photos").mkdir()
    for i, image in enumerate(sorted(photos.rglob("*.*"))):
        shutil.copy(image, folder / "new_photos" / f"photo{i:02d}{image.suffix}")
    make_shapes_folder(folder / "my_unlabelled_images", per_class=20, sizes=(24, 64), seed=7, flat=True)
    split = folder / "my_split_images"
    for part, seed in (("train", 4), ("val", 5), ("test", 6)):
        make_shapes_folder(split / part, per_class=16 if part == "train" else 6, sizes=(24, 64), seed=seed)
    return folder


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hf-cache")
    for name, kwargs in HUB_MODELS.items():
        fill_hub_cache(cache, name, **kwargs)
    return cache


def run(command: str, folder: Path, hub_cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           **offline_hub_env(hub_cache)}  # fmt: skip
    for name in ("WANDB_SERVICE", "WANDB_API_KEY", "VITKIT_RUN_DIR", "PYTHONPATH"):
        env.pop(name, None)
    return subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True, timeout=900)


def test_every_readme_command_runs_as_written_and_writes_only_into_runs(project, hub_cache):
    ran, skipped = [], []
    for language, code in blocks(README.read_text()):
        if language == "bash":
            for command in commands(code):
                if command.startswith("make "):
                    assert command.split()[1] in ("demo", "test", "lint"), command
                    skipped.append(command.split(" #")[0].strip())
                    continue
                # Resuming the finished quickstart run: it names the checkpoint and leaves it as it is (not restarted)
                resume = command.startswith("vitkit fit --config quickstart") and "--ckpt_path last" in command
                last = project / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
                before = (last.stat().st_ino, last.stat().st_mtime_ns) if resume else None
                result = run(fill_in(command), project, hub_cache)
                if resume:
                    assert (last.stat().st_ino, last.stat().st_mtime_ns) == before, result.stdout + result.stderr
                    assert "runs/quickstart/version_0/checkpoints/last.ckpt" in result.stdout + result.stderr
                if "fsdp" in command and not torch.cuda.is_available():
                    assert result.returncode == 2 and NEEDS_GPU in result.stderr, result.stderr
                    assert "Traceback" not in result.stderr
                    continue
                assert result.returncode == 0, f"README command failed: {command}\n{result.stdout}\n{result.stderr}"
                ran.append((command, result.stdout + result.stderr))
        elif language == "python":
            (project / "readme_block.py").write_text(code)
            result = run(f"{BIN / 'python'} readme_block.py", project, hub_cache)
            assert result.returncode == 0, f"README Python block failed:\n{code}\n{result.stdout}\n{result.stderr}"
            ran.append((code, result.stdout + result.stderr))
    assert len(ran) >= 20 and skipped == ["make demo", "make test", "make test", "make lint"]
    assert set(p.name for p in project.iterdir()) <= EXPECTED, sorted(p.name for p in project.iterdir())
    for command, output in ran:
        for noise in ("Traceback", "No seed found", "anonymous setting"):
            assert noise not in output, f"{noise!r} in the output of {command}"

    runs = project / "runs"
    quickstart = runs / "quickstart"
    # The first fit made version_0; resuming the finished run made no new one; the shards and the Hugging Face
    # dataset trained version_1 and version_2; the copied recipe has its own runs.
    assert sorted(p.name for p in quickstart.iterdir()) == ["version_0", "version_1", "version_2"]
    assert (runs / "my_recipe" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    # Tuning: the LR plot, the batch-size search, a 3-trial sweep, and a fit of its best recipe in runs/<its name>.
    tuned = runs / "my_recipe"
    assert (tuned / "version_1" / "lr_find.png").is_file() and (tuned / "version_2" / "batch_size.json").is_file()
    assert (tuned / "version_3" / "study.db").is_file() and (tuned / "version_3" / "my_recipe-best.yaml").is_file()
    assert (runs / "my_recipe-best" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert not (tuned / "version_4").exists()
    assert score(quickstart / "version_0", "val/acc") >= 0.75  # chance 0.25
    assert (quickstart / "version_0" / "validate" / "metrics.json").is_file()
    assert json.loads((quickstart / "version_0" / "test" / "metrics.json").read_text())["test/acc"] >= 0.6
    for output in ("predictions/new_photos.csv", "embeddings/new_photos.npy", "attention/new_photos"):
        assert list(quickstart.glob(f"version_*/{output}")), output
    assert score(runs / "multilabel" / "version_0", "val/map") >= 0.7
    regression = json.loads((runs / "regression" / "version_0" / "validate" / "metrics.json").read_text())
    assert regression["val/r2/brightness"] >= 0.7 and regression["val/r2/radius"] >= 0.3
    for folder in ("vit_base_classify", "ddp_bf16"):  # the smoke tests ran a 2-step epoch with the hub weights
        assert list((runs / folder).glob("version_*/checkpoints/last.ckpt")), folder
    assert len(list((runs / "ddp_bf16").glob("version_*/checkpoints/last.ckpt"))) == 2  # and under torchrun
    # Imbalanced data: the balanced run's end-of-fit report, rewritten by `vitkit report` from my_split_images.
    balanced = json.loads((runs / "balanced" / "version_0" / "report" / "report.json").read_text())
    assert balanced["splits"] == ["val", "test"] and balanced["test"]["samples"] == 24
    assert set(balanced["per_class"]) == {"circle", "cross", "square", "triangle"}
    assert (quickstart / "version_0" / "report" / "report.html").is_file()  # every fit ends with its report
    assert list((runs / "balanced" / "version_0" / "wandb").glob("offline-run-*/files/report.json"))  # and in W&B
    # Pretraining: its own runs; the encoder exported; the few-label fit started from it; the student distilled.
    assert (runs / "pretrain" / "version_0" / "checkpoints" / "encoder.safetensors").is_file()
    assert score(runs / "quickstart_pretrained" / "version_0", "val/acc") >= 0.5
    for folder in ("distill", "pretrain_mae_vit_base", "distill_vit_base_to_small"):
        assert list((runs / folder).glob("version_0/checkpoints/last.ckpt")), folder


def score(run: Path, monitor: str) -> float:
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["callbacks"]
    return next(float(s["best_model_score"]) for k, s in state.items() if monitor in k)
