"""Fine-tuning strategies, layer-wise LR decay, Mixup/CutMix, EMA, LoRA and transfer between vitkit models."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from tests.conftest import TINY_VIT
from vitkit import Backbone, ClassFolderDataModule, Regression, TransferModule
from vitkit.augment import MixupCutmix
from vitkit.finetune import FineTuning, FreezeThenUnfreeze, LinearProbe, LoRA, merge_adapters

SGD = partial(torch.optim.SGD, lr=0.1, weight_decay=0.01)


def model(**kwargs) -> TransferModule:
    return TransferModule(Backbone(**TINY_VIT), num_outputs=4, optimizer=kwargs.pop("optimizer", SGD), **kwargs)


def trainer(tmp_path, epochs: int = 1, callbacks=()) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, callbacks=list(callbacks),
                     enable_checkpointing=False)  # fmt: skip


def data(root) -> ClassFolderDataModule:
    return ClassFolderDataModule(root, batch_size=16, num_workers=0)


class Probe(L.Callback):
    """Records, per epoch, what trains and what the optimizer holds."""

    def __init__(self):
        self.epochs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            optimizer = trainer.optimizers[0]
            self.epochs.append({
                "backbone_training": pl_module.backbone.training,
                "blocks_training": [b.training for b in pl_module.backbone.model.blocks],
                "trainable": {n for n, p in pl_module.named_parameters() if p.requires_grad},
                "in_optimizer": {id(p) for g in optimizer.param_groups for p in g["params"]},
                "group_lrs": [g["lr"] for g in optimizer.param_groups],
            })  # fmt: skip


def ids(module) -> set[int]:
    return {id(p) for p in module.parameters()}


def test_full_finetuning_trains_everything_without_decay_on_norms_biases_and_tokens():
    m = model()
    optimizer = m.configure_optimizers()
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == ids(m)
    names = {id(p): n for n, p in m.named_parameters()}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"backbone.model.pos_embed", "backbone.model.cls_token", "backbone.model.norm.weight",
            "backbone.model.blocks.0.attn.qkv.bias", "head.1.bias"} <= no_decay  # fmt: skip
    assert {"backbone.model.blocks.0.attn.qkv.weight", "head.1.weight"} <= decay
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups if g["weight_decay"] > 0)


def test_layer_wise_lr_decay_follows_depth():
    m = model(finetune=FineTuning(layer_decay=0.5))
    optimizer = m.configure_optimizers()
    lr_of = {n: g["lr"] for g in optimizer.param_groups for p in g["params"] for n, q in m.named_parameters()
             if q is p}  # fmt: skip
    assert lr_of["head.1.weight"] == pytest.approx(0.1)
    assert lr_of["backbone.model.norm.weight"] == pytest.approx(0.1)
    # timm's grouping: the last block shares the top LR with the final norm, each earlier one is decayed once more
    assert lr_of["backbone.model.blocks.1.mlp.fc1.weight"] == pytest.approx(0.1)
    assert lr_of["backbone.model.blocks.0.mlp.fc1.weight"] == pytest.approx(0.05)
    assert lr_of["backbone.model.patch_embed.proj.weight"] == pytest.approx(0.025)
    assert lr_of["backbone.model.pos_embed"] == pytest.approx(0.025)


def test_layer_decay_is_checked():
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\], got 1\.5"):
        FineTuning(layer_decay=1.5)


def test_linear_probe_trains_only_the_head_with_the_backbone_in_eval_mode(tmp_path, shapes_root):
    m = model(finetune=LinearProbe())
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    probe = Probe()
    trainer(tmp_path, 2, [probe]).fit(m, data(shapes_root))
    for epoch in probe.epochs:
        assert epoch["trainable"] == {"head.1.weight", "head.1.bias"}
        assert epoch["in_optimizer"] == ids(m.head)  # frozen parameters get no optimizer state
        assert epoch["backbone_training"] is False
    assert all(torch.equal(before[k], v) for k, v in m.backbone.state_dict().items())


def test_freeze_then_unfreeze_adds_the_backbone_at_a_lower_lr(tmp_path, shapes_root):
    m = model(finetune=FreezeThenUnfreeze(unfreeze_at_epoch=1, backbone_lr_factor=0.1))
    probe = Probe()
    trainer(tmp_path, 2, [probe]).fit(m, data(shapes_root))
    first, second = probe.epochs
    assert first["in_optimizer"] == ids(m.head) and not first["backbone_training"]
    assert second["in_optimizer"] == ids(m) and second["backbone_training"]
    assert first["group_lrs"][0] == pytest.approx(0.1)
    assert sorted(set(second["group_lrs"])) == pytest.approx([0.01, 0.1])


def test_gradual_unfreezing_goes_from_the_last_block_backwards(tmp_path, shapes_root):
    m = model(finetune=FreezeThenUnfreeze(unfreeze_at_epoch=1, blocks_per_epoch=1))
    probe = Probe()
    trainer(tmp_path, 3, [probe]).fit(m, data(shapes_root))
    backbone = [{n for n in e["trainable"] if n.startswith("backbone.")} for e in probe.epochs]
    assert backbone[0] == set()
    assert backbone[1] and all(n.startswith("backbone.model.blocks.1.") for n in backbone[1])
    assert backbone[2] == {n for n, _ in m.backbone.named_parameters(prefix="backbone")}
    assert [e["blocks_training"] for e in probe.epochs] == [[False, False], [False, True], [True, True]]
    assert probe.epochs[2]["in_optimizer"] == ids(m)


def test_unfrozen_groups_follow_the_lr_schedule(tmp_path, shapes_root):
    from vitkit import WarmupCosineLR

    m = model(finetune=FreezeThenUnfreeze(unfreeze_at_epoch=1), lr_scheduler=partial(WarmupCosineLR, warmup=0))
    probe = Probe()
    trainer(tmp_path, 3, [probe]).fit(m, data(shapes_root))
    head_lr, backbone_lr = probe.epochs[2]["group_lrs"][0], probe.epochs[2]["group_lrs"][-1]
    assert backbone_lr == pytest.approx(head_lr * 0.1)  # both decayed by the same cosine factor
    assert head_lr < 0.1


def test_mixup_cutmix_turns_targets_into_soft_probabilities():
    torch.manual_seed(0)
    images, targets = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    mixed, soft = MixupCutmix(mixup_alpha=1.0, cutmix_alpha=0.0)(images.clone(), targets, num_classes=4)
    assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
    assert (soft.max(1).values < 1).all()  # no row is a single class any more
    assert not torch.equal(mixed, images)


def test_training_with_mixup_uses_soft_targets(tmp_path, shapes_root):
    seen = []

    class Spy(TransferModule):
        def _shared_step(self, batch, stage):
            if stage == "train":
                seen.append(batch[1].ndim)
            return super()._shared_step(batch, stage)

    m = Spy(Backbone(**TINY_VIT), num_outputs=4, optimizer=SGD, batch_augment=MixupCutmix())
    trainer(tmp_path).fit(m, data(shapes_root))
    assert seen and set(seen) == {2}


def test_mixup_needs_classification():
    with pytest.raises(ValueError, match="needs the Classification task"):
        model(task=Regression(), batch_augment=MixupCutmix())


def test_ema_weights_differ_from_live_ones_and_are_used_at_validation(tmp_path, shapes_root):
    class Weights(L.Callback):
        def __init__(self):
            self.live, self.validated = None, None

        def on_train_batch_end(self, trainer, pl_module, *args):
            self.live = pl_module.head[1].weight.detach().clone()

        def on_validation_batch_start(self, trainer, pl_module, *args):
            if not trainer.sanity_checking:
                self.validated = pl_module.head[1].weight.detach().clone()

    spy = Weights()
    m = model()
    trainer(tmp_path, 2, [EMAWeightAveraging(decay=0.9), spy]).fit(m, data(shapes_root))
    assert not torch.allclose(spy.validated, spy.live)
    assert torch.allclose(m.head[1].weight, spy.validated)  # the model ends with the averaged weights


def test_lora_trains_only_adapters_and_merged_export_matches(tmp_path, shapes_root):
    pytest.importorskip("peft")
    m = model(finetune=LoRA(rank=4, alpha=8))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert any(".attn.qkv.lora_A" in n for n in trainable) and any(".mlp.fc2.lora_B" in n for n in trainable)
    probe = Probe()
    trainer(tmp_path, 1, [probe]).fit(m, data(shapes_root))
    assert probe.epochs[0]["in_optimizer"] == {id(p) for p in m.parameters() if p.requires_grad}
    m.eval()
    images = torch.randn(3, 3, 32, 32)
    adapted = m(images)
    merged = merge_adapters(m)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(merged(images), adapted, atol=1e-5)


def test_backbone_of_a_classifier_checkpoint_starts_a_regression_model(tmp_path, shapes_root):
    classifier = model()
    fit = trainer(tmp_path)
    fit.fit(classifier, data(shapes_root))
    fit.save_checkpoint(tmp_path / "classifier.ckpt")
    regressor = TransferModule(Backbone(**TINY_VIT, weights=tmp_path / "classifier.ckpt"), num_outputs=2,
                               task=Regression(), class_names=["w", "h"])  # fmt: skip
    for key, value in classifier.backbone.state_dict().items():
        assert torch.equal(regressor.backbone.state_dict()[key], value), key
    assert regressor.head[1].weight.shape == (2, 192)  # a fresh head of the new task's size
    fresh = TransferModule(Backbone(**TINY_VIT), num_outputs=2, task=Regression())
    assert not torch.equal(regressor.backbone.model.pos_embed, fresh.backbone.model.pos_embed)
