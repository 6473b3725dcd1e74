"""Multi-process (DDP on CPU, gloo), mixed precision, gradient accumulation and seeding, through `vitkit`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import fit_quickstart, run_folder, vitkit
from vitkit.synthetic import make_shapes_folder

pytestmark = pytest.mark.slow

CPU = ["--trainer.accelerator", "cpu", "--data.init_args.batch_size", "8"]


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory) -> Path:
    """3 classes x 25 images: a 15-image val split, which 2 processes cannot share evenly."""
    return make_shapes_folder(tmp_path_factory.mktemp("odd"), per_class=25, shapes=("circle", "square", "cross"))


def fit(root: Path, runs: Path, *extra: str) -> Path:
    """Fit into ``runs`` with a CSV logger; return the run folder."""
    fit_quickstart(root, runs, *CPU, "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", *extra)
    return run_folder(runs)


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def logged(run: Path, key: str) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, odd_root) -> Path:
    runs = tmp_path_factory.mktemp("ddp")
    return fit(odd_root, runs, "--trainer.max_epochs", "2", "--trainer.devices", "2", "--trainer.strategy", "ddp")


def test_ddp_fit_writes_one_checkpoint_that_loads_and_predicts(ddp_run, tmp_path):
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir() if p.name.startswith("last")) == ["last.ckpt"]
    assert [p.name for p in ddp_run.parent.iterdir()] == [ddp_run.name]  # one run folder, made by the first process
    checkpoint = last(ddp_run)
    assert checkpoint["epoch"] == 1
    # 60 train images, 8 per device, 2 devices: 4 steps per epoch (each sample once per epoch)
    assert checkpoint["global_step"] == 8
    hparams = yaml.safe_load((ddp_run / "hparams.yaml").read_text())
    assert hparams["effective_batch_size"] == 16 and hparams["world_size"] == 2
    vitkit("predict", "--ckpt_path", ddp_run / "checkpoints" / "last.ckpt", "--output", tmp_path / "val.csv")
    with open(tmp_path / "val.csv") as f:
        assert len(list(csv.DictReader(f))) == 15


def test_ddp_validation_scores_each_sample_once(ddp_run, tmp_path):
    """Two processes must give exactly the single-process metrics on a val set they cannot split evenly."""
    results = {}
    for devices in ("1", "2"):
        vitkit("validate", "--ckpt_path", ddp_run / "checkpoints" / "last.ckpt", "--data.num_workers", "0",
               "--data.batch_size", "4", "--trainer.accelerator", "cpu", "--trainer.devices", devices,
               "--trainer.strategy", "ddp" if devices == "2" else "auto", "--output", tmp_path / devices)  # fmt: skip
        results[devices] = json.loads((tmp_path / devices / "metrics.json").read_text())
    assert results["2"]["val/acc"] == pytest.approx(results["1"]["val/acc"], abs=1e-6)
    assert results["2"]["val/loss"] == pytest.approx(results["1"]["val/loss"], rel=1e-5)


def test_bf16_mixed_precision_on_cpu(tmp_path, odd_root):
    run = fit(odd_root, tmp_path, "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed")
    checkpoint = last(run)
    assert checkpoint["global_step"] == 8  # that autocast runs in bf16: tests/test_module.py
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert torch.isfinite(torch.tensor(logged(run, "val/loss"))).all()


def test_gradient_accumulation_steps_the_optimizer_every_n_batches(tmp_path, odd_root):
    run = fit(odd_root, tmp_path, "--trainer.max_epochs", "1", "--trainer.accumulate_grad_batches", "2")
    assert last(run)["global_step"] == 4  # 8 batches of 8, one optimizer step per 2
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["effective_batch_size"] == 16


def test_same_seed_gives_the_same_val_metrics(tmp_path, odd_root):
    runs = [fit(odd_root, tmp_path / name, "--trainer.max_epochs", "1", "--data.init_args.num_workers", "1")
            for name in ("a", "b")]  # fmt: skip
    assert logged(runs[0], "val/loss") == logged(runs[1], "val/loss")
    assert logged(runs[0], "val/acc") == logged(runs[1], "val/acc")


def test_ddp_predict_and_embed_give_one_file_in_folder_order(ddp_run, odd_root, tmp_path):
    """75 images on 2 processes: each image once, in folder order, with the features one process computes."""
    checkpoint = ddp_run / "checkpoints" / "last.ckpt"
    common = ["--ckpt_path", checkpoint, "--data.predict_root", odd_root, *CPU, "--data.batch_size", "4"]
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    vitkit("predict", *common, *ddp, "--output", tmp_path / "predictions.csv")
    with open(tmp_path / "predictions.csv") as f:
        assert [r["path"] for r in csv.DictReader(f)] == sorted(str(p) for p in odd_root.glob("*/*"))
    assert sorted(p.name for p in tmp_path.iterdir() if "part" in p.name) == []
    vitkit("embed", *common, *ddp, "--output", tmp_path / "ddp")
    vitkit("embed", *common, "--trainer.devices", "1", "--output", tmp_path / "single")
    assert (tmp_path / "ddp.csv").read_text() == (tmp_path / "single.csv").read_text()
    torch.testing.assert_close(
        torch.from_numpy(np.load(tmp_path / "ddp.npy")), torch.from_numpy(np.load(tmp_path / "single.npy"))
    )
