"""ManifestDataModule: multi-label and regression CSVs, splits, statistics, and errors naming the CSV row."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from vitkit import DataError, ManifestDataModule


def write_manifest(folder: Path, text: str, images=("a.png", "b.png", "c.png", "d.png", "e.png")) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.new("RGB", (12, 10), (10, 20, 30)).save(folder / "img" / name)
    (folder / "m.csv").write_text(text.strip() + "\n")
    return folder / "m.csv"


def test_joined_labels_with_split_column_and_sorted_train_vocabulary(tmp_path):
    csv = write_manifest(
        tmp_path,
        """
path,labels,split
img/a.png,dog|cat,train
img/b.png,cat,train
img/c.png,,train
img/d.png,dog,val
img/e.png,cat|dog,test
""",
    )
    data = ManifestDataModule(csv, label_column="labels")
    assert data.class_names == ["cat", "dog"] and data.num_outputs == 2
    assert data.samples("train") == [
        (tmp_path / "img/a.png", (1.0, 1.0)),
        (tmp_path / "img/b.png", (1.0, 0.0)),
        (tmp_path / "img/c.png", (0.0, 0.0)),
    ]
    assert data.samples("val") == [(tmp_path / "img/d.png", (0.0, 1.0))]
    assert data.samples("test") == [(tmp_path / "img/e.png", (1.0, 1.0))]
    assert data.label_stats == {"positive_fraction": [2 / 3, 1 / 3]}


def test_zero_one_label_columns_keep_their_order(tmp_path):
    csv = write_manifest(tmp_path, "path,zebra,ant\nimg/a.png,1,0\nimg/b.png,0,1\nimg/c.png,1,1\nimg/d.png,0,0\n")
    data = ManifestDataModule(csv, label_columns=["zebra", "ant"], val_fraction=0.25)
    assert data.class_names == ["zebra", "ant"]
    assert len(data.samples("train")) == 3 and len(data.samples("val")) == 1


def test_regression_targets_stats_and_float_tensors(tmp_path):
    csv = write_manifest(tmp_path, "path,w,h\nimg/a.png,1,10\nimg/b.png,2,10\nimg/c.png,3,10\n")
    data = ManifestDataModule(
        csv,
        target_columns=["w", "h"],
        val_fraction=0.3,
        seed=1,
        num_workers=0,
        data_config={"input_size": (3, 16, 16)},
        batch_size=2,
    )
    train = [t for _, t in data.samples("train")]
    assert data.class_names == ["w", "h"]
    stats = data.label_stats
    assert stats["mean"][0] == pytest.approx(sum(t[0] for t in train) / 2)
    assert stats["std"][1] == 1.0  # a constant target is not divided by zero
    data.setup("fit")
    images, targets = next(iter(data.train_dataloader()))
    assert images.shape == (2, 3, 16, 16) and targets.dtype == torch.float32 and targets.shape == (2, 2)


def test_split_without_split_column_is_seeded(tmp_path):
    csv = write_manifest(tmp_path, "path,y\n" + "".join(f"img/{c}.png,{i}\n" for i, c in enumerate("abcde")))
    a = ManifestDataModule(csv, target_columns=["y"], val_fraction=0.4, seed=0).samples("val")
    assert len(a) == 2 and a == ManifestDataModule(csv, target_columns=["y"], val_fraction=0.4, seed=0).samples("val")


def test_paths_relative_to_image_root_or_absolute(tmp_path):
    write_manifest(tmp_path / "data", "path,y\nunused,0\n")
    (tmp_path / "m.csv").write_text(f"path,y\na.png,1\n{tmp_path / 'data/img/b.png'},2\n")
    data = ManifestDataModule(tmp_path / "m.csv", image_root=tmp_path / "data/img", target_columns=["y"])
    assert {p for p, _ in data.samples("train") + data.samples("val")} == {
        tmp_path / "data/img/a.png",
        tmp_path / "data/img/b.png",
    }


@pytest.mark.parametrize(
    "body, message",
    [
        ("img/a.png,cat,train\nimg/zzz.png,cat,train\nimg/c.png,cat,val", "row 3: image file not found: "),
        (
            "img/a.png,cat,train\nimg/b.png,cat,train\nimg/c.png,bird,val",
            "row 4: val label(s) bird never occur in train",
        ),
        (
            "img/a.png,cat,train\nimg/a.png,cat,train\nimg/c.png,cat,val",
            "row 3: duplicate path img/a.png (first at row 2)",
        ),
        (
            "img/a.png,cat,train\nimg/b.png,cat,holdout\nimg/c.png,cat,val",
            "row 3: split is 'holdout'; use train, val or test",
        ),
    ],
)
def test_multilabel_problems_name_the_row(tmp_path, body, message):
    csv = write_manifest(tmp_path, "path,labels,split\n" + body)
    with pytest.raises(DataError, match=r"m\.csv has 1 problem") as err:
        ManifestDataModule(csv, label_column="labels").class_names
    assert message in str(err.value)


@pytest.mark.parametrize(
    "value, message",
    [
        ("abc", "row 3: y is 'abc', not a number"),
        ("nan", "row 3: y is 'nan', not a number"),
        ("", "row 3: y is '', not a number"),
    ],
)
def test_bad_regression_targets_name_row_and_column(tmp_path, value, message):
    csv = write_manifest(tmp_path, f"path,y\nimg/a.png,1\nimg/b.png,{value}\nimg/c.png,2\n")
    with pytest.raises(DataError) as err:
        ManifestDataModule(csv, target_columns=["y"]).class_names
    assert message in str(err.value)


def test_label_columns_must_hold_zero_or_one(tmp_path):
    csv = write_manifest(tmp_path, "path,cat\nimg/a.png,1\nimg/b.png,2\n")
    with pytest.raises(DataError, match="row 3: cat is '2'; label columns hold 0 or 1"):
        ManifestDataModule(csv, label_columns=["cat"]).class_names


def test_all_problems_are_listed_at_once(tmp_path):
    csv = write_manifest(tmp_path, "path,y\nimg/a.png,x\nimg/nope.png,1\nimg/c.png,inf\n")
    with pytest.raises(DataError, match="has 3 problem") as err:
        ManifestDataModule(csv, target_columns=["y"]).class_names
    assert all(f"row {n}:" in str(err.value) for n in (2, 3, 4))


def test_missing_column_names_it_and_the_header(tmp_path):
    csv = write_manifest(tmp_path, "path,width\nimg/a.png,1\n")
    with pytest.raises(DataError, match=r"missing column\(s\) height; the header has path, width"):
        ManifestDataModule(csv, target_columns=["height"]).class_names


def test_empty_and_missing_manifests(tmp_path):
    (tmp_path / "empty.csv").write_text("path,labels\n")
    with pytest.raises(DataError, match=r"empty\.csv is empty"):
        ManifestDataModule(tmp_path / "empty.csv", label_column="labels").class_names
    with pytest.raises(DataError, match=r"manifest not found: .*nope\.csv"):
        ManifestDataModule(tmp_path / "nope.csv", label_column="labels").class_names


def test_no_val_rows_in_split_column(tmp_path):
    csv = write_manifest(tmp_path, "path,y,split\nimg/a.png,1,train\nimg/b.png,2,train\n")
    with pytest.raises(DataError, match="no 'val' rows"):
        ManifestDataModule(csv, target_columns=["y"]).class_names


def test_exactly_one_kind_of_target():
    with pytest.raises(ValueError, match="exactly one of label_column"):
        ManifestDataModule("m.csv")
    with pytest.raises(ValueError, match="exactly one of label_column"):
        ManifestDataModule("m.csv", label_column="a", target_columns=["b"])


def test_label_stats_are_finite_for_regression(tmp_path):
    csv = write_manifest(tmp_path, "path,y\nimg/a.png,1\nimg/b.png,3\nimg/c.png,5\nimg/d.png,7\n")
    stats = ManifestDataModule(csv, target_columns=["y"], val_fraction=0.25).label_stats
    assert all(math.isfinite(v) for v in stats["mean"] + stats["std"])
