"""Checkpoints and weights: nothing in a file runs, a kill never corrupts the last good checkpoint, runs resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY_VIT
from tests.helpers import REPO, TINY_ARGS, VITKIT, vitkit
from vitkit import Backbone, ImageDataModule, TransferModule, WeightsError
from vitkit.checkpoints import AtomicCheckpointIO, remove_partial_saves
from vitkit.cli import VitkitCLI
from vitkit.trainer import VitkitTrainer


class Exploit:
    """Unpickling this calls ``open(marker, "w")``: a file appears if a loader runs pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_in_a_weights_file_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": Exploit(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        Backbone(**TINY_VIT, weights=tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "export", "fit", "backbone-weights"])
def test_a_checkpoint_with_pickled_code_is_refused_by_every_command(command, tmp_path, shapes_root):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"num_outputs": 4}, "extra": Exploit(marker)}, evil)
    if command == "backbone-weights":
        args = ["fit", "--config", "quickstart", *TINY_ARGS, "--data.init_args.root", shapes_root,
                "--model.backbone.init_args.weights", evil, "--trainer.logger", "false"]  # fmt: skip
    elif command == "fit":  # resuming
        args = ["fit", "--config", "quickstart", *TINY_ARGS, "--data.init_args.root", shapes_root,
                "--ckpt_path", evil, "--trainer.logger", "false"]  # fmt: skip
    else:
        args = [command, "--ckpt_path", evil, "--data.predict_root", shapes_root]
    result = vitkit(*args, "--trainer.default_root_dir", tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert "vitkit: error: cannot read" in result.stderr and "weights_only" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


SAVER = """
import sys, torch
from vitkit.checkpoints import AtomicCheckpointIO, remove_partial_saves
io = AtomicCheckpointIO()
print("saving", flush=True)
while True:
    io.save_checkpoint({"state_dict": {"w": torch.full((40_000_000,), 7.0)}}, sys.argv[1])
"""


@pytest.mark.slow
def test_killing_a_process_while_it_saves_never_leaves_a_broken_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    seen = set()
    for delay in (0.2, 0.45, 0.7, 0.95, 1.2, 1.6, 3.0, 6.0):  # 160 MB per save: kills land inside writes
        process = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
        process.stdout.readline()
        time.sleep(delay)
        process.kill()
        process.wait()
        weights = AtomicCheckpointIO().load_checkpoint(path)["state_dict"]["w"]
        assert weights.shape in ((3,), (40_000_000,)) and bool((weights == weights[0]).all())
        seen.add(tuple(weights.shape))
    assert (40_000_000,) in seen  # some saves completed: the kills did hit a writing process
    left = {p.name: p.stat().st_size for p in tmp_path.iterdir()}  # hidden files too: kills leave temporary files
    partial = remove_partial_saves(tmp_path)  # what the next run in this folder does as it starts
    assert sorted(p.name for p in partial) == sorted(set(left) - {"last.ckpt"}), left
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_a_run_resumed_in_a_folder_removes_the_files_that_killed_saves_left(tmp_path, shapes_root):
    args = ["fit", "--config", "quickstart", *TINY_ARGS, "--data.init_args.root", shapes_root,
            "--trainer.logger", "false", "--trainer.default_root_dir", tmp_path]  # fmt: skip
    vitkit(*args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", cwd=tmp_path)
    folder = tmp_path / "version_0" / "checkpoints"
    before = sorted(os.listdir(folder))
    (folder / ".last.ckpt.k1llz_9a.tmp").write_bytes(b"\0" * 1000)  # a save killed mid-write (mkstemp's name)
    (folder / ".notes.tmp").write_text("a user's file")  # not a checkpoint save's: kept
    resumed = vitkit(*args, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--ckpt_path", "last",
                     cwd=tmp_path)  # fmt: skip
    assert sorted(os.listdir(folder)) == sorted([*before, ".notes.tmp"])  # hidden files listed too
    assert f"removed {folder / '.last.ckpt.k1llz_9a.tmp'}, a checkpoint save that was interrupted" in (
        resumed.stdout + resumed.stderr
    )


def test_checkpoints_are_as_readable_as_the_umask_says(tmp_path):
    for umask in (0o022, 0o027, 0o077):
        previous = os.umask(umask)
        try:
            AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1)}, tmp_path / f"{umask:o}.ckpt")
        finally:
            os.umask(previous)
        assert (tmp_path / f"{umask:o}.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_cli_trainer_writes_and_reads_checkpoints_with_the_atomic_io(shapes_root, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["vitkit"])
    cli = VitkitCLI(TransferModule, ImageDataModule, trainer_class=VitkitTrainer, subclass_mode_data=True, run=False,
                    args=["--config", "quickstart", *TINY_ARGS, "--data.init_args.root", str(shapes_root),
                          "--trainer.logger", "false"])  # fmt: skip
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.slow
def test_a_fit_killed_mid_epoch_resumes_from_last_and_finishes_the_planned_epochs(tmp_path, shapes_root):
    starts = tmp_path / "epoch_starts.csv"
    slow = {"class_path": "tests.reliability.faults.SlowSteps", "init_args": {"seconds": 0.4, "log": str(starts)}}
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [slow]}}))
    args = ["fit", "--config", "quickstart", *TINY_ARGS, "--config", tmp_path / "slow.yaml",
            "--data.init_args.root", shapes_root, "--trainer.max_epochs", "3", "--trainer.logger", "false",
            "--trainer.default_root_dir", tmp_path]  # fmt: skip
    last = tmp_path / "version_0" / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    process = subprocess.Popen([VITKIT, *map(str, args)], cwd=tmp_path, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # into the second epoch (5 steps of 0.4 s each)
    assert process.poll() is None, f"the run ended (exit {process.returncode}) before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed = torch.load(last, weights_only=True)
    assert killed["epoch"] == 0, "the run was not killed during its second epoch"
    steps_per_epoch = killed["global_step"]
    assert starts.read_text().split() == ["0,0", f"1,{steps_per_epoch}"]

    vitkit(*args, "--ckpt_path", "last", cwd=tmp_path)
    # the resumed run started at the second epoch, with its step count, and did not repeat the first
    assert starts.read_text().split()[2:] == [f"1,{steps_per_epoch}", f"2,{2 * steps_per_epoch}"]
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 3 * steps_per_epoch
    # optimizer and LR schedule went on from where they were, not from scratch
    adam_steps = {float(state["step"]) for state in resumed["optimizer_states"][0]["state"].values()}
    assert adam_steps == {3.0 * steps_per_epoch}
    assert resumed["lr_schedulers"][0]["last_epoch"] == 3 * steps_per_epoch


@pytest.fixture
def not_checkpoints(trained_checkpoint, tmp_path) -> dict[str, Path]:
    """What users give by mistake: the ONNX file `vitkit export` wrote and the run's config.yaml."""
    pytest.importorskip("onnx")
    onnx = tmp_path / "model.onnx"
    vitkit("export", "--ckpt_path", trained_checkpoint, "--output", onnx)
    return {"an ONNX model": onnx, "a YAML file": trained_checkpoint.parent.parent / "config.yaml"}


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--ckpt_path", "--model.backbone.init_args.weights"])
def test_a_file_that_is_no_checkpoint_is_named_with_what_it_is(not_checkpoints, shapes_root, tmp_path, option):
    for kind, path in not_checkpoints.items():
        result = vitkit("fit", "--config", "quickstart", *TINY_ARGS, "--data.root", shapes_root,
                        "--trainer.default_root_dir", tmp_path / "runs", option, path, check=False)  # fmt: skip
        assert result.returncode == 2, result.stderr
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("vitkit: error:")]
        assert f"{path} is {kind}" in line and "mmap" not in line and "weights_only" not in line, line


@pytest.mark.slow
def test_starting_from_weights_says_what_was_loaded(trained_checkpoint, shapes_root, tmp_path):
    result = vitkit("fit", "--config", "quickstart", *TINY_ARGS, "--data.root", shapes_root, "--trainer.logger",
                    "false", "--trainer.default_root_dir", tmp_path / "runs", "--trainer.max_epochs", "1",
                    "--model.backbone.init_args.weights", trained_checkpoint)  # fmt: skip
    assert f"weights from {trained_checkpoint}: all 30 tensors of the encoder loaded" in result.stderr
    assert "the head starts fresh" in result.stderr
