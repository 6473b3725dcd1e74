"""TransferModule: optimizer/scheduler injection and what checkpoints carry."""

from __future__ import annotations

import shutil
from functools import partial

import lightning as L
import pytest
import torch

from tests.conftest import TINY_VIT
from vitkit import Backbone, ClassFolderDataModule, DataError, MLPHead, TransferModule, WarmupCosineLR


def fit(model: TransferModule, root, tmp_path, **trainer_kwargs) -> L.Trainer:
    data = ClassFolderDataModule(root, batch_size=16, num_workers=0)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(model, data)
    return trainer


def test_scheduler_gets_total_steps_from_the_trainer(shapes_root, tmp_path):
    model = TransferModule(Backbone(**TINY_VIT), num_outputs=4, lr_scheduler=partial(WarmupCosineLR, warmup=2))
    trainer = fit(model, shapes_root, tmp_path)
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    assert scheduler.scheduler.total_steps == trainer.estimated_stepping_batches == 5  # 77 train images / 16


def test_optimizer_callable_gets_only_trainable_parameters(shapes_root, tmp_path):
    backbone = Backbone(**TINY_VIT)
    backbone.requires_grad_(False)
    model = TransferModule(backbone, num_outputs=4, optimizer=partial(torch.optim.SGD, lr=0.1))
    trainer = fit(model, shapes_root, tmp_path)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.head.parameters()}


def test_checkpoint_from_python_loads_weights_only_with_class_names(shapes_root, tmp_path):
    model = TransferModule(
        Backbone(**TINY_VIT), num_outputs=4, head=MLPHead, class_names=["circle", "cross", "square", "triangle"]
    )
    trainer = fit(model, shapes_root, tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # no pickled modules or functions inside
    assert checkpoint["hyper_parameters"]["class_names"] == ["circle", "cross", "square", "triangle"]
    assert "backbone" not in checkpoint["hyper_parameters"]
    reloaded = TransferModule.load_from_checkpoint(path, backbone=Backbone(**TINY_VIT), head=MLPHead)
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    reloaded.eval()
    assert torch.equal(model(images), reloaded(images))


def test_loading_a_checkpoint_with_other_classes_is_refused(shapes_root, tmp_path):
    names = ["circle", "cross", "square", "triangle"]
    model = TransferModule(Backbone(**TINY_VIT), num_outputs=4, class_names=names)
    trainer = fit(model, shapes_root, tmp_path)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    renamed = tmp_path / "renamed"
    shutil.copytree(shapes_root, renamed)
    (renamed / "triangle").rename(renamed / "x")
    other = TransferModule(Backbone(**TINY_VIT), num_outputs=4, class_names=["circle", "cross", "square", "x"])
    with pytest.raises(DataError, match=r"differ from the checkpoint's \['circle', 'cross', 'square', 'triangle'\]"):
        L.Trainer(logger=False, enable_progress_bar=False).validate(
            other, ClassFolderDataModule(renamed, num_workers=0), ckpt_path=tmp_path / "m.ckpt"
        )


def test_data_with_other_classes_than_the_model_is_refused(shapes_root, tmp_path):
    model = TransferModule(Backbone(**TINY_VIT), num_outputs=4, class_names=["a", "b", "c", "d"])
    with pytest.raises(DataError, match=r"the data's classes \['circle', 'cross', 'square', 'triangle'\] differ"):
        fit(model, shapes_root, tmp_path)


def test_class_names_must_match_num_outputs():
    with pytest.raises(ValueError, match="2 class_names for num_outputs=3"):
        TransferModule(Backbone(**TINY_VIT), num_outputs=3, class_names=["a", "b"])


@pytest.mark.slow
def test_compiled_backbone_trains_with_unchanged_checkpoint_keys(shapes_root, tmp_path):
    model = TransferModule(Backbone(**TINY_VIT), num_outputs=4, compile=True)
    keys = set(model.state_dict())
    trainer = fit(model, shapes_root, tmp_path)
    assert model.backbone.model._compiled_call_impl is not None  # nn.Module.compile() ran
    assert set(model.state_dict()) == keys  # no `_orig_mod.` prefixes: checkpoints stay loadable without compile
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])


def test_bf16_mixed_runs_the_encoder_in_bfloat16_with_float32_weights(shapes_root, tmp_path):
    model = TransferModule(Backbone(**TINY_VIT), num_outputs=4)
    dtypes: set[torch.dtype] = set()
    model.backbone.model.blocks[0].attn.qkv.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))
    fit(model, shapes_root, tmp_path, precision="bf16-mixed")
    assert dtypes == {torch.bfloat16}  # autocast really ran (training and validation)
    assert model.backbone.model.blocks[0].attn.qkv.weight.dtype == torch.float32


def test_python_built_models_keep_no_live_objects_in_their_hyperparameters():
    model = TransferModule(Backbone(**TINY_VIT), num_outputs=4, head=MLPHead)
    hparams = model.hparams_initial
    assert not {"backbone", "head", "optimizer"} & set(hparams)  # a module, a class, a function: not config data
    assert hparams["num_outputs"] == 4 and all(v is None or isinstance(v, (int, str, bool)) for v in hparams.values())
