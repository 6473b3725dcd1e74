"""Multi-label and regression end to end: recipes fit on generated data with known answers, then predict."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.helpers import vitkit
from vitkit.synthetic import make_multilabel_manifest, make_regression_manifest

pytestmark = pytest.mark.slow


def fit(recipe: str, manifest: Path, run: Path) -> dict[str, float]:
    """Fit a recipe on ``manifest``; return the last epoch's val metrics from the CSV logger."""
    vitkit(
        "fit",
        "--config",
        f"recipes/{recipe}.yaml",
        "--data.init_args.csv",
        manifest,
        "--trainer.max_epochs",
        "8",
        "--data.init_args.num_workers",
        "0",
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        run,
        "--trainer.default_root_dir",
        run,
        "--checkpoint.dirpath",
        run / "checkpoints",
    )
    with open(next(run.glob("**/metrics.csv"))) as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/loss")]
    assert len(rows) == 8
    return {k: float(v) for k, v in rows[-1].items() if v and k.startswith("val/")}


def predict(run: Path, recipe: str, out: Path) -> list[dict[str, str]]:
    vitkit(
        "predict",
        "--config",
        f"recipes/{recipe}.yaml",
        "--ckpt_path",
        run / "checkpoints" / "last.ckpt",
        "--data.init_args.csv",
        run.parent / "data" / ("labels.csv" if recipe == "multilabel" else "targets.csv"),
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        out,
    )
    with open(out / "predictions.csv") as f:
        return list(csv.DictReader(f))


def test_multilabel_learns_which_shapes_are_present_and_predicts_label_sets(tmp_path):
    manifest = make_multilabel_manifest(tmp_path / "data", n=200, seed=2)
    metrics = fit("multilabel", manifest, tmp_path / "run")
    # Chance mAP is the label prevalence (~0.5 here); per-label AUROC of chance is 0.5.
    assert metrics["val/map"] > 0.7, metrics
    aurocs = [metrics[f"val/auroc/{s}"] for s in ("circle", "cross", "square", "triangle")]
    assert sum(aurocs) / 4 > 0.7 and min(aurocs) > 0.55, metrics
    rows = predict(tmp_path / "run", "multilabel", tmp_path / "pred")
    assert len(rows) == 40  # the val split
    assert set(rows[0]) == {"path", "prediction", "p_circle", "p_cross", "p_square", "p_triangle", "target"}
    labels = {label for r in rows for label in r["prediction"].split("|") if label}
    assert labels <= {"circle", "cross", "square", "triangle"} and labels
    exact = sum(set(r["prediction"].split("|")) == set(r["target"].split("|")) for r in rows) / len(rows)
    assert exact > 0.2  # exact label-set matches; guessing 4 independent coin flips gets 1/16


def test_regression_learns_brightness_and_radius_in_original_units(tmp_path):
    manifest = make_regression_manifest(tmp_path / "data", n=200, seed=3)
    metrics = fit("regression", manifest, tmp_path / "run")
    assert metrics["val/r2"] > 0.5, metrics  # predicting the mean scores 0
    assert metrics["val/mae/brightness"] < 25, metrics  # brightness is uniform on [20, 200]: the mean is ~45 off
    rows = predict(tmp_path / "run", "regression", tmp_path / "pred")
    assert set(rows[0]) == {"path", "brightness", "radius", "target_brightness", "target_radius"}
    errors = [abs(float(r["brightness"]) - float(r["target_brightness"])) for r in rows]
    assert sum(errors) / len(errors) < 25  # original units, not standardised ones
    assert all(0.0 < float(r["radius"]) < 0.6 for r in rows)
