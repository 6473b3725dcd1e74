"""Where a ViT looks: attention rollout and last-layer CLS attention, drawn over the image.

timm's attention blocks call fused ``scaled_dot_product_attention``, which never materialises the attention
weights. :class:`AttentionRecorder` recomputes them from the queries and keys that each block already passes
through its ``q_norm`` / ``k_norm`` modules, read with forward hooks: timm is not modified or switched to its
slower path, and the model's outputs stay bit-identical.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from vitkit.data.images import load_image

Method = Literal["rollout", "cls"]


def timm_model_of(model: nn.Module) -> nn.Module:
    """The timm encoder inside a TransferModule, a Backbone, or a timm model itself."""
    backbone = getattr(model, "backbone", model)
    return getattr(backbone, "model", backbone)


class AttentionRecorder:
    """Context manager recording, for each attention block of a timm ViT, the softmax attention weights
    ``(B, heads, N, N)`` of the forward passes run inside it.

    Works with timm's ``Attention`` (ViT, DeiT, BEiT-style blocks with ``q_norm``/``k_norm``), including models
    with LoRA adapters on their linears.
    """

    def __init__(self, model: nn.Module) -> None:
        self.blocks = [m for m in timm_model_of(model).modules() if _is_timm_attention(m)]
        if not self.blocks:
            raise ValueError(
                f"{type(timm_model_of(model)).__name__} has no timm attention blocks (with q_norm/k_norm): attention "
                "maps need a ViT-style model."
            )
        self.attentions: list[torch.Tensor] = []
        self._handles: list[Any] = []
        self._queries: dict[int, torch.Tensor] = {}

    def __enter__(self) -> AttentionRecorder:
        for i, block in enumerate(self.blocks):
            self._handles.append(block.q_norm.register_forward_hook(self._keep_query(i)))
            self._handles.append(block.k_norm.register_forward_hook(self._attend(i, block)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _keep_query(self, i: int) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            self._queries[i] = output.detach()

        return hook

    def _attend(self, i: int, block: nn.Module) -> Any:
        def hook(module: nn.Module, args: Any, keys: torch.Tensor) -> None:
            queries = self._queries.pop(i).float()
            scores = queries @ keys.detach().float().transpose(-2, -1) * block.scale
            self.attentions.append(scores.softmax(dim=-1))

        return hook


def _is_timm_attention(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("q_norm", "k_norm", "num_heads", "scale"))


def attention_rollout(attentions: Sequence[torch.Tensor], head_fusion: Literal["mean", "max"] = "mean") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each output token draws on each input token through all
    layers, counting the residual path as half of each layer. ``(B, heads, N, N)`` per layer to ``(B, N, N)``."""
    result = None
    for attention in attentions:
        fused = attention.mean(dim=1) if head_fusion == "mean" else attention.amax(dim=1)
        eye = torch.eye(fused.shape[-1], device=fused.device, dtype=fused.dtype)
        fused = fused + eye
        fused = fused / fused.sum(dim=-1, keepdim=True)
        result = fused if result is None else fused @ result
    if result is None:
        raise ValueError("attention_rollout needs at least one layer's attention.")
    return result


def attention_maps(
    model: nn.Module,
    images: torch.Tensor,
    method: Method = "rollout",
    head_fusion: Literal["mean", "max"] = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on a batch of normalised ``images`` and return ``(outputs, maps)``.

    ``maps`` is ``(B, grid_h, grid_w)``: the share of attention each patch receives, summing to 1 per image.
    ``rollout`` follows attention through every layer; ``cls`` is the last layer's attention from the class token.
    Models without a class token use the average over all tokens.
    """
    if method not in ("rollout", "cls"):
        raise ValueError(f"attention method must be 'rollout' or 'cls', got {method!r}.")
    encoder = timm_model_of(model)
    with AttentionRecorder(model) as recorder, torch.no_grad():
        outputs = model(images)
    attentions = recorder.attentions
    if method == "rollout":
        joint = attention_rollout(attentions, head_fusion)
    else:
        last = attentions[-1]
        joint = last.mean(dim=1) if head_fusion == "mean" else last.amax(dim=1)
    prefix = int(getattr(encoder, "num_prefix_tokens", 1))
    source = joint[:, 0] if prefix > 0 else joint.mean(dim=1)
    patches = source[:, prefix:]
    grid = _grid(encoder, images.shape[-2:], patches.shape[-1])
    patches = patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return outputs, patches.reshape(-1, *grid)


def _grid(encoder: nn.Module, image_size: Sequence[int], num_patches: int) -> tuple[int, int]:
    patch = getattr(getattr(encoder, "patch_embed", None), "patch_size", None)
    if patch is not None:
        grid = (image_size[0] // patch[0], image_size[1] // patch[1])
        if grid[0] * grid[1] == num_patches:
            return grid
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"cannot lay {num_patches} patch tokens out on a grid for images of size {image_size}.")
    return side, side


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] to RGB uint8 with a jet-like map (blue: little attention, red: most)."""
    x = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue
    return (np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0) * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, min_size: int = 224) -> Image.Image:
    """Blend a patch-grid ``heat`` map (stretched to [0, 1]) over an RGB uint8 ``image``, upscaled so its short
    side is at least ``min_size`` pixels."""
    picture = Image.fromarray(image)
    scale = max(1, math.ceil(min_size / min(picture.size)))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.BICUBIC)
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    smooth = Image.fromarray(heat.astype(np.float32), mode="F").resize(picture.size, Image.Resampling.BILINEAR)
    colours = Image.fromarray(colormap(np.asarray(smooth)))
    return Image.blend(picture, colours, alpha)


def explain_images(
    model: nn.Module,
    paths: Sequence[Path],
    output: Path,
    method: Method = "rollout",
    head_fusion: Literal["mean", "max"] = "mean",
    alpha: float = 0.5,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> list[Path]:
    """Write a PNG for each image into ``output``: the attention map over the image as the model sees it
    (resized and cropped), captioned with the prediction. Files are named by the image's path below the images'
    common folder (``a/b.jpg`` gives ``a__b.png``; ``a__b.jpg.png`` when another image is ``a/b.png``). Return the
    written paths."""
    from timm.data import create_transform

    config = model.data_config
    transform = create_transform(**config, is_training=False)
    mean = torch.tensor(config["mean"]).view(3, 1, 1)
    std = torch.tensor(config["std"]).view(3, 1, 1)
    root = os.path.commonpath([p.absolute().parent for p in paths])
    relative = [Path(os.path.relpath(p.absolute(), root)) for p in paths]
    stems = ["__".join(r.with_suffix("").parts) for r in relative]
    unique = [stem if stems.count(stem) == 1 else "__".join(r.parts) for r, stem in zip(relative, stems, strict=True)]
    names = {path: f"{name}.png" for path, name in zip(paths, unique, strict=True)}
    model = model.eval().to(device)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = torch.stack([transform(load_image(p)) for p in chunk])
        outputs, maps = attention_maps(model, images.to(device), method, head_fusion)
        predictions = model.task.predict(outputs).cpu()
        for path, image, heat, prediction in zip(chunk, images, maps.cpu(), predictions, strict=True):
            pixels = ((image * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            picture = _captioned(overlay(pixels, heat.numpy(), alpha), model.task.describe(prediction, top_k=1))
            target = output / names[path]
            picture.save(target)
            written.append(target)
    return written


def _captioned(picture: Image.Image, described: dict[str, str]) -> Image.Image:
    """Add a strip under ``picture`` with the prediction (class and score, labels, or values)."""
    text = ", ".join(f"{k}: {v}" for k, v in described.items() if not k.startswith("top"))
    canvas = Image.new("RGB", (picture.width, picture.height + 18), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    ImageDraw.Draw(canvas).text((4, picture.height + 3), text[:80], fill=(0, 0, 0))
    return canvas
