"""The run lifecycle as users live it: fit -> find the checkpoint -> resume -> validate/test -> predict -> transfer.

Every command is typed as the README shows it: the shipped recipes, no test-only flags, from a project folder that
is not the repository, W&B offline. The folder is checked afterwards for anything written outside ``runs/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, VITKIT, vitkit
from vitkit.synthetic import make_regression_manifest, make_shapes_folder

pytestmark = pytest.mark.slow

RUN = Path("runs/quickstart/version_0")


def make_project(folder: Path) -> Path:
    """A user's project folder with one class-folder tree of their images."""
    folder.mkdir(parents=True, exist_ok=True)
    make_shapes_folder(folder / "my_images", per_class=20, sizes=(24, 64), seed=3)
    return folder


def fit_command(*extra: str) -> list[str]:
    return ["fit", "--config", "quickstart", "--data.root", "my_images", *extra]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, str]:
    """A project folder after `vitkit fit --config quickstart --data.root my_images`; and what fit printed."""
    folder = make_project(tmp_path_factory.mktemp("project"))
    result = vitkit(*fit_command(), cwd=folder)
    return folder, result.stdout + result.stderr


def checkpoint_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def best_of(folder: Path) -> Path:
    (best,) = (folder / RUN / "checkpoints").glob("best-*.ckpt")
    return best


def test_fit_puts_everything_in_one_run_folder_and_says_where(project):
    folder, output = project
    assert sorted(p.name for p in folder.iterdir()) == ["my_images", "runs"]
    assert sorted(p.name for p in (folder / RUN).iterdir()) == ["checkpoints", "config.yaml", "report", "wandb"]
    assert [p.name for p in (folder / "runs" / "quickstart").iterdir()] == ["version_0"]
    assert f"run folder: {RUN}\n" in output  # at the start
    best = best_of(folder)
    assert re.search(rf"best checkpoint: {best.relative_to(folder)} \(val/acc 0\.\d+\)", output)  # and at the end
    assert f"last checkpoint: {RUN}/checkpoints/last.ckpt" in output
    assert list((folder / RUN / "wandb").glob("offline-run-*/run-*.wandb"))


def test_the_quickstart_classifier_learns(project):
    folder, _ = project
    score = checkpoint_state(best_of(folder))["callbacks"]
    accuracy = next(float(s["best_model_score"]) for k, s in score.items() if "val/acc" in k)
    assert accuracy >= 0.75  # 4 classes: chance is 0.25


def test_checkpoint_carries_the_data_config_and_is_readable_by_others(project):
    folder, _ = project
    best = best_of(folder)
    info = checkpoint_state(best)["vitkit"]
    assert info["data"]["class_path"] == "vitkit.ClassFolderDataModule"
    assert info["data"]["init_args"]["root"] == "my_images"  # as given
    assert info["data_config"]["input_size"] == [3, 32, 32]
    assert info["wandb_id"] and (folder / RUN / "wandb").glob(f"offline-run-*-{info['wandb_id']}")
    umask = os.umask(0o022)
    os.umask(umask)
    assert best.stat().st_mode & 0o777 == 0o666 & ~umask


def test_logs_are_quiet(project):
    _, output = project
    for noise in ("No seed found", "anonymous setting", "litlogger", "v_num"):
        assert noise not in output


def test_validate_from_the_checkpoint_alone_reports_fits_score(project):
    folder, _ = project
    best = best_of(folder)
    result = vitkit("validate", "--ckpt_path", best.relative_to(folder), cwd=folder)
    metrics = json.loads((folder / RUN / "validate" / "metrics.json").read_text())
    score = next(float(s["best_model_score"]) for k, s in checkpoint_state(best)["callbacks"].items() if "acc" in k)
    assert metrics["val/acc"] == pytest.approx(score, abs=1e-6)
    assert f"validate metrics written to {RUN}/validate/metrics.json" in result.stdout + result.stderr
    assert {"confusion_matrix.png", "samples.png"} <= {p.name for p in (folder / RUN / "validate").iterdir()}


def test_test_scores_the_test_split_of_re_pointed_data(project):
    folder, _ = project
    swapped = folder / "swapped"  # train = the user's images; test = the same images under the wrong class
    classes = sorted(p.name for p in (folder / "my_images").iterdir())
    for i, name in enumerate(classes):
        (swapped / "train").mkdir(parents=True, exist_ok=True)
        (swapped / "train" / name).symlink_to(folder / "my_images" / name)
        shutil.copytree(folder / "my_images" / classes[(i + 1) % len(classes)], swapped / "test" / name)
    vitkit("test", "--ckpt_path", "best", "--data.root", "swapped", cwd=folder)
    wrong = json.loads((folder / RUN / "test" / "metrics.json").read_text())["test/acc"]
    for name in classes:  # now label the test images truly
        shutil.rmtree(swapped / "test" / name)
        shutil.copytree(folder / "my_images" / name, swapped / "test" / name)
    vitkit("test", "--ckpt_path", "best", "--data.root", "swapped", cwd=folder)
    right = json.loads((folder / RUN / "test" / "metrics.json").read_text())["test/acc"]
    assert wrong < 0.3 < 0.75 < right
    shutil.rmtree(swapped)


def test_test_without_a_test_split_says_so_in_one_line(project):
    folder, _ = project
    result = vitkit("test", "--ckpt_path", "best", cwd=folder, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "vitkit: error: data root my_images has no test split: put class folders of test images in "
        "my_images/test/<class>/, or score the val split with `vitkit validate`."
    )
    assert "Traceback" not in result.stderr and "Restoring states" not in result.stdout + result.stderr


def test_commands_given_a_checkpoint_write_into_its_run_folder_and_say_so(project):
    folder, _ = project
    best = str(best_of(folder).relative_to(folder))
    outputs = {
        ("predict", "--ckpt_path", best, "--data.predict_root", "my_images/circle"): RUN / "predictions/circle.csv",
        ("embed", "--ckpt_path", best, "--data.predict_root", "my_images"): RUN / "embeddings/my_images.npy",
        ("export", "--ckpt_path", best): Path(best).with_suffix(".onnx"),
        ("explain", "--ckpt_path", best, "--images", "my_images/square"): RUN / "attention",
    }
    for args, path in outputs.items():
        result = vitkit(*args, cwd=folder)
        assert str(path) in result.stdout + result.stderr, args
        assert (folder / path).exists()
    assert len(list((folder / RUN / "predictions/circle.csv").read_text().splitlines())) == 21  # header + 20
    assert sorted(p.name for p in folder.iterdir()) == ["my_images", "runs"]


def test_resume_after_a_kill_continues_the_same_run_to_the_same_end(project, tmp_path):
    folder = make_project(tmp_path / "killed")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    process = subprocess.Popen([VITKIT, *fit_command()], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    last = folder / RUN / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = checkpoint_state(last)["epoch"]
    assert killed_at < 7, "the run finished before it could be killed"
    result = vitkit(*fit_command("--ckpt_path", "last"), cwd=folder)
    output = result.stdout + result.stderr
    assert f"run folder: {RUN} (resuming {RUN}/checkpoints/last.ckpt)" in output
    assert [p.name for p in (folder / "runs/quickstart").iterdir()] == ["version_0"]
    resumed, reference = checkpoint_state(last), checkpoint_state(project[0] / RUN / "checkpoints" / "last.ckpt")
    assert (resumed["epoch"], resumed["global_step"]) == (reference["epoch"], reference["global_step"])
    runs = sorted((folder / RUN / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1  # the same W&B run, continued


def test_resuming_with_no_checkpoint_stops_instead_of_starting_over(tmp_path):
    folder = make_project(tmp_path / "fresh")
    result = vitkit(*fit_command("--ckpt_path", "last"), cwd=folder, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "vitkit: error: --ckpt_path last: no run under runs/quickstart has a checkpoint (no runs): start a new run "
        "without --ckpt_path, or give a checkpoint file (or --trainer.default_root_dir of the runs) explicitly."
    )
    assert sorted(p.name for p in folder.iterdir()) == ["my_images"]


def test_transfer_from_the_classifier_to_the_regression_recipe(project):
    folder, _ = project
    make_regression_manifest(folder / "demo_data" / "regression", n=40)
    best = best_of(folder).relative_to(folder)
    result = vitkit("fit", "--config", "regression", "--model.backbone.init_args.weights", best, cwd=folder)
    output = result.stdout + result.stderr
    for line in (
        "position embedding resampled from a 8x8 to a 6x6 patch grid (image size)",
        "patch embedding resampled from 4x4 to 8x8 pixel patches (patch size)",
        "final norm 'norm' loaded as 'fc_norm' (global_pool differs)",
    ):
        assert f"vitkit: weights from {best}: {line}" in output
    run = folder / "runs/regression/version_0"
    state = checkpoint_state(run / "checkpoints" / "last.ckpt")
    assert state["vitkit"]["data"]["init_args"]["target_columns"] == ["brightness", "radius"]
    # Evaluating it needs nothing but the checkpoint; --data.csv re-points it, keeping the columns.
    vitkit("validate", "--ckpt_path", run / "checkpoints" / "last.ckpt", cwd=folder)
    assert "val/r2" in json.loads((run / "validate" / "metrics.json").read_text())
    make_regression_manifest(folder / "other", n=12, seed=5)
    vitkit("validate", "--ckpt_path", run / "checkpoints" / "last.ckpt", "--data.csv", "other/targets.csv",
           "--output", run / "validate-other", cwd=folder)  # fmt: skip
    assert json.loads((run / "validate-other" / "metrics.json").read_text())["val/mae"] > 0
