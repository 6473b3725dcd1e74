"""`vitkit pretrain` as users type it: each method lowers its loss, k-NN monitor, resume, the checkpoint in
`vitkit fit`, and bad input as one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_VIT
from tests.helpers import TINY_ARGS, vitkit
from vitkit import Backbone, UnlabelledDataModule
from vitkit.backbone import read_state_dict
from vitkit.data.images import ImageDataset
from vitkit.pretrain import knn_accuracy, save_encoder
from vitkit.synthetic import make_shapes_folder

pytestmark = pytest.mark.slow

#: The shipped pretrain recipe with the tests' tiny ViT (2 blocks of 8x8 patches), data in-process, a CSV logger.
TINY = ["--model.backbone.init_args.model_kwargs", json.dumps(TINY_VIT["model_kwargs"]),
        "--data.num_workers", "0", "--data.batch_size", "16",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]  # fmt: skip
MAE = ["--model.decoder_dim", "32", "--model.decoder_depth", "1", "--model.decoder_heads", "2",
       "--model.optimizer.init_args.lr", "3e-3"]  # fmt: skip
DINO = ["--model", "vitkit.DINO", "--model.output_dim", "256", "--model.hidden_dim", "64",
        "--model.bottleneck_dim", "32", "--model.n_local_views", "0", "--model.teacher_momentum", "0.9"]  # fmt: skip
#: A teacher twice as wide (384 features) at a larger input size (48 px) than the student: it needs a projection.
TEACHER_KWARGS = {"img_size": 48, "patch_size": 8, "depth": 2}


def distillation(teacher: Path) -> list[str]:
    return ["--model", "vitkit.Distillation", "--model.teacher", "vitkit.Backbone", "--model.teacher.model_name",
            "vit_small_patch16_224", "--model.teacher.weights", str(teacher), "--model.teacher.model_kwargs",
            json.dumps(TEACHER_KWARGS)]  # fmt: skip


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    """48 images of shapes in one flat folder: no labels, no class folders."""
    return make_shapes_folder(tmp_path_factory.mktemp("unlabelled"), per_class=12, seed=3, flat=True)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    backbone = Backbone("vit_small_patch16_224", model_kwargs=TEACHER_KWARGS)
    return save_encoder(backbone, tmp_path_factory.mktemp("teacher") / "teacher.safetensors")


def pretrain(cwd: Path, data: Path, *extra: object, check: bool = True):
    return vitkit("pretrain", "--config", "pretrain", *TINY, "--data.root", data, *extra, cwd=cwd, check=check)


def metrics(run: Path, name: str) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r[name]) for r in csv.DictReader(f) if r.get(name)]


def test_mae_lowers_its_loss_monitors_knn_resumes_and_starts_a_fit(tmp_path, unlabelled, shapes_root):
    started = pretrain(tmp_path, unlabelled, *MAE, "--trainer.max_epochs", "4", "--data.knn_root", shapes_root)
    assert f"pretraining on 48 images under {unlabelled}; k-NN monitor: " in started.stdout + started.stderr
    run = tmp_path / "runs" / "pretrain" / "version_0"  # the run lifecycle of `vitkit fit`
    losses = metrics(run, "train/loss_epoch")
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert len(metrics(run, "val/knn_acc")) == 4  # the k-NN monitor, each epoch
    ckpt = run / "checkpoints" / "last.ckpt"
    first = torch.load(ckpt, weights_only=True)
    assert (first["epoch"], first["global_step"]) == (3, 12)  # 48 images in batches of 16
    assert first["vitkit"]["data"]["class_path"] == "vitkit.UnlabelledDataModule"  # RunInfo, as in fit
    encoder = read_state_dict(run / "checkpoints" / "encoder.safetensors")
    assert encoder.keys() == read_state_dict(ckpt).keys()
    assert all(torch.equal(encoder[k], v) for k, v in read_state_dict(ckpt).items())

    pretrain(tmp_path, unlabelled, *MAE, "--trainer.max_epochs", "5", "--ckpt_path", "last")
    resumed = torch.load(ckpt, weights_only=True)
    assert (resumed["epoch"], resumed["global_step"]) == (4, 15)  # continued in the same run folder
    assert sorted(p.name for p in (tmp_path / "runs" / "pretrain").iterdir()) == ["version_0"]

    vitkit("fit", "--config", "quickstart", *TINY_ARGS, "--data.root", shapes_root, "--trainer.max_epochs", "1",
           "--trainer.logger", "false", "--model.finetune", "vitkit.LinearProbe",
           "--model.backbone.init_args.weights", ckpt, cwd=tmp_path)  # fmt: skip
    fitted = torch.load(tmp_path / "runs/quickstart/version_0/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    pretrained = resumed["state_dict"]
    encoder_keys = [k for k in fitted if k.startswith("backbone.model.")]
    assert encoder_keys and all(torch.equal(fitted[k], pretrained[k]) for k in encoder_keys)  # probe: encoder frozen
    assert any(k.startswith("head.") for k in fitted) and not any(k.startswith("head.") for k in pretrained)
    # The natural mix-up, --ckpt_path for --model.backbone.init_args.weights, says which one to use, in one line.
    for command in ("fit", "report"):
        mixed = vitkit(command, "--config", "quickstart", "--data.root", shapes_root, "--ckpt_path", ckpt, check=False)
        assert "is a `vitkit pretrain` checkpoint" in one_line_error(mixed) and "init_args.weights" in mixed.stderr


def test_dino_lowers_its_loss_and_moves_its_ema_teacher(tmp_path, unlabelled):
    pretrain(tmp_path, unlabelled, *DINO, "--trainer.max_epochs", "4")
    run = tmp_path / "runs" / "pretrain" / "version_0"
    losses = metrics(run, "train/loss_epoch")
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    key = "model.patch_embed.proj.weight"
    student, teacher = state[f"backbone.{key}"], state[f"teacher_backbone.{key}"]
    assert not torch.equal(student, teacher)  # the teacher follows the student by EMA, it is not a copy of it


def test_distillation_through_a_projection_lowers_the_feature_distance(tmp_path, unlabelled, teacher):
    pretrain(tmp_path, unlabelled, *distillation(teacher), "--trainer.max_epochs", "4")
    run = tmp_path / "runs" / "pretrain" / "version_0"
    losses = metrics(run, "train/loss_epoch")  # 1 - cosine(student, teacher) features
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert tuple(state["projection.weight"].shape) == (384, 192)  # student 192 features -> teacher 384
    assert torch.equal(state["teacher.model.pos_embed"], read_state_dict(teacher)["pos_embed"])  # frozen


def test_ddp_knn_monitor_scores_every_labelled_image_once(tmp_path, unlabelled):
    knn_root = make_shapes_folder(tmp_path / "knn", per_class=9, shapes=("circle", "square", "cross"), seed=4)
    pretrain(tmp_path, unlabelled, *MAE, "--trainer.max_epochs", "1", "--data.knn_root", knn_root,
             "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp")  # fmt: skip
    run = tmp_path / "runs" / "pretrain" / "version_0"
    logged = metrics(run, "val/knn_acc")
    # the same k-NN in this process, on all 27 images (2 processes cannot share them evenly), from the saved weights
    backbone = Backbone(**TINY_VIT, weights=run / "checkpoints" / "last.ckpt").eval()
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


def test_an_empty_or_missing_folder_is_one_line_and_leaves_no_run(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    line = one_line_error(pretrain(tmp_path, tmp_path / "empty", check=False))
    assert "no images found" in line and str(tmp_path / "empty") in line
    # As users type it: the recipe's own (W&B) logger; a typo in the folder name.
    typo = vitkit("pretrain", "--config", "pretrain", "--data.root", "unlabeled", cwd=tmp_path, check=False)
    assert "data root not found: unlabeled" in one_line_error(typo) and "interrupted" not in typo.stdout
    assert not (tmp_path / "runs").exists()  # a run that never started leaves no run folder


def test_a_non_vit_backbone_for_mae_is_one_line(tmp_path, unlabelled):
    result = pretrain(tmp_path, unlabelled, "--model.backbone.init_args.model_name", "resnet18",
                      "--model.backbone.init_args.model_kwargs", "{}", check=False)  # fmt: skip
    line = one_line_error(result)
    assert "MAE needs a timm VisionTransformer" in line and "vit_base_patch16_224" in line and "DINO" in line


def test_an_unreadable_teacher_file_is_one_line(tmp_path, unlabelled):
    bad = tmp_path / "teacher.pth"
    bad.write_bytes(b"not a checkpoint")
    line = one_line_error(pretrain(tmp_path, unlabelled, *distillation(bad), check=False))
    assert f"{bad} is a text file, not weights" in line and "safetensors" in line


def test_pretrain_help_describes_each_methods_options_and_a_bad_option_names_the_command(tmp_path):
    result = vitkit("pretrain", "--model.help", "vitkit.DINO")
    assert "--model.n_local_views" in result.stdout and "teacher_momentum" in result.stdout
    line = one_line_error(pretrain(tmp_path, tmp_path, "--data.knn_rot", tmp_path, check=False))
    assert "knn_rot" in line and "(options: vitkit pretrain --help)" in line


def test_embed_writes_a_pretrained_encoder_s_features(tmp_path, unlabelled, shapes_root):
    pretrain(tmp_path, unlabelled, *MAE, "--trainer.max_epochs", "1")
    ckpt = tmp_path / "runs" / "pretrain" / "version_0" / "checkpoints" / "last.ckpt"
    result = vitkit("embed", "--ckpt_path", ckpt, "--data.predict_root", shapes_root, "--output", tmp_path / "emb")
    assert "embeddings written to" in result.stderr + result.stdout
    features = np.load(tmp_path / "emb.npy")
    assert features.shape == (len(list(shapes_root.rglob("*.*"))), 192)  # the tiny ViT's width, one row per image
    with open(tmp_path / "emb.csv") as f:
        assert next(csv.reader(f)) == ["row", "path"]
