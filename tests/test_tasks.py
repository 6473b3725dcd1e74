"""Classification task: loss, activation and metrics against torch / hand-computed references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitkit import Classification


def test_loss_is_cross_entropy_with_label_smoothing():
    logits, targets = torch.randn(8, 4), torch.randint(0, 4, (8,))
    task = Classification(label_smoothing=0.1)
    assert torch.allclose(task.loss(logits, targets), F.cross_entropy(logits, targets, label_smoothing=0.1))
    assert not torch.allclose(task.loss(logits, targets), Classification().loss(logits, targets))


def test_predict_gives_probabilities():
    probs = Classification().predict(torch.randn(3, 5))
    assert torch.allclose(probs.sum(-1), torch.ones(3))


def test_metrics_accuracy_top5_and_macro_f1():
    assert set(Classification().metrics(5)) == {"acc", "f1_macro"}
    metrics = Classification().metrics(6)
    assert set(metrics) == {"acc", "acc_top5", "f1_macro"}
    logits = torch.eye(6)[[0, 1, 2, 3]]  # predicts classes 0..3
    values = metrics(logits, torch.tensor([0, 1, 2, 0]))
    assert values["acc"] == pytest.approx(0.75)
    assert values["acc_top5"] == pytest.approx(1.0)


def test_bad_options_are_rejected_with_the_value():
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got 1\.5"):
        Classification(label_smoothing=1.5)
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        Classification().metrics(1)
