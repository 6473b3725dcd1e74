"""HFDatasetDataModule: save_to_disk folders, parquet and imagefolder files, the task from the label feature, the
remembered up-front scan, and streamed splits."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit.data.hf_rows as hf_rows
import vitkit.data.images as images
from vitkit import ClassFolderDataModule, DataError, HFDatasetDataModule

datasets = pytest.importorskip("datasets")  # the 'hf' extra
SMALL = {"data_config": {"input_size": (3, 16, 16)}, "num_workers": 0, "batch_size": 4}


def png(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, shapes_root) -> Path:
    """shapes_root as a DatasetDict (train, validation) written with save_to_disk, images embedded."""
    folder = ClassFolderDataModule(shapes_root, val_fraction=0.25, seed=0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=folder.class_names)})
    splits = {
        name: datasets.Dataset.from_dict(
            {"image": [str(p) for p, _ in folder.samples(split)], "label": [t for _, t in folder.samples(split)]},
            features=features,
        )
        for name, split in (("train", "train"), ("validation", "val"))
    }
    out = tmp_path_factory.mktemp("hf") / "saved"
    datasets.DatasetDict(splits).save_to_disk(str(out))
    return out


def test_class_labels_give_names_and_batches_like_the_folder(saved, shapes_root):
    data = HFDatasetDataModule(str(saved), **SMALL)
    assert data.class_names == ["circle", "cross", "square", "triangle"] and data.num_outputs == 4
    assert data.label_stats == {"class_counts": [18, 18, 18, 18]}  # for Classification(class_weights="auto")
    data.setup("fit")
    images_, targets = next(iter(data.val_dataloader()))
    assert images_.shape == (4, 3, 16, 16) and targets.dtype == torch.long
    folder = ClassFolderDataModule(shapes_root, val_fraction=0.25, seed=0, data_config=SMALL["data_config"])
    assert [data.datasets["val"].samples[i][1] for i in range(24)] == [t for _, t in folder.samples("val")]
    assert data.datasets["val"].samples[3][0] == "validation[3]"  # embedded images are named by split and row
    folder_image = folder.transform(train=False)(images.load_image(folder.samples("val")[3][0]))
    assert torch.equal(data.datasets["val"][3][0], folder_image)  # same decode, same transform


def test_parquet_files_and_imagefolder_load_through_load_dataset(saved, tmp_path, shapes_root):
    loaded = datasets.load_from_disk(str(saved))
    for split in ("train", "validation"):
        loaded[split].to_parquet(str(tmp_path / f"{split}.parquet"))
    files = {"train": str(tmp_path / "train.parquet"), "validation": str(tmp_path / "validation.parquet")}
    data = HFDatasetDataModule("parquet", data_files=files, cache_dir=str(tmp_path / "c"), **SMALL)
    assert data.class_names == ["circle", "cross", "square", "triangle"]
    data.setup("validate")
    assert len(data.datasets["val"]) == 24
    tree = tmp_path / "tree"
    for split, count in (("train", 3), ("validation", 2)):
        for cls in ("cat", "dog"):
            (tree / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (9, 9), (40 * i, 0, 0)).save(tree / split / cls / f"{i}.png")
    data = HFDatasetDataModule(str(tree), cache_dir=str(tmp_path / "c2"), **SMALL)
    assert data.class_names == ["cat", "dog"]
    data.setup("validate")
    assert data.datasets["val"].samples[0] == (str(tree / "validation" / "cat" / "0.png"), 0)  # files keep paths


def label_table(tmp_path: Path) -> Path:
    features = datasets.Features({
        "img": datasets.Image(),
        "tags": datasets.Sequence(datasets.ClassLabel(names=["red", "round", "small"])),
        "w": datasets.Value("float32"),
        "h": datasets.Value("float64"),
        "kind": datasets.Value("string"),
    })  # fmt: skip
    rows = {"img": [png()] * 4, "tags": [[0, 2], [1], [], [2]], "w": [1.0, 2.0, 3.0, 6.0], "h": [5.0] * 4,
            "kind": ["b", "a", "b", "a"]}  # fmt: skip
    table = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": table, "validation": table}).save_to_disk(str(tmp_path / "t"))
    return tmp_path / "t"


def test_multilabel_regression_and_plain_class_columns(tmp_path):
    path = str(label_table(tmp_path))
    multi = HFDatasetDataModule(path, image_column="img", label_column="tags", **SMALL)
    assert multi.class_names == ["red", "round", "small"]
    assert multi.label_stats == {"positive_fraction": [0.25, 0.25, 0.5]}
    multi.setup("validate")
    assert torch.cat([b[1] for b in multi.val_dataloader()]).tolist()[0] == [1.0, 0.0, 1.0]
    values = HFDatasetDataModule(path, image_column="img", label_column=["w", "h"], **SMALL)
    assert values.class_names == ["w", "h"]
    assert values.label_stats == {"mean": [3.0, 5.0], "std": [pytest.approx(np.std([1, 2, 3, 6], ddof=1)), 1.0]}
    plain = HFDatasetDataModule(path, image_column="img", label_column="kind", **SMALL)
    plain.setup("validate")
    assert plain.class_names == ["a", "b"] and plain.datasets["val"].samples[0][1] == 1
    with pytest.raises(DataError, match="no column label; it has img, tags, w, h, kind"):
        HFDatasetDataModule(path, image_column="img", **SMALL).class_names


def test_without_a_val_split_a_stratified_share_of_train_is_held_out(saved, tmp_path):
    train_only = datasets.load_from_disk(str(saved))["train"]
    train_only.save_to_disk(str(tmp_path / "only"))
    data = HFDatasetDataModule(str(tmp_path / "only"), val_fraction=0.25, **SMALL)
    data.setup("fit")
    val, train = data.datasets["val"], data.datasets["train"]
    assert len(val) == 4 * 4 and len(train) == 72 - 16 and not set(val.rows) & set(train.rows)
    assert sorted(np.bincount(val.targets[val.rows]).tolist()) == [4, 4, 4, 4]


@pytest.fixture
def with_bad_rows(tmp_path) -> Path:
    rows = {"image": [png(), png()[:40], b"not an image", png((0, 0, 255))], "label": [0, 1, 0, 1]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    table = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": table, "validation": table}).save_to_disk(str(tmp_path / "bad"))
    return tmp_path / "bad"


def test_bad_rows_are_named_before_training_and_the_scan_is_remembered(with_bad_rows, monkeypatch):
    with pytest.warns(UserWarning, match="skipped 2 of 4 train images"):
        data = HFDatasetDataModule(str(with_bad_rows), on_bad_image="skip", **SMALL)
        data.setup("fit")
    assert data.datasets["train"].rows.tolist() == [0, 3]
    checked: list[object] = []
    monkeypatch.setattr(hf_rows, "check_image", lambda source: checked.append(source) or "never")
    with pytest.raises(DataError, match=r"4 images \(2 of 4 train, 2 of 4 val\) cannot be read") as err:
        HFDatasetDataModule(str(with_bad_rows), **SMALL).setup("fit")  # every split's bad rows at once
    assert "train[1]: " in str(err.value) and "train[2]: " in str(err.value) and "validation[2]: " in str(err.value)
    assert checked == []  # the Arrow files did not change: the findings come from the cache


def test_scan_is_split_between_processes(with_bad_rows, monkeypatch):
    """Each DDP rank checks a contiguous half of the rows (gathering is exercised in the multi-process tests)."""
    seen: list[int] = []
    check = hf_rows.check_image
    monkeypatch.setattr(hf_rows, "check_image", lambda s: seen.append(1) or check(s))
    data = HFDatasetDataModule(str(with_bad_rows), on_bad_image="skip", scan_cache=False, **SMALL)
    data.trainer = SimpleNamespace(world_size=2, global_rank=1, lightning_module=None)
    with pytest.warns(UserWarning, match="skipped 1 of 4"):  # rank 1 alone sees row 2 (not gathered here)
        data.setup("validate")
    assert len(seen) == 2


def test_streamed_split_gives_whole_epochs_and_skips_bad_samples_by_key(with_bad_rows, tmp_path, caplog):
    names = [f"row{i}" for i in range(48)]  # each row its own class: the targets tell the rows apart
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    table = datasets.Dataset.from_dict({"image": [png()] * 48, "label": list(range(48))}, features=features)
    datasets.DatasetDict({"train": table, "validation": table}).save_to_disk(str(tmp_path / "rows"))
    data = HFDatasetDataModule(str(tmp_path / "rows"), streaming=True, **{**SMALL, "num_workers": 2})
    data.setup("fit")
    loader = data.train_dataloader()
    assert len(loader) == 48 // (2 * 4) * 2
    orders = [torch.cat([batch[1] for batch in loader]).tolist() for _ in range(2)]
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(48)) and orders[0] != orders[1]
    stream = HFDatasetDataModule(str(with_bad_rows), streaming=True, on_bad_image="skip", **SMALL)
    stream.setup("validate")
    with caplog.at_level(logging.WARNING, logger="vitkit.data"):
        batches = list(stream.val_dataloader())
    assert sum(len(b[2]) for b in batches) == 2 and caplog.text.count("skipped sample validation/rank0") == 2
    stream = HFDatasetDataModule(str(with_bad_rows), streaming=True, **SMALL)
    stream.setup("validate")
    with pytest.raises(DataError, match="cannot be read"):
        list(stream.val_dataloader())


def test_missing_split_is_named(saved):
    with pytest.raises(DataError, match="has no split 'holdout'"):
        HFDatasetDataModule(str(saved), test_split="holdout", **SMALL).setup("test")


def test_copied_dataset_is_scanned_again(saved, tmp_path, monkeypatch):
    HFDatasetDataModule(str(saved), **SMALL).setup("validate")
    shutil.copytree(saved, tmp_path / "copy")
    checked: list[object] = []
    check = hf_rows.check_image
    monkeypatch.setattr(hf_rows, "check_image", lambda s: checked.append(1) or check(s))
    HFDatasetDataModule(str(tmp_path / "copy"), **SMALL).setup("validate")
    assert len(checked) == 24
