"""Broken files are found before training: listed all at once (on_bad_image=error) or left out (skip)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.helpers import fit_quickstart
from vitkit import ClassFolderDataModule, DataError


@pytest.fixture
def folder_with_bad_files(tmp_path):
    root = tmp_path / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 30), (40 * i, 90, 160)).save(root / cls / f"{i}.png")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="JPEG")
    (root / "cat" / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.jpg").write_text("this is text saved with an image name")
    return root


def splits(root, **kwargs) -> ClassFolderDataModule:
    data = ClassFolderDataModule(root, val_fraction=0.3, num_workers=0, data_config={"input_size": (3, 16, 16)},
                                 **kwargs)  # fmt: skip
    data.setup("fit")
    return data


def test_every_bad_file_is_named_with_its_reason_before_training(folder_with_bad_files):
    with pytest.raises(DataError) as err:
        splits(folder_with_bad_files)
    message = str(err.value)
    assert "cannot be read" in message and "on_bad_image skip" in message
    for name, reason in (("truncated.jpg", "truncated"), ("empty.jpg", "cannot identify"),
                         ("notes.jpg", "cannot identify")):  # fmt: skip
        line = next(line for line in message.splitlines() if name in line)
        assert reason in line.split(f"{name}: ", 1)[1].lower(), line  # the reason, not the file name


def test_skip_leaves_bad_files_out_with_a_warning(folder_with_bad_files):
    with pytest.warns(UserWarning, match="skipped .* images that cannot be read"):
        data = splits(folder_with_bad_files, on_bad_image="skip")
    kept = [p.name for split in ("train", "val") for p, _ in data.datasets[split].samples]
    assert len(kept) == 8 and not {"truncated.jpg", "empty.jpg", "notes.jpg"} & set(kept)


def test_on_bad_image_is_checked():
    with pytest.raises(ValueError, match="on_bad_image must be 'error' or 'skip', got 'ignore'"):
        ClassFolderDataModule("x", on_bad_image="ignore")


@pytest.mark.slow
@pytest.mark.parametrize("logger", [["--trainer.logger", "false"], []], ids=["no logger", "W&B offline"])
def test_fit_stops_with_one_clear_error_naming_the_files(folder_with_bad_files, tmp_path, logger):
    # With the recipe's W&B logger, the offline run it had started goes too (its folder was all that was left).
    result = fit_quickstart(folder_with_bad_files, tmp_path / "run", *logger, check=False)
    assert result.returncode == 2
    assert "vitkit: error:" in result.stderr and "truncated.jpg" in result.stderr and "notes.jpg" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # a run that stopped before training leaves no empty run folder
    # No run folder named (it was removed), and no resume hint: nothing was interrupted, nothing can be resumed.
    assert "run folder" not in result.stderr + result.stdout and "resume" not in result.stderr + result.stdout


@pytest.fixture
def splits_with_bad_files(tmp_path):
    """``train/`` and ``val/`` class folders, each split with its own unreadable files."""
    root = tmp_path / "images"
    for split, cls in (("train", "cat"), ("train", "dog"), ("val", "cat"), ("val", "dog")):
        (root / split / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), (40 * i, 90, 160)).save(root / split / cls / f"{i}.png")
    (root / "train" / "cat" / "bad_train_1.jpg").write_bytes(b"")
    (root / "train" / "dog" / "bad_train_2.jpg").write_text("not an image")
    (root / "val" / "dog" / "bad_val.jpg").write_bytes(b"")
    return root


@pytest.mark.slow
def test_fit_lists_the_bad_images_of_every_split_at_once(splits_with_bad_files, tmp_path):
    result = fit_quickstart(splits_with_bad_files, tmp_path / "run", "--trainer.logger", "false", check=False)
    assert result.returncode == 2, result.stderr
    assert "3 images (2 of 8 train, 1 of 7 val) cannot be read" in result.stderr
    for name in ("bad_train_1.jpg", "bad_train_2.jpg", "bad_val.jpg"):
        assert name in result.stderr


def test_setup_lists_every_split_in_one_error(splits_with_bad_files):
    data = ClassFolderDataModule(splits_with_bad_files, num_workers=0, data_config={"input_size": (3, 16, 16)})
    with pytest.raises(DataError, match=r"bad_train_1.jpg(.|\n)*bad_train_2.jpg(.|\n)*bad_val.jpg"):
        data.setup("fit")
