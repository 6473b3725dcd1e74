"""A command that fails says only what is true and leaves other runs as they were."""

from __future__ import annotations

import json

import pytest

from tests.helpers import fit_quickstart


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
