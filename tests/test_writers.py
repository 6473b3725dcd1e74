"""`vitkit predict` and `vitkit embed` on a bare folder of images, from a checkpoint alone."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_VIT
from tests.helpers import vitkit
from vitkit import Backbone
from vitkit.backbone import load_backbone_weights
from vitkit.data.images import load_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shapes_root) -> Path:
    """Unlabelled images in nested folders, with OS clutter beside them."""
    root = tmp_path_factory.mktemp("photos")
    for i, source in enumerate(sorted(shapes_root.glob("*/*"))[::8]):
        target = root / ("2024" if i % 2 else "") / ("trip" if i % 3 == 0 else "") / f"{i:02d}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / "notes.txt").write_text("not an image")
    return root


def image_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.suffix in (".png", ".jpg"))


def test_predict_a_bare_folder_from_the_checkpoint_alone(trained_checkpoint, photos, tmp_path):
    result = vitkit("predict", "--ckpt_path", trained_checkpoint, "--data.predict_root", photos)
    written = trained_checkpoint.parent.parent / "predictions" / f"{photos.name}.csv"  # in the checkpoint's run
    assert f"predictions written to {written}" in result.stdout + result.stderr
    with open(written) as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == image_files(photos)  # recursive, sorted, clutter ignored
    classes = {"circle", "cross", "square", "triangle"}
    for row in rows:
        assert row["prediction"] == row["top1"] and {row[f"top{k}"] for k in range(1, 5)} == classes
        assert sum(float(row[f"top{k}_score"]) for k in range(1, 5)) == pytest.approx(1.0, abs=1e-4)
        assert row["target"] == ""  # unlabelled
    assert not (trained_checkpoint.parent.parent / "lightning_logs").exists()


def test_predict_without_images_says_where_to_give_them(trained_checkpoint, tmp_path):
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    del checkpoint["vitkit"]  # a model trained from Python: no data config to fall back on
    torch.save(checkpoint, tmp_path / "python.ckpt")
    result = vitkit("predict", "--ckpt_path", tmp_path / "python.ckpt", check=False)
    assert result.returncode == 2 and "--data.predict_root DIR" in result.stderr
    assert "Traceback" not in result.stderr


def test_fit_on_unlabelled_data_is_refused_clearly(photos, tmp_path):
    result = vitkit("fit", "--config", "quickstart", "--data", "vitkit.ImageDataModule",
                    "--data.predict_root", photos, "--trainer.default_root_dir", tmp_path, check=False)  # fmt: skip
    assert result.returncode == 2 and "no labels" in result.stderr and "Traceback" not in result.stderr


def test_embed_writes_the_backbones_pooled_features_in_folder_order(trained_checkpoint, photos, tmp_path):
    vitkit("embed", "--ckpt_path", trained_checkpoint, "--data.predict_root", photos,
           "--output", tmp_path / "vectors")  # fmt: skip
    features = np.load(tmp_path / "vectors.npy")
    with open(tmp_path / "vectors.csv") as f:
        index = list(csv.DictReader(f))
    assert [r["path"] for r in index] == image_files(photos) and [int(r["row"]) for r in index] == list(range(12))
    assert features.shape == (12, 192) and features.dtype == np.float32
    # the same features from the fine-tuned backbone, computed here by hand
    backbone = Backbone(**TINY_VIT).eval()
    load_backbone_weights(backbone.model, trained_checkpoint)
    from timm.data import create_transform

    transform = create_transform(**backbone.data_config, is_training=False)
    with torch.no_grad():
        expected = backbone(torch.stack([transform(load_image(r["path"])) for r in index])).numpy()
    np.testing.assert_allclose(features, expected, atol=1e-4)
