"""Backbone: a timm encoder without its classifier, returning pooled embeddings."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from vitkit.checkpoints import not_a_torch_file
from vitkit.errors import WeightsError

log = logging.getLogger(__name__)

#: Prefix of the backbone's tensors inside a vitkit (Lightning) checkpoint's ``state_dict``.
CHECKPOINT_PREFIX = "backbone.model."


class Backbone(nn.Module):
    """A timm model created with ``num_classes=0``, so ``forward`` returns pooled features ``(B, num_features)``.

    Args:
        model_name: any ``timm.create_model`` name, e.g. ``vit_base_patch16_224.augreg_in21k_ft_in1k``.
        pretrained: load timm's pretrained weights for ``model_name`` (from the Hugging Face hub or timm's cache).
        weights: a local weights file instead: safetensors or ``.pth``/``.pt``/``.bin`` in timm's layout, or a vitkit
            checkpoint (``.ckpt``) whose backbone is reused. Classifier tensors in the file are dropped.
        model_kwargs: extra ``timm.create_model`` arguments (``img_size``, ``patch_size``, ``depth``,
            ``drop_path_rate``, ``global_pool``, ``pretrained_cfg_overlay``, ...). ``None`` values are dropped.
        eval_crop: what evaluation, prediction and export feed the model: ``whole`` (default) resizes the whole
            image to the input size, as training's random crops at full scale see it; ``center`` keeps the timm
            pretrained config's resize + centre crop (``crop_pct``), which cuts the image edges (and changes a
            target such as the fraction of the image covered by something).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        weights: str | Path | None = None,
        model_kwargs: dict[str, Any] | None = None,
        eval_crop: Literal["whole", "center"] = "whole",
    ) -> None:
        super().__init__()
        if eval_crop not in ("whole", "center"):
            raise ValueError(f"Backbone: eval_crop must be 'whole' or 'center', got {eval_crop!r}.")
        self.eval_crop = eval_crop
        if pretrained and weights is not None:
            raise ValueError("Backbone: give either pretrained=True (hub weights) or weights=PATH, not both.")
        kwargs = {k: v for k, v in (model_kwargs or {}).items() if v is not None}
        kwargs.pop("num_classes", None)
        self.model_name = model_name
        self.model_kwargs = kwargs  # what changed the timm model (img_size, patch_size, depth, ...)
        import timm  # here, not at import time: `vitkit --help` and --print_config need no timm (~1 s with wandb)

        try:
            self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
        except RuntimeError as err:
            if "Unknown model" not in str(err):
                raise
            raise WeightsError(
                f'unknown timm model {model_name!r}: list the names with python -c "import timm; '
                f"print(timm.list_models('{model_name.split('_')[0]}*', pretrained=True))\"."
            ) from err
        except OSError as err:  # the hub: no network, offline without the file in the cache, a gated or missing repo
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise WeightsError(
                f"cannot get the pretrained weights of {model_name!r} from the Hugging Face hub ({reason}). Check the "
                "network (or HF_HUB_OFFLINE / HF_HUB_CACHE), or give a local file with "
                "--model.backbone.init_args.weights PATH and pretrained: false."
            ) from err
        if weights is not None:
            load_backbone_weights(self.model, weights)

    @property
    def num_features(self) -> int:
        """Width of the pooled embedding returned by ``forward``."""
        return self.model.num_features

    @property
    def data_config(self) -> dict[str, Any]:
        """timm data config (input_size, interpolation, mean, std, crop_pct, crop_mode) for this model."""
        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(self.model)
        # A ViT built with img_size=... keeps its pretrained cfg's input size; the patch embedding knows the truth
        # (a ViT with dynamic_img_size takes any size: its pretrained cfg's, unless img_size was given).
        img_size = getattr(getattr(self.model, "patch_embed", None), "img_size", None)
        dynamic = getattr(self.model, "dynamic_img_size", False)
        if img_size is not None and (not dynamic or "img_size" in self.model_kwargs):
            config["input_size"] = (config["input_size"][0], *tuple(img_size))
        if self.eval_crop == "whole":
            config["crop_pct"], config["crop_mode"] = 1.0, "squash"
        return config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled token / feature-map output of the encoder."""
        return self.model.forward_features(x)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors, torch (``weights_only``) or vitkit checkpoint file, without running code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    kind = not_a_torch_file(path)
    if path.suffix == ".safetensors" or kind == "a safetensors file":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if kind:
        raise WeightsError(f"{path} is {kind}, not weights: give a safetensors file, a torch state dict or a vitkit "
                           "checkpoint (.ckpt from `vitkit fit` or `vitkit pretrain`).")  # fmt: skip
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle refusing to run code, truncated files, non-torch files
        reason = " ".join(f"{type(err).__name__}: {err}".split())  # one line, also for pickle's multi-line errors
        raise WeightsError(
            f"cannot read weights from {path} ({reason[:300]}): give a safetensors file, a torch state dict or a "
            "vitkit checkpoint; vitkit loads .pth/.ckpt files with weights_only=True, so re-save trusted weights as "
            "safetensors or a plain state dict."
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
        if any(k.startswith(CHECKPOINT_PREFIX) for k in state):  # a vitkit checkpoint
            return {k[len(CHECKPOINT_PREFIX) :]: v for k, v in state.items() if k.startswith(CHECKPOINT_PREFIX)}
        obj = state
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # timm / DeiT training checkpoints
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def adapt_state_dict(state: dict[str, torch.Tensor], model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """Adapt another vitkit/timm model's encoder to ``model`` where timm can: image size (position embeddings
    resampled), patch size (patch embedding resampled, FlexiViT-style), and the final norm when the pooling differs
    (``norm`` before token pooling <-> ``fc_norm`` after average pooling: the same LayerNorm). One line per change."""
    expected = model.state_dict()
    changes = []
    if "pos_embed" in state and "pos_embed" in expected and state["pos_embed"].shape != expected["pos_embed"].shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 0)
        grids = [_grid(t.shape[1] - prefix) for t in (state["pos_embed"], expected["pos_embed"])]
        changes.append(f"position embedding resampled from a {grids[0]} to a {grids[1]} patch grid (image size)")
    key = "patch_embed.proj.weight"
    if key in state and key in expected and state[key].shape[-2:] != expected[key].shape[-2:]:
        sizes = ["x".join(map(str, t.shape[-2:])) for t in (state[key], expected[key])]
        changes.append(f"patch embedding resampled from {sizes[0]} to {sizes[1]} pixel patches (patch size)")
    # timm's own per-architecture filter does the resampling (and reads other layouts: DeiT, CLIP, ...).
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as err:  # an incompatible file; the key/shape listing of the caller explains it better
            log.debug("timm checkpoint_filter_fn failed on %s: %s", path, err)
            changes = []
    for source, target in (("norm", "fc_norm"), ("fc_norm", "norm")):
        moving = [k for k in state if k.startswith(f"{source}.") and k not in expected]
        if moving and all(f"{target}.{k[len(source) + 1 :]}" in expected for k in moving):
            for key in moving:
                state[f"{target}.{key[len(source) + 1 :]}"] = state.pop(key)
            changes.append(f"final norm '{source}' loaded as '{target}' (global_pool differs)")
    if changes:
        from lightning.pytorch.utilities import rank_zero_info

        for change in changes:
            rank_zero_info(f"vitkit: weights from {path}: {change}")
    return state


def _grid(tokens: int) -> str:
    side = round(tokens**0.5)
    return f"{side}x{side}" if side * side == tokens else f"{tokens}-token"


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load ``path`` into a timm ``model`` created with ``num_classes=0``; raise a listing of any mismatch."""
    state = adapt_state_dict(read_state_dict(path), model, path)
    expected = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier") or "head"
    classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    dropped = [k for k in state if k not in expected and any(k.startswith(f"{c}.") for c in classifiers)]
    if dropped:
        log.info("Dropping classifier tensors from %s: %s", path, ", ".join(dropped))
    state = {k: v for k, v in state.items() if k not in dropped}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"weights in {path} do not fit timm model '{type(model).__name__}':"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                parts.append(
                    f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else "")
                )
        parts.append("Check model_name and model_kwargs (img_size, patch_size, depth, ...) match the weights.")
        raise WeightsError("\n".join(parts))
    model.load_state_dict(state, strict=True)
    from lightning.pytorch.utilities import rank_zero_info

    left_out = f"; its classifier ({len(dropped)} tensors) left out" if dropped else ""
    rank_zero_info(f"vitkit: weights from {path}: all {len(state)} tensors of the encoder loaded{left_out}; the head "
                   "starts fresh")  # fmt: skip
