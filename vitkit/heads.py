"""Heads map pooled backbone features to task outputs. Contract: ``Head(in_features, out_features, **options)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

#: What the model accepts as ``head``: a class or function called as ``head(in_features, out_features)``.
HeadFactory = Callable[[int, int], nn.Module]


class LinearHead(nn.Sequential):
    """Dropout then one linear layer: the classic linear probe / fine-tuning head."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Dropout(dropout), nn.Linear(in_features, out_features))


class MLPHead(nn.Sequential):
    """``[Linear -> norm -> activation -> dropout] * len(hidden_dims)`` then a linear output layer.

    Args:
        hidden_dims: width of each hidden layer; ``[]`` gives a linear head.
        dropout: dropout after each hidden layer (and before the output layer).
        activation: a timm activation name (``gelu``, ``relu``, ``silu``, ...).
        norm: a timm norm-layer name (``layernorm``, ``batchnorm1d``, ...) after each hidden layer, or ``None``
            (default). A LayerNorm rescales every sample's hidden vector to unit variance, which throws away the
            magnitude a regression target lives in (benchmarks/RESULTS.md, "quality": R^2 0.13 with it on real
            photographs, as good as a linear head without it).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
        activation: str = "gelu",
        norm: str | None = None,
    ) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLPHead: dropout must be in [0, 1), got {dropout}.")
        from timm.layers import get_act_layer, get_norm_layer  # lazily: see vitkit.backbone

        try:
            act_layer = get_act_layer(activation)
        except KeyError:
            act_layer = None
        if act_layer is None:
            raise ValueError(f"MLPHead: unknown activation {activation!r}; use a timm name such as 'gelu' or 'relu'.")
        norm_layer = get_norm_layer(norm) if norm else None
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_dims:
            layers.append(nn.Linear(width, hidden))
            if norm_layer is not None:
                layers.append(norm_layer(hidden))
            layers += [act_layer(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
