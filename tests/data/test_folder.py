"""ClassFolderDataModule: layouts, the seeded stratified split, transforms and clear errors on bad folders."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import TINY_VIT
from vitkit import Backbone, ClassFolderDataModule, DataError


def write_image(path: Path, size=(20, 30), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


def test_train_val_layout_uses_folders_and_sorted_class_names(split_root):
    data = ClassFolderDataModule(split_root)
    assert data.class_names == ["circle", "cross", "square", "triangle"]
    assert data.num_outputs == 4
    assert len(data.samples("train")) == 4 * 18 and len(data.samples("val")) == 4 * 6
    assert data.samples("test") is None
    assert all("/val/" in str(p) for p, _ in data.samples("val"))


def test_single_tree_is_split_stratified_and_seeded(shapes_root):
    data = ClassFolderDataModule(shapes_root, val_fraction=0.25, seed=3)
    train, val = data.samples("train"), data.samples("val")
    assert Counter(t for _, t in val) == {0: 6, 1: 6, 2: 6, 3: 6}
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert val == ClassFolderDataModule(shapes_root, val_fraction=0.25, seed=3).samples("val")
    assert val != ClassFolderDataModule(shapes_root, val_fraction=0.25, seed=4).samples("val")


def test_predict_reads_predict_root_recursively_then_test_then_val(split_root, tmp_path):
    write_image(tmp_path / "new" / "a.png")
    write_image(tmp_path / "new" / "deeper" / "b.JPG")
    (tmp_path / "new" / "notes.txt").write_text("not an image")
    data = ClassFolderDataModule(split_root, predict_root=tmp_path / "new")
    assert [(p.name, t) for p, t in data.samples("predict")] == [("a.png", -1), ("b.JPG", -1)]
    assert ClassFolderDataModule(split_root).samples("predict") == ClassFolderDataModule(split_root).samples("val")


def test_hidden_and_system_files_are_ignored(tmp_path):
    for cls in ("a", "b"):
        write_image(tmp_path / cls / "1.png")
        write_image(tmp_path / cls / ".hidden.png")
        write_image(tmp_path / cls / "._1.png")
        (tmp_path / cls / ".DS_Store").write_bytes(b"\0")
        (tmp_path / cls / "Thumbs.db").write_bytes(b"\0")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    data = ClassFolderDataModule(tmp_path, val_fraction=0.5)
    assert data.class_names == ["a", "b"]
    assert sorted(p.name for p, _ in data.samples("train") + data.samples("val")) == ["1.png", "1.png"]


def test_transforms_come_from_the_model_data_config(split_root):
    backbone = Backbone(**TINY_VIT)
    data = ClassFolderDataModule(split_root, data_config=backbone.data_config, num_workers=0, batch_size=8)
    data.setup("fit")
    images, targets = next(iter(data.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and targets.dtype == torch.long
    images, _ = next(iter(data.val_dataloader()))
    assert images.shape == (8, 3, 32, 32)
    # timm normalises with the model's mean/std (0.5, 0.5): pixel values span [-1, 1]
    assert images.min() >= -1.0 - 1e-6 and images.max() <= 1.0 + 1e-6


def test_image_size_overrides_the_model_input_size(split_root):
    data = ClassFolderDataModule(split_root, image_size=48, num_workers=0, batch_size=4)
    data.setup("validate")
    assert next(iter(data.val_dataloader()))[0].shape == (4, 3, 48, 48)


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"data root not found: {tmp_path / 'missing'}")):
        ClassFolderDataModule(tmp_path / "missing").class_names


def test_split_without_class_folders_names_the_split(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=re.escape(f"no class sub-folders in {tmp_path / 'train'}")):
        ClassFolderDataModule(tmp_path).class_names


def test_class_folder_without_images_names_the_folder(tmp_path):
    write_image(tmp_path / "cat" / "1.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=re.escape(f"class folder {tmp_path / 'dog'} has no images")):
        ClassFolderDataModule(tmp_path).class_names


def test_val_class_unknown_to_train_names_it(split_root):
    write_image(split_root / "val" / "hexagon" / "1.png")
    with pytest.raises(DataError, match="val has classes that are not in the train split: hexagon"):
        ClassFolderDataModule(split_root).class_names


def test_single_class_is_refused(tmp_path):
    write_image(tmp_path / "only" / "1.png")
    with pytest.raises(DataError, match="only one class folder"):
        ClassFolderDataModule(tmp_path).class_names


def test_bad_val_fraction():
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 1\.0"):
        ClassFolderDataModule("x", val_fraction=1.0)
