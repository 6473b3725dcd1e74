"""Run folders: versioning, the `last` / `best` lookup, and where a checkpoint's run is."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from vitkit.errors import VitkitError
from vitkit.runs import RUN_DIR_ENV, find_checkpoint, new_run_dir, next_run_dir, run_dir_of, versions


def test_runs_are_numbered_after_the_highest_version_and_never_reuse_one(tmp_path):
    (tmp_path / "version_0").mkdir()
    (tmp_path / "version_7").mkdir()
    (tmp_path / "version_x").mkdir()  # not a run
    assert next_run_dir(tmp_path) == tmp_path / "version_8"
    assert next_run_dir(tmp_path) == tmp_path / "version_9"  # the first call claimed 8
    assert [p.name for p in versions(tmp_path)] == ["version_0", "version_7", "version_8", "version_9"]


def test_concurrent_runs_claim_different_folders(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: next_run_dir(tmp_path / "runs"), range(32)))
    assert len(set(runs)) == 32 and all(run.is_dir() for run in runs)


def test_processes_launched_for_ddp_reuse_the_first_process_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    first = new_run_dir(tmp_path)
    assert first == tmp_path / "version_0" and os.environ[RUN_DIR_ENV] == str(first)
    monkeypatch.setenv("LOCAL_RANK", "1")  # what Lightning's launcher sets in the processes it starts
    assert new_run_dir(tmp_path) == first
    assert versions(tmp_path) == [first]  # and they create nothing
    monkeypatch.delenv(RUN_DIR_ENV)
    assert new_run_dir(tmp_path) == tmp_path / "version_1"  # torchrun: a path only, nothing created
    assert versions(tmp_path) == [first]


def _checkpoint(path, best=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"ModelCheckpoint{'monitor': 'val/acc'}": {"best_model_path": str(best) if best else ""}}
    torch.save({"callbacks": state}, path)
    return path


def test_last_is_the_most_recently_written_last_checkpoint_and_best_its_runs_best(tmp_path):
    old = _checkpoint(tmp_path / "version_0" / "checkpoints" / "last.ckpt")
    best = tmp_path / "version_3" / "checkpoints" / "best-epoch004.ckpt"
    newer = _checkpoint(tmp_path / "version_3" / "checkpoints" / "last.ckpt", best=best)
    _checkpoint(best)
    _checkpoint(tmp_path / "version_3" / "checkpoints" / "best-epoch009.ckpt")  # newer, but not the best
    os.utime(old, (time.time() - 60, time.time() - 60))
    assert find_checkpoint(tmp_path, "last") == newer
    assert find_checkpoint(tmp_path, "best") == best


def test_last_finds_the_latest_run_of_any_recipe_under_the_runs_folder(tmp_path):
    a = _checkpoint(tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt")
    b = _checkpoint(tmp_path / "runs" / "regression" / "version_0" / "checkpoints" / "last.ckpt")
    os.utime(a, (time.time() - 60, time.time() - 60))
    assert find_checkpoint(tmp_path / "runs", "last") == b
    assert find_checkpoint(tmp_path / "runs" / "quickstart", "last") == a


def test_no_checkpoint_to_resume_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "version_0").mkdir()  # a run that died before its first checkpoint
    with pytest.raises(VitkitError, match=r"no run under .* has a checkpoint"):
        find_checkpoint(tmp_path, "last")


def test_a_checkpoint_belongs_to_the_run_folder_above_its_checkpoints_folder(tmp_path):
    assert run_dir_of(tmp_path / "version_2" / "checkpoints" / "last.ckpt") == tmp_path / "version_2"
    assert run_dir_of(tmp_path / "downloads" / "model.ckpt") == tmp_path / "downloads"
