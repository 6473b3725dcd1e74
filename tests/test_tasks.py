"""Tasks: losses, activations, metrics and prediction columns against torch / hand-computed references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitkit import Classification, MultiLabel, Regression


def bound(task, n, names=None, stats=None):
    task.bind(n, names, stats)
    return task


def test_classification_loss_is_cross_entropy_with_label_smoothing():
    logits, targets = torch.randn(8, 4), torch.randint(0, 4, (8,))
    task = bound(Classification(label_smoothing=0.1), 4)
    assert torch.allclose(task.loss(logits, targets), F.cross_entropy(logits, targets, label_smoothing=0.1))
    assert not torch.allclose(task.loss(logits, targets), Classification().loss(logits, targets))
    assert torch.allclose(task.predict(logits).sum(-1), torch.ones(8))


def test_classification_metrics_accuracy_top5_and_macro_f1():
    assert set(bound(Classification(), 5).metrics("train")) == {"acc", "f1_macro"}
    task = bound(Classification(), 6)
    metrics = task.metrics("val")
    assert {"acc", "acc_top5", "f1_macro", "balanced_acc"} <= set(metrics)
    task.update_metrics(metrics, torch.eye(6)[[0, 1, 2, 3]], torch.tensor([0, 1, 2, 0]))
    values = metrics.compute()
    assert values["acc"] == pytest.approx(0.75)
    assert values["acc_top5"] == pytest.approx(1.0)


def test_classification_soft_targets_skip_metrics_but_train():
    task = bound(Classification(), 3)
    soft = torch.tensor([[0.7, 0.3, 0.0]])
    assert task.loss(torch.zeros(1, 3), soft) > 0
    metrics = task.metrics("train")
    task.update_metrics(metrics, torch.zeros(1, 3), soft)
    assert metrics["acc"].update_count == 0


def test_classification_prediction_columns():
    task = bound(Classification(), 3, ["a", "b", "c"])
    row = task.describe(torch.tensor([0.2, 0.7, 0.1]), top_k=2)
    assert row == {
        "prediction": "b",
        "score": "0.700000",
        "top1": "b",
        "top1_score": "0.700000",
        "top2": "a",
        "top2_score": "0.200000",
    }
    assert task.describe_target(2) == {"target": "c"} and task.describe_target(None) == {"target": ""}


def test_multilabel_loss_is_bce_with_pos_weight_from_label_frequencies():
    task = bound(MultiLabel(pos_weight=True), 2, ["a", "b"], {"positive_fraction": [0.5, 0.2]})
    assert torch.allclose(task.pos_weight, torch.tensor([1.0, 4.0]))
    logits, targets = torch.randn(6, 2), torch.randint(0, 2, (6, 2)).float()
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor([1.0, 4.0]))
    assert torch.allclose(task.loss(logits, targets), expected)
    assert torch.allclose(bound(MultiLabel(), 2).pos_weight, torch.ones(2))


def test_multilabel_metrics_map_f1_and_per_label_auroc_at_validation():
    task = bound(MultiLabel(threshold=0.5), 2, ["cat", "dog"])
    assert "auroc" not in task.metrics("train")
    metrics = task.metrics("val")
    targets = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]])
    perfect_logits = (targets.float() - 0.5) * 10
    task.update_metrics(metrics, perfect_logits, targets.float())
    values = metrics.compute()
    assert values["map"] == pytest.approx(1.0) and values["f1_micro"] == pytest.approx(1.0)
    assert values["auroc/cat"] == pytest.approx(1.0) and values["auroc/dog"] == pytest.approx(1.0)


def test_multilabel_prediction_is_the_label_set_over_the_threshold():
    task = bound(MultiLabel(threshold=0.6), 3, ["a", "b", "c"])
    row = task.describe(torch.tensor([0.9, 0.5, 0.61]))
    assert row["prediction"] == "a|c" and row["p_b"] == "0.500000"
    assert task.describe_target(torch.tensor([0.0, 1.0, 1.0])) == {"target": "b|c"}


def test_regression_standardises_targets_and_reports_original_units():
    stats = {"mean": [100.0, 0.5], "std": [10.0, 0.1]}
    task = bound(Regression(loss="mse"), 2, ["brightness", "radius"], stats)
    targets = torch.tensor([[110.0, 0.4], [90.0, 0.7]])
    outputs = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])  # exactly the standardised targets
    assert task.loss(outputs, targets) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(task.predict(outputs), targets)
    metrics = task.metrics("val")
    task.update_metrics(metrics, outputs + torch.tensor([0.1, 0.0]), targets)  # brightness off by 1 unit
    values = metrics.compute()
    assert values["mae/brightness"] == pytest.approx(1.0) and values["mae/radius"] == pytest.approx(0.0, abs=1e-6)
    assert values["mae"] == pytest.approx(0.5)
    assert task.describe(torch.tensor([105.0, 0.25])) == {"brightness": "105", "radius": "0.25"}
    assert task.describe_target(None) == {"target_brightness": "", "target_radius": ""}


@pytest.mark.parametrize("name, fn", [("l1", F.l1_loss), ("huber", F.huber_loss)])
def test_regression_loss_choices(name, fn):
    task = bound(Regression(loss=name), 1)
    outputs, targets = torch.randn(5, 1), torch.randn(5)
    assert torch.allclose(task.loss(outputs, targets), fn(outputs, targets.view(5, 1)))


def test_regression_reports_r2_per_target_as_sklearn_defines_it():
    task = bound(Regression(), 2, ["brightness", "radius"], {"mean": [0.0, 0.0], "std": [1.0, 1.0]})
    metrics = task.metrics("val")
    targets = torch.tensor([[1.0, 0.1], [2.0, 0.2], [3.0, 0.3], [4.0, 0.4]])
    predictions = torch.tensor([[1.0, 0.25], [2.0, 0.25], [3.0, 0.25], [4.0, 0.25]])  # exact / the mean
    task.update_metrics(metrics, predictions, targets)
    values = metrics.compute()
    assert values["r2/brightness"] == pytest.approx(1.0) and values["r2/radius"] == pytest.approx(0.0, abs=1e-6)
    assert values["r2"] == pytest.approx(0.5)


def test_regression_single_target_r2():
    task = bound(Regression(), 1, ["y"], {"mean": [0.0], "std": [1.0]})
    metrics = task.metrics("val")
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    task.update_metrics(metrics, y.view(4, 1), y)
    assert metrics.compute()["r2"] == pytest.approx(1.0)


def test_bad_options_are_rejected_with_the_value():
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got 1\.5"):
        Classification(label_smoothing=1.5)
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        bound(Classification(), 1)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\), got 1\.0"):
        MultiLabel(threshold=1.0)
    with pytest.raises(ValueError, match="loss must be 'mse', 'l1' or 'huber', got 'l3'"):
        Regression(loss="l3")
    with pytest.raises(ValueError, match="needs label frequencies"):
        bound(MultiLabel(pos_weight=True), 2)
