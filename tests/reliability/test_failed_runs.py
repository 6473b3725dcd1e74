"""A command that fails says only what is true and leaves other runs as they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import TINY_ARGS, fit_quickstart, vitkit
from vitkit.synthetic import make_shapes_folder


def interrupt_at(epoch: int) -> list[str]:
    fault = {"class_path": "tests.reliability.faults.InterruptAt", "init_args": {"epoch": epoch}}
    return ["--trainer.callbacks+", json.dumps(fault), "--trainer.logger", "false"]


@pytest.mark.slow
def test_ctrl_c_after_a_checkpoint_says_how_to_resume(shapes_root, tmp_path):
    result = fit_quickstart(shapes_root, tmp_path, "--trainer.max_epochs", "2", *interrupt_at(1), check=False)
    assert result.returncode != 0
    assert "interrupted in epoch 1: resume it with the same command and --ckpt_path last" in result.stderr
    assert (tmp_path / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_ctrl_c_before_any_checkpoint_promises_no_resume(shapes_root, tmp_path):
    result = fit_quickstart(shapes_root, tmp_path, "--trainer.max_epochs", "2", *interrupt_at(0), check=False)
    assert result.returncode != 0
    assert "nothing to resume" in result.stderr and "--ckpt_path last" not in result.stderr


@pytest.fixture
def finished_run(trained_checkpoint, tmp_path) -> Path:
    """A copy of a finished 1-epoch quickstart run on 4 classes (``runs/quickstart/version_0``)."""
    run = tmp_path / "runs" / "quickstart" / "version_0"
    shutil.copytree(trained_checkpoint.parent.parent, run)
    return run


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.slow
@pytest.mark.parametrize("epochs", ["1", "3"])  # 1: the run's own length ("already finished"); 3: more
def test_resuming_with_other_classes_fails_in_one_line_and_leaves_the_run_as_it_was(finished_run, tmp_path, epochs):
    three = make_shapes_folder(tmp_path / "three", per_class=4, shapes=("circle", "square", "triangle"), seed=3)
    before, config = files_of(finished_run), (finished_run / "config.yaml").read_text()
    result = vitkit("fit", "--config", "quickstart", *TINY_ARGS, "--data.root", three, "--trainer.logger", "false",
                    "--ckpt_path", finished_run / "checkpoints" / "last.ckpt", "--trainer.max_epochs", epochs,
                    check=False)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("vitkit: error:")]
    assert len(error) == 1 and "differ from the checkpoint's" in error[0] and "already finished" not in result.stderr
    assert files_of(finished_run) == before and (finished_run / "config.yaml").read_text() == config


@pytest.mark.slow
def test_resuming_with_another_task_s_recipe_fails_in_one_line(finished_run, shapes_root, tmp_path):
    csv = tmp_path / "targets.csv"
    images = sorted(shapes_root.rglob("*.png"))[:8]
    csv.write_text("path,brightness,radius\n" + "".join(f"{p},{i / 8},{i % 3}\n" for i, p in enumerate(images)))
    before = files_of(finished_run)
    result = vitkit("fit", "--config", "regression", *TINY_ARGS, "--data.csv", csv, "--trainer.logger", "false",
                    "--ckpt_path", finished_run / "checkpoints" / "last.ckpt", check=False)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the recipe's task is Regression, the checkpoint's Classification" in result.stderr
    assert files_of(finished_run) == before


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [[], ["--config", "quickstart"]])  # the recipe logs to W&B
def test_a_test_starts_no_logger_run_with_or_without_its_recipe(finished_run, split_root, recipe):
    (split_root / "val").rename(split_root / "test")
    vitkit("test", *recipe, "--ckpt_path", finished_run / "checkpoints" / "last.ckpt", "--data.root", split_root,
           "--data.num_workers", "0")  # fmt: skip
    made = sorted(p.name for p in (finished_run / "test").iterdir())
    assert "metrics.json" in made and "wandb" not in made, made
    assert not list(finished_run.rglob("offline-run-*"))


@pytest.mark.slow
def test_resuming_a_finished_run_with_its_own_data_changes_nothing(finished_run, shapes_root):
    before = files_of(finished_run)
    last = finished_run / "checkpoints" / "last.ckpt"
    result = vitkit("fit", "--config", "quickstart", *TINY_ARGS, "--data.root", shapes_root, "--trainer.logger",
                    "false", "--ckpt_path", last, "--trainer.max_epochs", "1")  # fmt: skip
    assert "already finished its 1 epochs (1 trained): nothing to resume" in result.stderr
    assert files_of(finished_run) == before
