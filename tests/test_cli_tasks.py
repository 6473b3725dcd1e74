"""Multi-label and regression end to end: the shipped recipes fit on generated data with known answers, then
validate and predict from the checkpoint alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers import vitkit
from vitkit.synthetic import make_multilabel_manifest, make_regression_manifest

pytestmark = pytest.mark.slow


def fit_validate_predict(recipe: str, manifest: Path, project: Path) -> tuple[dict[str, float], list[dict[str, str]]]:
    """As a user would: fit the shipped recipe on ``manifest``, then validate and predict from its checkpoint alone;
    return the val metrics and the prediction rows (the val split)."""
    vitkit("fit", "--config", recipe, "--data.init_args.csv", manifest, cwd=project)
    vitkit("validate", "--ckpt_path", "last", cwd=project)
    vitkit("predict", "--ckpt_path", "last", cwd=project)
    run = project / "runs" / recipe / "version_0"
    metrics = json.loads((run / "validate" / "metrics.json").read_text())
    with open(run / "predictions" / "val.csv") as f:
        return metrics, list(csv.DictReader(f))


def test_multilabel_learns_which_shapes_are_present_and_predicts_label_sets(tmp_path):
    manifest = make_multilabel_manifest(tmp_path / "data", n=200, seed=2)
    metrics, rows = fit_validate_predict("multilabel", manifest, tmp_path)
    # Chance mAP is the label prevalence (~0.5 here); per-label AUROC of chance is 0.5.
    assert metrics["val/map"] > 0.7, metrics
    aurocs = [metrics[f"val/auroc/{s}"] for s in ("circle", "cross", "square", "triangle")]
    assert sum(aurocs) / 4 > 0.7 and min(aurocs) > 0.55, metrics
    assert len(rows) == 40  # the val split
    assert set(rows[0]) == {"path", "prediction", "p_circle", "p_cross", "p_square", "p_triangle", "target"}
    labels = {label for r in rows for label in r["prediction"].split("|") if label}
    assert labels <= {"circle", "cross", "square", "triangle"} and labels
    exact = sum(set(r["prediction"].split("|")) == set(r["target"].split("|")) for r in rows) / len(rows)
    assert exact > 0.2  # exact label-set matches; guessing 4 independent coin flips gets 1/16


def test_regression_learns_brightness_and_radius_in_original_units(tmp_path):
    manifest = make_regression_manifest(tmp_path / "data", n=200, seed=3)
    metrics, rows = fit_validate_predict("regression", manifest, tmp_path)
    assert metrics["val/r2"] > 0.5, metrics  # predicting the mean scores 0
    assert metrics["val/r2/brightness"] > 0.7 and metrics["val/r2/radius"] > 0.3, metrics
    assert metrics["val/mae/brightness"] < 25, metrics  # brightness is uniform on [20, 200]: the mean is ~45 off
    assert set(rows[0]) == {"path", "brightness", "radius", "target_brightness", "target_radius"}
    errors = [abs(float(r["brightness"]) - float(r["target_brightness"])) for r in rows]
    assert sum(errors) / len(errors) < 25  # original units, not standardised ones
    assert all(0.0 < float(r["radius"]) < 0.6 for r in rows)
