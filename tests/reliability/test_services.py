"""Long runs and services: W&B without network or login, an exception in one DDP process, a dying worker."""

from __future__ import annotations

import os
import time

import pytest
import wandb
import yaml

from tests.helpers import fit_quickstart
from vitkit.loggers import WandbLogger

pytestmark = pytest.mark.slow


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """Online mode with no API key anywhere: no env var, an empty netrc, a fresh home."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    (tmp_path / ".netrc").write_text("")
    yield
    wandb.teardown()  # stop the W&B service these in-process runs started


def test_online_without_login_warns_and_logs_offline(tmp_path, no_wandb_login):
    with pytest.warns(UserWarning, match="W&B: not logged in .* logs offline"):
        logger = WandbLogger(project="vitkit-test", save_dir=str(tmp_path))
    assert logger.experiment.offline
    logger.experiment.finish()


def test_online_with_unreachable_server_warns_within_the_timeout(tmp_path, no_wandb_login, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.warns(UserWarning, match="W&B: cannot reach http://127.0.0.1:9"):
        logger = WandbLogger(project="vitkit-test", save_dir=str(tmp_path), connect_timeout=2)
    assert logger.experiment.offline
    logger.experiment.finish()


@pytest.mark.slow
def test_fit_online_without_login_completes_with_one_warning(tmp_path, shapes_root):
    (tmp_path / ".netrc").write_text("")
    env = {"WANDB_MODE": "online", "HOME": str(tmp_path), "NETRC": str(tmp_path / ".netrc")}
    result = fit_quickstart(shapes_root, tmp_path / "runs", "--trainer.max_epochs", "1", env=env)
    assert result.stderr.count("W&B: not logged in") == 1
    assert list(tmp_path.glob("runs/version_0/wandb/offline-run-*/run-*.wandb"))
    assert os.environ.get("WANDB_MODE") != "online"  # the test process itself is untouched


@pytest.mark.parametrize("rank", [0, 1])
def test_an_exception_in_one_ddp_process_ends_the_run_and_is_shown(rank, tmp_path, shapes_root):
    callback = {"class_path": "tests.reliability.faults.RaiseOnRank", "init_args": {"rank": rank}}
    (tmp_path / "fault.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [callback]}}))
    start = time.monotonic()
    result = fit_quickstart(shapes_root, tmp_path, "--config", tmp_path / "fault.yaml", "--trainer.logger", "false",
                            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                            check=False)  # fmt: skip
    assert result.returncode != 0
    assert f"RuntimeError: injected failure on rank {rank}" in result.stderr
    assert time.monotonic() - start < 120  # helpers.vitkit would kill a hung run only after 300 s


def test_a_dataloader_worker_killed_mid_epoch_is_reported_with_what_to_do(tmp_path, shapes_root):
    result = fit_quickstart(shapes_root, tmp_path, "--data", "tests.reliability.faults.DyingWorkerData",
                            "--data.root", shapes_root, "--data.num_workers", "1", "--data.batch_size", "16",
                            "--trainer.logger", "false", check=False)  # fmt: skip
    assert result.returncode == 1
    assert "vitkit: error: a DataLoader worker process died" in result.stderr
    assert "--data.num_workers" in result.stderr and "Traceback" not in result.stderr
