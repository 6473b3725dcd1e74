"""Pretraining methods at the Python level: masking, EMA teacher, checkpoint layout, loading into fit, distillation."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_VIT
from vitkit import (
    DINO,
    MAE,
    Backbone,
    Distillation,
    FineTuning,
    LinearProbe,
    LoRA,
    TransferModule,
    UnlabelledDataModule,
    WeightsError,
)
from vitkit.backbone import read_state_dict
from vitkit.pretrain import embedding_spread, knn_accuracy, save_encoder

#: A ViT twice as wide as TINY_VIT (384 features) at 48 px: a teacher whose features and inputs differ.
SMALL_VIT = {"model_name": "vit_small_patch16_224", "model_kwargs": {"img_size": 48, "patch_size": 8, "depth": 2}}


def tiny(**kwargs) -> Backbone:
    model_kwargs = {**TINY_VIT["model_kwargs"], **kwargs}
    return Backbone(TINY_VIT["model_name"], model_kwargs=model_kwargs)


def small_mae() -> MAE:
    return MAE(tiny(), decoder_dim=32, decoder_depth=1, decoder_heads=2)


def small_dino() -> DINO:
    return DINO(tiny(dynamic_img_size=True), output_dim=64, hidden_dim=32, bottleneck_dim=16, n_local_views=2)


def small_distillation() -> Distillation:
    return Distillation(tiny(), teacher=Backbone(**SMALL_VIT))


METHODS = {"mae": small_mae, "dino": small_dino, "distillation": small_distillation}


def test_mae_masks_mask_ratio_of_the_patches_and_keeps_the_class_token():
    mae = small_mae()  # 32 px / 8 px patches: 16 patches + 1 class token
    keep, mask = mae.random_masks(batch_size=3)
    assert mask.shape == (3, 12) and keep.shape == (3, 5)  # 0.75 of 16 patches masked
    assert (keep[:, 0] == 0).all() and not (mask == 0).any()  # the class token is always visible
    for k, m in zip(keep, mask, strict=True):
        assert sorted(k.tolist() + m.tolist()) == list(range(17))  # every token exactly once


def test_mae_loss_only_scores_the_masked_patches():
    """Replace the masked patches' pixels by the model's own predictions of them (which the encoder, seeing only
    the visible patches, does not change): the loss falls to 0, as it would not if visible patches counted."""
    from lightly.models.utils import patchify, unpatchify

    mae = small_mae().eval()
    images = torch.randn(2, 3, 32, 32)
    predicted = []
    mae.prediction_head.register_forward_hook(lambda module, args, out: predicted.append(out.detach()))
    torch.manual_seed(1)
    loss = mae.reconstruction_loss(images)
    loss.backward()
    assert loss.ndim == 0 and loss > 0.5  # MSE of random predictions of unit-variance pixels
    assert mae.backbone.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # the encoder learns from it
    torch.manual_seed(1)
    _, mask = mae.random_masks(batch_size=2)  # the same masks again
    patches = patchify(images, mae.patch_size)
    for i in range(2):
        patches[i, mask[i] - 1] = predicted[0][i]  # token index - 1 (the class token) is the patch index
    torch.manual_seed(1)
    with torch.no_grad():
        assert float(mae.reconstruction_loss(unpatchify(patches, mae.patch_size))) < 1e-10


def test_mae_refuses_a_backbone_that_is_not_a_vit_in_one_line():
    with pytest.raises(WeightsError) as err:
        MAE(Backbone("resnet18"))
    message = str(err.value)
    assert "\n" not in message and "VisionTransformer" in message and "ResNet" in message
    assert "vit_base_patch16_224" in message and "DINO" in message  # what works instead


def test_dino_teacher_starts_equal_and_moves_by_the_ema_rule():
    dino = small_dino()
    for name, param in dino.backbone.named_parameters():
        assert torch.equal(param, dict(dino.teacher_backbone.named_parameters())[name])
    assert not any(p.requires_grad for p in dino.teacher_backbone.parameters())
    assert not any(p.requires_grad for p in dino.teacher_head.parameters())
    before = dino.teacher_backbone.model.patch_embed.proj.weight.clone()
    with torch.no_grad():
        dino.backbone.model.patch_embed.proj.weight.add_(1.0)
    student = dino.backbone.model.patch_embed.proj.weight
    dino.update_teacher(momentum=0.9)
    assert torch.allclose(dino.teacher_backbone.model.patch_embed.proj.weight, 0.9 * before + 0.1 * student)
    dino.train()
    assert dino.backbone.training and not dino.teacher_backbone.training and not dino.teacher_head.training


def test_dino_local_crops_are_smaller_for_a_dynamic_vit_and_full_size_otherwise():
    config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    image = Image.new("RGB", (40, 40))  # as the data module gives it (lightly's solarization is PIL-only)
    views = small_dino().train_transform(config)(image)
    assert [tuple(v.shape[1:]) for v in views] == [(32, 32)] * 2 + [(16, 16)] * 2  # 2 global, 2 local (96/224)
    fixed = DINO(tiny(), output_dim=64, hidden_dim=32, bottleneck_dim=16, n_local_views=1)
    assert [tuple(v.shape[1:]) for v in fixed.train_transform(config)(image)] == [(32, 32)] * 3


@pytest.mark.parametrize("method", sorted(METHODS))
def test_checkpoint_holds_the_encoder_once_under_backbone_model(method):
    module = METHODS[method]()
    keys = list(module.state_dict())
    encoder = {f"backbone.model.{k}" for k in tiny().model.state_dict()}
    assert {k for k in keys if k.startswith("backbone.model.")} == encoder
    assert len(keys) == len(set(keys))
    others = {k.split(".")[0] for k in keys if not k.startswith("backbone.")}
    assert others == {"mae": {"decoder", "decoder_embed", "prediction_head"},
                      "dino": {"head", "teacher_backbone", "teacher_head", "criterion"},
                      "distillation": {"teacher", "projection"}}[method]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, MAE]:
    """A checkpoint of a few MAE steps on random images, saved by a Lightning Trainer."""
    L.seed_everything(0)
    mae = small_mae()
    folder = tmp_path_factory.mktemp("mae")
    images = torch.randn(8, 3, 32, 32)
    loader = torch.utils.data.DataLoader([([img], 0) for img in images], batch_size=4)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=folder)  # fmt: skip
    trainer.fit(mae, loader)
    path = folder / "pretrain.ckpt"
    trainer.save_checkpoint(path)
    return path, mae


@pytest.mark.parametrize(
    "strategy",
    [FineTuning(), FineTuning(layer_decay=0.75), LinearProbe(), LoRA(rank=2)],
    ids=["full", "layer_decay", "linear_probe", "lora"],
)
def test_pretrain_checkpoint_starts_fit_with_its_encoder_and_a_fresh_head(pretrained, strategy):
    path, mae = pretrained
    state = read_state_dict(path)
    assert set(state) == set(mae.backbone.model.state_dict())  # decoder tensors are not part of the encoder
    model = TransferModule(Backbone(**TINY_VIT, weights=path), num_outputs=3, finetune=strategy).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # LoRA's adapters start at zero: the same features for every strategy
        assert torch.allclose(model.backbone(images), mae.backbone.eval()(images), atol=1e-5)
    assert all(not k.startswith("head.") for k in torch.load(path, weights_only=True)["state_dict"])


def test_encoder_safetensors_loads_into_a_backbone(tmp_path):
    backbone = tiny()
    path = save_encoder(backbone, tmp_path / "encoder.safetensors")
    loaded = Backbone(**TINY_VIT, weights=path).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), backbone.eval()(images))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata()["model_name"] == TINY_VIT["model_name"]


def test_distillation_projects_to_a_wider_teacher_and_converts_its_input():
    module = small_distillation()
    assert isinstance(module.projection, torch.nn.Linear)
    assert (module.projection.in_features, module.projection.out_features) == (192, 384)
    assert module.teacher_input(torch.randn(2, 3, 32, 32)).shape == (2, 3, 48, 48)
    same = Distillation(tiny(), teacher=tiny())
    assert isinstance(same.projection, torch.nn.Identity)


def test_distillation_student_matches_the_teacher_better_after_training(tmp_path):
    L.seed_everything(0)
    module = Distillation(tiny(), teacher=Backbone(**SMALL_VIT),
                          optimizer=partial(torch.optim.AdamW, lr=3e-3))  # fmt: skip
    images = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        before = module.distillation_loss(images)
    loader = torch.utils.data.DataLoader([(img, 0) for img in images], batch_size=8)
    trainer = L.Trainer(max_epochs=10, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, loader)
    with torch.no_grad():
        after = module.distillation_loss(images)
    assert after < 0.5 * before


def test_knn_accuracy_separates_clusters_and_not_noise():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(10)
    centres = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    clustered = torch.nn.functional.normalize(centres[labels] + 0.05 * torch.randn(40, 16), dim=1)
    assert knn_accuracy(clustered, labels, k=5) == 1.0
    noise = torch.nn.functional.normalize(torch.randn(40, 16), dim=1)
    assert knn_accuracy(noise, labels, k=5) < 0.6


def test_knn_accuracy_does_not_depend_on_the_order_the_images_come_in():
    torch.manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
    labels = torch.randint(0, 3, (40,))
    shuffled = torch.randperm(40)  # e.g. gathered from several processes
    assert knn_accuracy(features, labels, k=5) == knn_accuracy(features[shuffled], labels[shuffled], k=5)


@pytest.mark.parametrize("method", ["mae", "dino"])
def test_knn_accuracy_is_well_above_chance_after_a_short_run_and_dino_does_not_collapse(tmp_path, shapes_root, method):
    """The k-NN monitor (``knn_root``) on shapes with a colour cue: 4 classes, chance 0.25."""
    L.seed_everything(0)
    data = UnlabelledDataModule(shapes_root, knn_root=shapes_root, batch_size=16, num_workers=0)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(METHODS[method](), data)
    assert 0.45 <= trainer.callback_metrics["val/knn_acc"] <= 1.0
    assert (tmp_path / "checkpoints" / "encoder.safetensors").is_file()
    assert not [w for w in caught if "collapsed" in str(w.message)]
    if method == "dino":
        assert trainer.callback_metrics["train/embedding_spread"] > 0.1


def test_embedding_spread_is_about_one_for_spread_out_embeddings_and_zero_for_collapsed_ones():
    torch.manual_seed(0)
    assert 0.9 < embedding_spread(torch.randn(256, 64)) < 1.1
    assert embedding_spread(torch.randn(1, 64) + 1e-4 * torch.randn(256, 64)) < 0.01


def test_a_collapsed_dino_is_warned_about_once_in_one_line(tmp_path, shapes_root):
    L.seed_everything(0)
    dino = DINO(tiny(dynamic_img_size=True), output_dim=64, hidden_dim=32, bottleneck_dim=16, n_local_views=0,
                optimizer=partial(torch.optim.SGD, lr=0.0))  # fmt: skip
    with torch.no_grad():  # the encoder's last norm gives every image the same embedding: collapsed, and stays so
        dino.backbone.model.norm.weight.zero_()
        dino.backbone.model.norm.bias.normal_()
    data = UnlabelledDataModule(shapes_root, knn_root=shapes_root, batch_size=16, num_workers=0)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(dino, data)
    collapsed = [str(w.message) for w in caught if "collapsed" in str(w.message)]
    assert len(collapsed) == 1 and "\n" not in collapsed[0], collapsed
    assert collapsed[0].startswith("DINO has collapsed at epoch 0") and "train/embedding_spread 0.000" in collapsed[0]
    assert trainer.callback_metrics["val/knn_acc"] <= 0.35  # identical embeddings: neighbours by chance
