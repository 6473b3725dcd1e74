"""Weights & Biases (offline, and online without login or network), no logger, and what each run leaves."""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import fit_quickstart, run_folder
from tests.wandb_records import history, read_records, run_config


@pytest.mark.slow
def test_offline_wandb_run_holds_config_metrics_and_confusion_matrix(tmp_path, shapes_root):
    fit_quickstart(shapes_root, tmp_path, "--trainer.max_epochs", "2", "--trainer.logger.init_args.name",
                   "offline-test", "--trainer.logger.init_args.log_model", "true")  # fmt: skip
    (run,) = tmp_path.glob("version_0/wandb/offline-run-*")
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
    # The report at the end of fit: its page as W&B media, its numbers and suspected label errors as run files.
    assert list((run / "files/media/html").glob("report_*.html")) and (run / "files/label_errors.csv").is_file()
    report = json.loads((run / "files/report.json").read_text())
    assert sorted(report["per_class"]) == ["circle", "cross", "square", "triangle"]
    # log_model: the best checkpoint becomes a model artifact tagged "best"
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    models = [a for a in artifacts if a.type == "model"]
    assert models and any("best" in a.aliases for a in models)


@pytest.mark.slow
def test_without_a_logger_the_report_is_saved_as_png(tmp_path, shapes_root):
    fit_quickstart(shapes_root, tmp_path, "--trainer.max_epochs", "1", "--trainer.logger", "false")
    run = run_folder(tmp_path)
    assert [p.name for p in sorted((run / "validation").iterdir())] == [
        "confusion_matrix_epoch000.png",
        "samples_epoch000.png",
    ]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "report", "validation"]


@pytest.mark.slow
def test_a_fit_into_a_log_file_says_one_line_per_epoch_and_no_bookkeeping(tmp_path, shapes_root):
    """Output captured (not a terminal), as under nohup, SLURM or CI."""
    result = fit_quickstart(shapes_root, tmp_path, "--trainer.max_epochs", "3", "--trainer.logger", "false")
    output = result.stdout + result.stderr
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"], output
    assert all("train/loss" in line and "val/acc" in line and "val/loss" in line for line in epochs), epochs
    for noise in ("Total FLOPs", "Modules in train mode", "Loading `train_dataloader`", "Restoring states",
                  "Loaded model weights", "Predicting", "Epoch 0"):  # fmt: skip
        assert noise not in output, noise
    assert "best checkpoint:" in output and "report:" in output  # what a user acts on stays
    verbose = fit_quickstart(shapes_root, tmp_path, "--trainer.max_epochs", "1", "--trainer.logger", "false",
                             "--verbose")  # fmt: skip
    assert "Total params" in verbose.stdout + verbose.stderr and "Loading `train_dataloader`" in verbose.stderr


@pytest.mark.slow
def test_resuming_a_csv_logged_run_keeps_its_earlier_metrics(tmp_path, shapes_root):
    csv_logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]
    fit_quickstart(shapes_root, tmp_path, "--trainer.max_epochs", "1", *csv_logger)
    resumed = fit_quickstart(shapes_root, tmp_path, "--trainer.max_epochs", "2", *csv_logger, "--ckpt_path", "last")
    assert "will be deleted" not in resumed.stderr
    with open(run_folder(tmp_path) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["epoch"]) for r in rows if r.get("val/acc")) == [0, 1]  # epoch 0's row survived the resume
    assert sorted(int(r["epoch"]) for r in rows if r.get("train/loss_epoch")) == [0, 1]
