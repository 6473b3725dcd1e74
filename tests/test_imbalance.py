"""Loss weighting for imbalanced classes, and the per-class metrics: against hand-computed references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitkit import Classification, MultiLabel
from vitkit.errors import DataError

NAMES = ["cat", "dog", "owl"]


def bound(task, n=3, names=NAMES, stats=None):
    task.bind(n, names, stats)
    return task


def test_class_weights_scale_each_samples_loss_by_its_class_weight():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [0.0, 0.0, 3.0]])
    targets = torch.tensor([0, 2, 1, 2])
    task = bound(Classification(class_weights=[1.0, 2.0, 4.0]))
    log_p = logits.log_softmax(-1)
    w = [1.0, 4.0, 2.0, 4.0]  # the weight of each sample's true class
    by_hand = -sum(wi * float(log_p[i, t]) for i, (wi, t) in enumerate(zip(w, targets.tolist(), strict=True))) / 11
    assert float(task.loss(logits, targets)) == pytest.approx(by_hand, rel=1e-6)
    assert float(task.loss(logits, targets)) != pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-3)


def test_auto_class_weights_are_the_inverse_training_frequency():
    task = bound(Classification(class_weights="auto"), stats={"class_counts": [100, 20, 5]})
    assert task.class_weight.tolist() == pytest.approx([125 / 300, 125 / 60, 125 / 15])  # N / (K * count)
    named = bound(Classification(class_weights={"owl": 3.0}))
    assert named.class_weight.tolist() == [1.0, 1.0, 3.0]
    with pytest.raises(DataError, match="names bat, which are not outputs; they are cat, dog, owl"):
        bound(Classification(class_weights={"bat": 2.0}))
    with pytest.raises(DataError, match="has 2 weights for 3 outputs"):
        bound(Classification(class_weights=[1.0, 2.0]))
    with pytest.raises(DataError, match="needs the training label counts"):
        bound(Classification(class_weights="auto"))


def test_focal_loss_equals_its_definition_and_cross_entropy_at_gamma_zero():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    p = logits.softmax(-1)[torch.arange(6), targets]
    by_hand = float((-((1 - p) ** 2) * p.log()).mean())  # Lin et al.: -(1 - p_t)^gamma log p_t
    assert float(bound(Classification(focal_gamma=2.0)).loss(logits, targets)) == pytest.approx(by_hand, rel=1e-6)
    weighted = bound(Classification(focal_gamma=0.0, class_weights=[1.0, 2.0, 4.0]))
    expected = F.cross_entropy(logits, targets, weight=torch.tensor([1.0, 2.0, 4.0]))
    assert float(weighted.loss(logits, targets)) == pytest.approx(float(expected), rel=1e-6)


def test_multilabel_focal_loss_is_torchvisions_with_positive_weights():
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.8]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    task = bound(MultiLabel(focal_gamma=2.0, pos_weight={"b": 3.0}), 2, ["a", "b"])
    p = logits.sigmoid()
    p_t = torch.where(targets == 1, p, 1 - p)
    weight = torch.where(targets == 1, torch.tensor([1.0, 3.0]), torch.ones(2))
    by_hand = float((-weight * (1 - p_t) ** 2 * p_t.log()).mean())
    assert float(task.loss(logits, targets)) == pytest.approx(by_hand, rel=1e-6)
    plain = bound(MultiLabel(focal_gamma=0.0, pos_weight=[1.0, 3.0]), 2, ["a", "b"])
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor([1.0, 3.0]))
    assert float(plain.loss(logits, targets)) == pytest.approx(float(bce), rel=1e-6)


def test_per_class_precision_recall_f1_support_and_balanced_accuracy():
    task = bound(Classification())
    metrics = task.metrics("val")
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 0])  # owl never predicted
    task.update_metrics(metrics, F.one_hot(predicted, 3).float() * 5, targets)
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["precision/cat"] == pytest.approx(3 / 5) and values["recall/cat"] == pytest.approx(3 / 4)
    assert values["f1/cat"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert values["precision/dog"] == pytest.approx(1 / 2) and values["recall/dog"] == pytest.approx(1 / 2)
    assert values["recall/owl"] == 0.0 and values["f1/owl"] == 0.0
    assert [values[f"support/{n}"] for n in NAMES] == [4, 2, 1]
    assert values["balanced_acc"] == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    assert values["acc"] == pytest.approx(4 / 7)
    assert not any(k.startswith(("precision/", "support/")) for k in task.metrics("train"))


def test_bad_focal_and_precision_options_are_rejected():
    with pytest.raises(ValueError, match="focal_gamma must be >= 0, got -1"):
        Classification(focal_gamma=-1)
    with pytest.raises(ValueError, match=r"target_precision must be in \(0, 1\], got 1.5"):
        MultiLabel(target_precision=1.5)
    with pytest.raises(ValueError, match="must be positive and finite"):
        bound(Classification(class_weights=[1.0, 0.0, math.inf]))


@pytest.mark.slow
def test_a_bad_option_value_on_the_command_line_is_one_line(shapes_root):
    from tests.helpers import vitkit

    result = vitkit("fit", "--config", "quickstart", "--data.root", shapes_root,
                    "--model.task.init_args.focal_gamma", "-2", check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (
        result.stderr.strip().splitlines()[-1] == "vitkit: error: Classification: focal_gamma must be >= 0, got -2.0."
    ), result.stderr
