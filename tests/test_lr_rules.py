"""The LR finder's rules (vitkit.tune): where the suggestion lies, and parameter groups keeping their LR ratios."""

from __future__ import annotations

import math

import pytest
import torch

from vitkit.lr_find import _keep_group_scales, smoothed, valley


def test_valley_suggests_inside_the_long_fall_of_the_loss():
    lrs = [10 ** (-6 + 5 * i / 99) for i in range(100)]  # 1e-6 .. 1e-1
    # Flat, a steep fall around 1e-3, flat, then divergence.
    losses = [2.0 - 1.5 / (1 + math.exp(-8 * (math.log10(lr) + 3))) + (50 * lr if lr > 0.02 else 0) for lr in lrs]
    assert 1e-4 < valley(lrs, losses) < 2e-3
    assert valley(lrs[:2], losses[:2]) is None  # too few points


def test_valley_ignores_the_noise_of_the_first_steps():
    # The shape of a real range test on small data (benchmarks/RESULTS.md, "quality"): the first steps' smoothed
    # loss jumps around (few samples in the running average), then the loss falls steadily from 1e-5 to 1e-3 and
    # diverges after 3e-3. A slope rule picked the sharpest early wiggle (5.9e-07, which trains to chance).
    generator = torch.Generator().manual_seed(0)
    lrs = [10 ** (-7 + 7 * i / 99) for i in range(100)]  # 1e-7 .. 1
    noise = torch.randn(100, generator=generator) * torch.tensor([0.25 if i < 12 else 0.01 for i in range(100)])
    losses = [1.61 - 0.5 * min(max((math.log10(lr) + 5) / 2.5, 0), 1) + (20 * lr if lr > 3e-3 else 0) + float(n)
              for lr, n in zip(lrs, noise, strict=True)]  # fmt: skip
    assert 1e-5 < valley(lrs, losses) < 3e-3


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
