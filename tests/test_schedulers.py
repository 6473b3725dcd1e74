"""WarmupCosineLR: linear warm-up then cosine decay, per step."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vitkit import WarmupCosineLR


def lrs(steps: int, **kwargs) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosineLR(optimizer, total_steps=steps, **kwargs)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_warmup_rises_linearly_then_cosine_decays_to_min():
    values = lrs(100, warmup=10, warmup_start_factor=0.0, min_lr_factor=0.1)
    assert values[0] == 0.0 and values[5] == pytest.approx(0.5) and values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert values[-1] == pytest.approx(0.1, abs=1e-3)


def test_fractional_warmup():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert WarmupCosineLR(optimizer, warmup=0.1, total_steps=200).warmup_steps == 20


def test_total_steps_is_required():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        WarmupCosineLR(optimizer)
