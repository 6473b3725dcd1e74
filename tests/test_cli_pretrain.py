"""`vitkit pretrain` end to end: each method lowers its loss, resume, loading into `vitkit fit`, bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.helpers import fit_quickstart, vitkit
from vitkit import Backbone, UnlabelledDataModule
from vitkit.backbone import read_state_dict
from vitkit.data.images import ImageDataset
from vitkit.pretrain import knn_accuracy, save_encoder
from vitkit.synthetic import make_shapes_folder

pytestmark = pytest.mark.slow

#: The pretrain recipe shrunk like the fit tests' ViT (2 blocks of 8x8 patches), a CSV logger, data in-process.
TINY = ["--model.init_args.backbone.init_args.model_kwargs", '{"img_size": 32, "patch_size": 8, "depth": 2}',
        "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "16"]  # fmt: skip
#: Per method: the recipe section that selects it, sized for a few CPU steps.
METHODS = {
    "mae": ["--model.init_args.decoder_dim", "32", "--model.init_args.decoder_depth", "1",
            "--model.init_args.decoder_heads", "2", "--model.init_args.optimizer.init_args.lr", "3e-3"],
    "dino": ["--model", "vitkit.DINO", "--model.output_dim", "256", "--model.hidden_dim", "64",
             "--model.bottleneck_dim", "32", "--model.n_local_views", "0", "--model.teacher_momentum", "0.9"],
    "distillation": ["--model", "vitkit.Distillation", "--model.teacher", "vitkit.Backbone",
                     "--model.teacher.model_name", "vit_small_patch16_224", "--model.teacher.weights", "TEACHER",
                     "--model.teacher.model_kwargs", '{"img_size": 48, "patch_size": 8, "depth": 2}'],
}  # fmt: skip


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    """48 images of shapes in one flat folder: no labels, no class folders."""
    return make_shapes_folder(tmp_path_factory.mktemp("unlabelled"), per_class=12, seed=3, flat=True)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A timm-layout safetensors file of a ViT wider (384 features) and larger (48 px) than the student."""
    torch.manual_seed(0)
    backbone = Backbone("vit_small_patch16_224", model_kwargs={"img_size": 48, "patch_size": 8, "depth": 2})
    return save_encoder(backbone, tmp_path_factory.mktemp("teacher") / "teacher.safetensors")


def pretrain(run: Path, data: Path, *extra: object, check: bool = True):
    return vitkit("pretrain", "--config", "recipes/pretrain.yaml", *TINY, "--data.root", data,
                  "--trainer.default_root_dir", run, "--checkpoint.dirpath", run / "checkpoints",
                  "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", run,
                  *extra, check=check)  # fmt: skip


def epoch_losses(run: Path) -> list[float]:
    with open(next(run.glob("*/version_*/metrics.csv"))) as f:
        return [float(r["train/loss_epoch"]) for r in csv.DictReader(f) if r.get("train/loss_epoch")]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_lowers_its_loss_and_exports_the_encoder(tmp_path, unlabelled, teacher, method):
    args = [str(teacher) if a == "TEACHER" else a for a in METHODS[method]]
    pretrain(tmp_path, unlabelled, *args, "--trainer.max_epochs", "4")
    losses = epoch_losses(tmp_path)
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["backbone"]["init_args"]["model_name"] == "vit_tiny_patch16_224"
    encoder = read_state_dict(tmp_path / "checkpoints" / "encoder.safetensors")
    for key, value in read_state_dict(tmp_path / "checkpoints" / "last.ckpt").items():
        assert torch.equal(encoder[key], value), key


def test_resume_continues_the_step_count(tmp_path, unlabelled):
    pretrain(tmp_path, unlabelled, "--trainer.max_epochs", "1")
    first = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert (first["epoch"], first["global_step"]) == (0, 3)  # 48 images in batches of 16
    pretrain(tmp_path, unlabelled, "--trainer.max_epochs", "2", "--ckpt_path", tmp_path / "checkpoints" / "last.ckpt")
    second = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert (second["epoch"], second["global_step"]) == (1, 6)


def test_knn_monitor_and_fit_from_the_pretrain_checkpoint(tmp_path, unlabelled, shapes_root):
    pretrain(tmp_path / "pre", unlabelled, "--trainer.max_epochs", "1", "--data.knn_root", shapes_root)
    with open(next((tmp_path / "pre").glob("*/version_*/metrics.csv"))) as f:
        assert any(r.get("val/knn_acc") for r in csv.DictReader(f))
    weights = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    fit_quickstart(shapes_root, tmp_path / "fit", "--trainer.max_epochs", "1", "--trainer.logger", "false",
                   "--checkpoint.dirpath", tmp_path / "fit", "--model.backbone.init_args.weights", weights,
                   "--model.finetune", "vitkit.LinearProbe")  # fmt: skip
    fitted = torch.load(tmp_path / "fit" / "last.ckpt", weights_only=True)["state_dict"]
    pretrained = torch.load(weights, weights_only=True)["state_dict"]
    encoder = [k for k in fitted if k.startswith("backbone.model.")]
    assert encoder and all(torch.equal(fitted[k], pretrained[k]) for k in encoder)  # frozen: still the pretrained
    assert any(k.startswith("head.") for k in fitted) and not any(k.startswith("head.") for k in pretrained)


def test_ddp_knn_monitor_scores_every_labelled_image_once(tmp_path, unlabelled):
    knn_root = make_shapes_folder(tmp_path / "knn", per_class=9, shapes=("circle", "square", "cross"), seed=4)
    pretrain(tmp_path / "run", unlabelled, "--trainer.max_epochs", "1", "--data.knn_root", knn_root,
             "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp")  # fmt: skip
    with open(next((tmp_path / "run").glob("*/version_*/metrics.csv"))) as f:
        logged = [float(r["val/knn_acc"]) for r in csv.DictReader(f) if r.get("val/knn_acc")]
    # the same k-NN in this process, on all 27 images (2 processes cannot share them evenly), from the saved weights
    backbone = Backbone("vit_tiny_patch16_224", weights=tmp_path / "run" / "checkpoints" / "last.ckpt",
                        model_kwargs={"img_size": 32, "patch_size": 8, "depth": 2}).eval()  # fmt: skip
    data = UnlabelledDataModule(unlabelled, knn_root=knn_root, data_config=backbone.data_config)
    dataset = ImageDataset(data.splits["val"], data.transform(train=False))
    images, labels = map(torch.stack, zip(*[(image, torch.tensor(label)) for image, label in dataset], strict=True))
    with torch.no_grad():
        features = torch.nn.functional.normalize(backbone(images), dim=1)
    assert logged == [pytest.approx(knn_accuracy(features, labels), abs=1e-6)]


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("vitkit: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_empty_folder_is_one_line(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    line = one_line_error(pretrain(tmp_path / "run", tmp_path / "empty", check=False))
    assert "no images found" in line and str(tmp_path / "empty") in line


def test_a_non_vit_backbone_for_mae_is_one_line(tmp_path, unlabelled):
    result = pretrain(tmp_path, unlabelled, "--model.init_args.backbone.init_args.model_name", "resnet18",
                      "--model.init_args.backbone.init_args.model_kwargs", "{}", check=False)  # fmt: skip
    line = one_line_error(result)
    assert "MAE needs a timm VisionTransformer" in line and "DINO" in line


def test_an_unreadable_teacher_file_is_one_line(tmp_path, unlabelled):
    bad = tmp_path / "teacher.pth"
    bad.write_bytes(b"not a checkpoint")
    args = [str(bad) if a == "TEACHER" else a for a in METHODS["distillation"]]
    line = one_line_error(pretrain(tmp_path / "run", unlabelled, *args, check=False))
    assert str(bad) in line


def test_pretrain_help_describes_each_methods_options():
    result = vitkit("pretrain", "--model.help", "vitkit.DINO")
    assert "--model.n_local_views" in result.stdout and "teacher_momentum" in result.stdout
