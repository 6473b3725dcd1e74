"""Attention maps: recorded weights equal timm's own, rollout math, and a trained ViT attends to what decides."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_VIT
from tests.helpers import vitkit
from vitkit import Backbone, ClassFolderDataModule, TransferModule
from vitkit.data.images import load_image
from vitkit.explain import AttentionRecorder, attention_maps, attention_rollout, overlay


def tiny_vit(**kwargs) -> Backbone:
    torch.manual_seed(0)
    return Backbone(TINY_VIT["model_name"], model_kwargs={**TINY_VIT["model_kwargs"], **kwargs}).eval()


def test_recorded_attention_equals_timms_unfused_attention():
    backbone, images = tiny_vit(), torch.randn(2, 3, 32, 32)
    with AttentionRecorder(backbone) as recorder, torch.no_grad():
        fused_out = backbone(images)
    # timm's non-fused path materialises softmax(q k^T) and passes it through attn_drop: read it there
    reference = []
    for block in backbone.model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, a, out: reference.append(out))
    with torch.no_grad():
        plain_out = backbone(images)
    assert len(recorder.attentions) == len(reference) == 2
    for recorded, expected in zip(recorder.attentions, reference, strict=True):
        assert recorded.shape == (2, 3, 17, 17)  # batch, heads, cls + 4x4 patches
        torch.testing.assert_close(recorded, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused_out, plain_out, atol=1e-5, rtol=1e-4)


def test_recording_leaves_outputs_unchanged_and_removes_its_hooks():
    backbone, images = tiny_vit(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = backbone(images)
        with AttentionRecorder(backbone):
            during = backbone(images)
        after = backbone(images)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert all(not block.attn.q_norm._forward_hooks for block in backbone.model.blocks)


def test_rollout_adds_the_residual_path_and_chains_layers():
    first = torch.softmax(torch.randn(1, 2, 5, 5), dim=-1)
    second = torch.softmax(torch.randn(1, 2, 5, 5), dim=-1)
    mixed = [(a.mean(dim=1) + torch.eye(5)) / 2 for a in (first, second)]
    torch.testing.assert_close(attention_rollout([first]), mixed[0])
    torch.testing.assert_close(attention_rollout([first, second]), mixed[1] @ mixed[0])
    assert torch.allclose(attention_rollout([first, second]).sum(-1), torch.ones(1, 5))


def test_maps_are_patch_grids_that_sum_to_one():
    backbone = tiny_vit(img_size=48)
    for method in ("rollout", "cls"):
        outputs, maps = attention_maps(backbone, torch.randn(3, 3, 48, 48), method)
        assert outputs.shape == (3, 192) and maps.shape == (3, 6, 6)
        assert torch.allclose(maps.sum(dim=(1, 2)), torch.ones(3)) and (maps >= 0).all()
    with pytest.raises(ValueError, match="rollout"):
        attention_maps(backbone, torch.randn(1, 3, 48, 48), "gradcam")


def test_overlay_is_the_upscaled_image_blended_with_the_map():
    image = np.full((32, 32, 3), 128, np.uint8)
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    picture = np.asarray(overlay(image, heat, alpha=0.5))
    assert picture.shape == (224, 224, 3)
    assert picture[10, 10, 0] > picture[10, 10, 2]  # hot corner: red
    assert picture[200, 200, 2] > picture[200, 200, 0]  # cold elsewhere: blue


SIZE, OBJECT = 48, 10


def make_object_folder(root: Path, per_class: int = 40, seed: int = 0) -> dict[Path, tuple[int, int]]:
    """Grey-noise images with one small square whose colour is the class; returns each image's square corner."""
    rng = np.random.default_rng(seed)
    corners = {}
    for name, colour in (("blue", (40, 60, 220)), ("red", (220, 40, 40))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(90, 166, (SIZE, SIZE, 1), dtype=np.uint8).repeat(3, axis=2)
            x, y = (int(v) for v in rng.integers(0, SIZE - OBJECT, 2))
            pixels[y : y + OBJECT, x : x + OBJECT] = colour
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
            corners[root / name / f"{i:03d}.png"] = (x, y)
    return corners


def mass_on_object(model: TransferModule, data: ClassFolderDataModule, corners: dict, method: str) -> float:
    """Mean share of attention on the patches the deciding square covers (weighted by how much it covers them)."""
    from timm.data import create_transform

    transform = create_transform(**model.data_config, is_training=False)
    paths = [path for path, _ in data.splits["val"]]
    _, maps = attention_maps(model.eval(), torch.stack([transform(load_image(p)) for p in paths]), method)
    masses = []
    for path, heat in zip(paths, maps, strict=True):
        x, y = corners[path]
        mask = np.zeros((SIZE, SIZE))
        mask[y : y + OBJECT, x : x + OBJECT] = 1.0
        cover = mask.reshape(6, 8, 6, 8).mean(axis=(1, 3))  # 8 px patches
        masses.append(float((heat.numpy() * cover).sum()))
    return float(np.mean(masses))


def test_a_trained_vit_attends_to_the_object_that_decides_the_class(tmp_path):
    corners = make_object_folder(tmp_path)
    area_share = OBJECT * OBJECT / (SIZE * SIZE)
    data = ClassFolderDataModule(tmp_path, batch_size=16, num_workers=0, val_fraction=0.25)
    model = TransferModule(tiny_vit(img_size=SIZE), num_outputs=2, class_names=["blue", "red"],
                           optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))  # fmt: skip
    untrained = {m: mass_on_object(model, data, corners, m) for m in ("rollout", "cls")}
    model.train()
    L.seed_everything(0)
    trainer = L.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model, data)
    trained = {m: mass_on_object(model, data, corners, m) for m in ("rollout", "cls")}
    assert untrained["rollout"] < 1.5 * area_share  # before training, attention is spread evenly
    assert trained["rollout"] > 2 * area_share, (trained, area_share)
    assert trained["cls"] > area_share, (trained, area_share)


@pytest.mark.slow
def test_explain_command_writes_one_overlay_per_image(trained_checkpoint, shapes_root, tmp_path):
    images = tmp_path / "images"
    (images / "nested").mkdir(parents=True)
    for i, source in enumerate(sorted((shapes_root / "circle").iterdir())[:3]):
        (images / ("nested" if i else "") / source.name).write_bytes(source.read_bytes())
    result = vitkit("explain", "--ckpt_path", trained_checkpoint, "--images", images, "--method", "cls",
                    "--output", tmp_path / "maps")  # fmt: skip
    written = sorted(p.relative_to(tmp_path / "maps") for p in (tmp_path / "maps").iterdir())
    expected = sorted(Path(("nested__" if i else "") + Path(s).stem + ".png") for i, s in
                      enumerate(sorted(p.name for p in (shapes_root / "circle").iterdir())[:3]))  # fmt: skip
    assert written == expected, result.stdout
    with Image.open(tmp_path / "maps" / written[0]) as picture:
        assert picture.size == (224, 224 + 18)  # 32 px upscaled to 224, plus the caption strip
