"""`vitkit check-data`: the pre-training scan alone, with images per split and class and every unreadable file."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.helpers import vitkit
from vitkit import ClassFolderDataModule, ManifestDataModule
from vitkit.data.check import check_data
from vitkit.synthetic import make_multilabel_manifest, make_regression_manifest


@pytest.fixture
def folder(tmp_path):
    """cat: 5 RGB PNGs and a truncated JPEG; dog: 3 grayscale JPEGs and an empty file; val/ with 1 of each."""
    for split, counts in (("train", {"cat": 5, "dog": 3}), ("val", {"cat": 1, "dog": 1})):
        for cls, n in counts.items():
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                if cls == "cat":
                    Image.new("RGB", (40 + i, 30), (200, 90, 10)).save(tmp_path / split / cls / f"{i}.png")
                else:
                    Image.new("L", (64, 48), 120).save(tmp_path / split / cls / f"{i}.jpg")
    (tmp_path / "train" / "cat" / "cut.jpg").write_bytes((tmp_path / "train" / "dog" / "0.jpg").read_bytes()[:200])
    (tmp_path / "train" / "dog" / "empty.png").write_bytes(b"")
    return tmp_path


def test_report_counts_images_per_split_and_class_and_names_each_bad_file(folder):
    report = check_data(ClassFolderDataModule(folder))
    assert not report.ok
    assert set(report.unreadable) == {folder / "train" / "cat" / "cut.jpg", folder / "train" / "dog" / "empty.png"}
    text = report.format()
    lines = text.splitlines()
    assert any(line.split() == ["train", "10", "2"] for line in lines)  # images, unreadable
    assert any(line.split() == ["cat", "6", "1"] for line in lines)  # train, val (bad files counted as listed)
    assert any(line.split() == ["dog", "4", "1"] for line in lines)
    assert "min 40x30" in text and "max 64x48" in text and "grayscale 4" in text and "PNG 6" in text
    assert f"{folder / 'train' / 'dog' / 'empty.png'}: " in text


def test_manifest_reports_positives_per_label_and_target_statistics(tmp_path):
    labels = make_multilabel_manifest(tmp_path / "ml", n=40, seed=0)
    report = check_data(ManifestDataModule(labels, label_column="labels"))
    text = report.format()
    assert report.ok and "label (images with it)" in text
    for name in report.names:  # positives in train and val add up to the images holding the shape
        row = next(line.split() for line in text.splitlines() if line.startswith(name + " "))
        paths = [p for split in report.samples.values() for p, t in split if t[report.names.index(name)]]
        assert int(row[1]) + int(row[2]) == len(paths) > 0
    targets = make_regression_manifest(tmp_path / "rg", n=40, seed=0)
    report = check_data(ManifestDataModule(targets, target_columns=["brightness", "radius"]))
    text = report.format()
    assert "target: mean ± std [min, max]" in text
    assert any(line.startswith("brightness ") and "±" in line for line in text.splitlines())


@pytest.mark.slow
def test_check_data_command_exits_1_on_unreadable_files_and_0_when_clean(folder, tmp_path):
    result = vitkit("check-data", "--data.root", folder, check=False)
    assert result.returncode == 1 and "2 unreadable files" in result.stdout and "cut.jpg" in result.stdout
    for bad in ("train/cat/cut.jpg", "train/dog/empty.png"):
        (folder / bad).unlink()
    result = vitkit("check-data", "--config", "quickstart", "--data.init_args.root", folder)
    assert "all images decode." in result.stdout and "W&B" not in result.stderr  # no logger made for a scan
    missing = vitkit("check-data", "--data.root", tmp_path / "nope", check=False)
    assert missing.returncode == 2 and "vitkit: error: data root not found" in missing.stderr
