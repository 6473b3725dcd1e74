"""Heads: built-in heads and the Head(in_features, out_features, **options) contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import TINY_VIT
from vitkit import Backbone, LinearHead, MLPHead, TransferModule


class TwoLayerHead(nn.Module):
    """A user head defined outside vitkit (also used from YAML in test_cli.py)."""

    def __init__(self, in_features: int, out_features: int, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.net = nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_norm_linear_head(in_features: int, out_features: int) -> nn.Module:
    """A head built by a plain function."""
    return nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, out_features))


def test_linear_head_is_dropout_then_linear():
    head = LinearHead(8, 3, dropout=0.2)
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear]
    assert head(torch.randn(4, 8)).shape == (4, 3)


def test_mlp_head_layers_follow_hidden_dims_norm_and_activation():
    head = MLPHead(8, 3, hidden_dims=[16, 4], dropout=0.1, activation="relu", norm="layernorm")
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 4), (4, 3)]
    assert sum(isinstance(m, nn.LayerNorm) for m in head) == 2
    assert sum(isinstance(m, nn.ReLU) for m in head) == 2
    assert head(torch.randn(5, 8)).shape == (5, 3)


def test_mlp_head_without_norm_or_hidden_layers():
    assert not any(isinstance(m, nn.LayerNorm) for m in MLPHead(8, 3, norm=None))
    assert [type(m) for m in MLPHead(8, 3, hidden_dims=[])] == [nn.Linear]


def test_mlp_head_rejects_unknown_activation_and_bad_dropout():
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        MLPHead(8, 3, activation="nope")
    with pytest.raises(ValueError, match="dropout must be in"):
        MLPHead(8, 3, dropout=1.5)


@pytest.mark.parametrize("factory", [TwoLayerHead, make_norm_linear_head, LinearHead])
def test_custom_head_from_python_gets_backbone_width_and_num_outputs(factory):
    model = TransferModule(Backbone(**TINY_VIT), num_outputs=5, head=factory)
    first = next(m for m in model.head.modules() if isinstance(m, nn.Linear))
    assert first.in_features == 192
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_head_options_bound_with_a_partial():
    from functools import partial

    model = TransferModule(Backbone(**TINY_VIT), num_outputs=2, head=partial(TwoLayerHead, width=7))
    assert model.head.width == 7


def _fit_head(head: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 400) -> float:
    """Train ``head`` on ``(x, y)`` with Adam; the R^2 it reaches on held-out draws of the same distribution."""
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(head(x[:512]), y[:512]).backward()
        optimizer.step()
    with torch.no_grad():
        residual = ((head(x[512:]) - y[512:]) ** 2).sum()
        return float(1 - residual / ((y[512:] - y[512:].mean()) ** 2).sum())


def test_default_mlp_head_learns_a_linear_regression_target_that_depends_on_feature_magnitude():
    # Features whose scale varies per image and a target linear in them: what a pooled ViT embedding and a
    # "fraction covered" target look like. A LayerNorm after the hidden layer (the old default) divides out each
    # sample's scale, so it cannot fit this target.
    torch.manual_seed(0)
    x = torch.randn(1024, 16) * torch.exp(torch.randn(1024, 1) * 1.5)  # scales over two orders of magnitude
    y = x @ torch.randn(16, 1)
    torch.manual_seed(0)
    assert _fit_head(MLPHead(16, 1, hidden_dims=[64]), x, y) > 0.85  # measured 0.93
    torch.manual_seed(0)
    assert _fit_head(MLPHead(16, 1, hidden_dims=[64], norm="layernorm"), x, y) < 0.7  # measured 0.45: it can't
