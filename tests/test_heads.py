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
