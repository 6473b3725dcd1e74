"""Weights & Biases (offline, and online without login or network), no logger, and what each run leaves."""

from __future__ import annotations

import os

import pytest

from tests.helpers import fit_quickstart
from tests.wandb_records import history, read_records, run_config
from vitkit.loggers import WandbLogger


@pytest.mark.slow
def test_offline_wandb_run_holds_config_metrics_and_confusion_matrix(tmp_path, shapes_root):
    fit_quickstart(
        shapes_root,
        tmp_path,
        "--trainer.max_epochs",
        "2",
        "--trainer.logger.init_args.save_dir",
        tmp_path,
        "--trainer.logger.init_args.name",
        "offline-test",
        "--trainer.logger.init_args.log_model",
        "true",
    )
    (run,) = tmp_path.glob("wandb/offline-run-*")
    records = read_records(next(run.glob("run-*.wandb")))
    config = run_config(records)
    # The full resolved LightningCLI config, not only the model's hyperparameters:
    assert config["config"]["trainer"]["max_epochs"] == 2
    assert config["config"]["data"]["init_args"]["root"] == str(shapes_root)
    assert config["config"]["model"]["backbone"]["init_args"]["model_kwargs"]["depth"] == 2
    assert config["effective_batch_size"] == 16
    assert (run / "files" / "config.yaml").read_text().startswith("# lightning.pytorch==")
    rows = history(records)
    val = [r["val/acc"] for r in rows if "val/acc" in r]
    assert len(val) == 2 and all(0 <= v <= 1 for v in val)
    assert any("train/loss" in r for r in rows) and any(k.startswith("lr-AdamW") for r in rows for k in r)
    assert len([r for r in rows if "val/confusion_matrix.filenames" in r]) == 2
    assert len(list((run / "files/media/images/val").glob("confusion_matrix_*.png"))) == 2
    assert list((run / "files/media/table/val").glob("samples_*.table.json"))
    # log_model: the best checkpoint becomes a model artifact tagged "best"
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    models = [a for a in artifacts if a.type == "model"]
    assert models and any("best" in a.aliases for a in models)


@pytest.mark.slow
def test_without_a_logger_the_report_is_saved_as_png(tmp_path, shapes_root):
    fit_quickstart(shapes_root, tmp_path, "--trainer.max_epochs", "1", "--trainer.logger", "false")
    assert [p.name for p in sorted((tmp_path / "validation").iterdir())] == [
        "confusion_matrix_epoch000.png",
        "samples_epoch000.png",
    ]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """Online mode with no API key anywhere: no env var, an empty netrc, a fresh home."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    (tmp_path / ".netrc").write_text("")


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
    result = fit_quickstart(
        shapes_root, tmp_path, "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", tmp_path, env=env
    )
    assert result.stderr.count("W&B: not logged in") == 1
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert os.environ.get("WANDB_MODE") != "online"  # the test process itself is untouched
