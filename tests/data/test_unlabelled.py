"""UnlabelledDataModule: any folder of images, the bad-image policy, the method's transform, the k-NN set."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import TINY_VIT
from vitkit import DINO, MAE, Backbone, ClassFolderDataModule, DataError, UnlabelledDataModule
from vitkit.data.images import UNLABELLED


def nested(tmp_path: Path, shapes_root: Path) -> Path:
    """Images of shapes_root scattered over nested folders, with a text file and a hidden file among them."""
    root = tmp_path / "photos"
    for i, image in enumerate(sorted(shapes_root.rglob("*.*"))[:12]):
        target = root / f"day{i % 3}" / ("raw" if i % 2 else "") / image.name.replace(".", f"_{i}.")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    (root / "notes.txt").write_text("not an image")
    (root / "day0" / ".hidden.png").write_bytes(b"")
    return root


def test_finds_images_recursively_without_labels(tmp_path, shapes_root):
    data = UnlabelledDataModule(nested(tmp_path, shapes_root), num_workers=0)
    train = data.splits["train"]
    assert len(train) == 12 and {target for _, target in train} == {UNLABELLED}
    assert data.splits["val"] is None and data.num_outputs is None


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_an_empty_or_missing_folder_is_a_one_line_data_error(tmp_path, make):
    root = tmp_path / "nothing"
    if make == "empty":
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "readme.txt").write_text("no pictures here")
    with pytest.raises(DataError) as err:
        UnlabelledDataModule(root).splits
    assert "\n" not in str(err.value) and str(root) in str(err.value)


def test_bad_images_follow_on_bad_image(tmp_path, shapes_root):
    root = nested(tmp_path, shapes_root)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        UnlabelledDataModule(root, num_workers=0)._readable("train", UnlabelledDataModule(root).splits["train"])
    data = UnlabelledDataModule(root, num_workers=0, on_bad_image="skip")
    assert len(data._readable("train", data.splits["train"])) == 12


def _setup_with(module: L.LightningModule, data: L.LightningDataModule) -> L.LightningDataModule:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.lightning_module.trainer = trainer
    data.trainer = trainer
    data.setup("fit")
    return data


def test_the_method_supplies_the_training_transform(tmp_path, shapes_root):
    dino = DINO(Backbone(TINY_VIT["model_name"], model_kwargs={**TINY_VIT["model_kwargs"], "dynamic_img_size": True}),
                output_dim=32, hidden_dim=16, bottleneck_dim=8, n_local_views=3)  # fmt: skip
    data = _setup_with(dino, UnlabelledDataModule(shapes_root, num_workers=0))
    views, target = data.datasets["train"][0]
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3 and target == UNLABELLED


def test_a_labelled_data_module_pretrains_on_its_train_split_and_validates_knn_on_val(tmp_path, shapes_root):
    mae = MAE(Backbone(**TINY_VIT), decoder_dim=16, decoder_depth=1, decoder_heads=2)
    data = _setup_with(mae, ClassFolderDataModule(shapes_root, num_workers=0))
    views, _ = data.datasets["train"][0]
    assert isinstance(views, list) and views[0].shape == (3, 32, 32)  # MAE's view, the label is ignored
    image, label = data.datasets["val"][0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 32, 32) and isinstance(label, int)


def test_knn_root_is_the_labelled_validation_set(tmp_path, shapes_root, split_root):
    data = UnlabelledDataModule(nested(tmp_path, shapes_root), knn_root=split_root, num_workers=0)
    val = data.splits["val"]
    assert len(val) == 96 and sorted({label for _, label in val}) == [0, 1, 2, 3]  # train/ and val/ of split_root
    assert UnlabelledDataModule(shapes_root).val_dataloader() == []  # no k-NN set: no validation
