"""The LR finder's rules (vitkit.tune): where the suggestion lies, and parameter groups keeping their LR ratios."""

from __future__ import annotations

import math

import pytest
import torch

from vitkit.lr_find import _keep_group_scales, smoothed, steepest_descent


def test_suggestion_is_where_the_loss_falls_fastest_per_decade():
    lrs = [10 ** (-6 + 5 * i / 99) for i in range(100)]  # 1e-6 .. 1e-1
    # Flat, a steep fall around 1e-3, flat, then divergence.
    losses = [2.0 - 1.5 / (1 + math.exp(-8 * (math.log10(lr) + 3))) + (50 * lr if lr > 0.02 else 0) for lr in lrs]
    suggestion = steepest_descent(lrs, losses)
    assert 5e-4 < suggestion < 2e-3
    assert steepest_descent(lrs[:12], losses[:12]) is None  # too few points after the skipped start


def test_groups_keep_their_lr_scale_while_the_finder_sets_one_lr_for_all():
    weights = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [weights[0]]}, {"params": [weights[1]], "lr_scale": 0.25}], lr=1.0)
    hooks = _keep_group_scales(optimizer)
    for group in optimizer.param_groups:  # what Lightning's finder does at each step: one LR for every group
        group["lr"] = 0.1
    for weight in weights:
        weight.grad = torch.ones(1)
    optimizer.step()
    assert math.isclose(weights[0].item(), -0.1, rel_tol=1e-6) and math.isclose(
        weights[1].item(), -0.025, rel_tol=1e-6
    )  # the layer-decay ratio held
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.1]  # and the finder sees its own LR again
    for hook in hooks:
        hook.remove()


def test_smoothed_loss_is_the_bias_corrected_running_average_from_the_first_step():
    assert smoothed([2.0, 2.0, float("nan"), 2.0]) == pytest.approx([2.0, 2.0, math.nan, 2.0], nan_ok=True)
    assert smoothed([1.0, 3.0], beta=0.5) == pytest.approx([1.0, (0.25 + 1.5) / 0.75])
