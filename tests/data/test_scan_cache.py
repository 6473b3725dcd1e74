"""Scan once: decode results remembered by path, size and mtime; changed files decoded again; JPEG draft check."""

from __future__ import annotations

import io
import os
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

import vitkit.data.images as images
from vitkit import ClassFolderDataModule, DataError
from vitkit.data.check import check_data
from vitkit.data.images import check_image, find_unreadable, scan_images
from vitkit.data.scan_cache import ScanCache, cache_dir


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """Names of the files the scan decodes (not taken from the cache)."""
    names: list[str] = []
    check = images.check_image

    def counting(path):
        names.append(Path(path).name)
        return check(path)

    monkeypatch.setattr(images, "check_image", counting)
    return names


@pytest.fixture
def folder(tmp_path) -> Path:
    for cls in ("cat", "dog"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20 + i, 10), (9, 90 * i, 50)).save(tmp_path / "data" / cls / f"{i}.jpg")
    return tmp_path / "data"


def setup_fit(root: Path, **kwargs) -> ClassFolderDataModule:
    data = ClassFolderDataModule(root, val_fraction=0.4, num_workers=0, data_config={"input_size": (3, 8, 8)},
                                 **kwargs)  # fmt: skip
    data.setup("fit")
    return data


def test_cache_dir_follows_vitkit_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("VITKIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "vitkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path("~/.cache/vitkit").expanduser()
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_second_scan_decodes_nothing_and_gives_the_same_infos(folder, cache, decoded):
    paths = sorted(folder.rglob("*.jpg"))
    first = scan_images(paths)
    assert sorted(decoded) == sorted(p.name for p in paths) and (cache / "scan.sqlite").is_file()
    decoded.clear()
    assert scan_images(paths) == first and decoded == []
    assert first[paths[0]].width in (20, 21, 22) and first[paths[0]].format == "JPEG"
    assert check_data(ClassFolderDataModule(folder)).images == first and decoded == []


def test_changed_file_is_decoded_again_and_a_newly_broken_one_is_named(folder, cache, decoded):
    setup_fit(folder)
    decoded.clear()
    good = folder / "cat" / "1.png"
    Image.new("RGB", (30, 30), "red").save(good)  # a new file
    broken = folder / "dog" / "2.jpg"
    broken.write_bytes(broken.read_bytes()[:-40])  # became truncated: size and mtime change
    with pytest.warns(UserWarning, match="skipped 1 of"):
        data = setup_fit(folder, on_bad_image="skip")
    assert sorted(decoded) == ["1.png", "2.jpg"]  # only the new and the changed file
    assert good in {p for split in ("train", "val") for p, _ in data.datasets[split].samples}
    decoded.clear()
    with pytest.raises(DataError, match=r"1 of \d+ \w+ images cannot be read") as err:
        setup_fit(folder)  # a remembered failure is still an error, named with its reason
    assert f"{broken}: " in str(err.value) and "truncated" in str(err.value).lower()
    assert decoded == []


def test_same_size_rewrite_is_caught_by_its_mtime(folder, cache, decoded):
    path = folder / "cat" / "0.jpg"
    assert scan_images([path])[path].mode == "RGB"
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\0" * (len(data) - 100))  # same size, garbage after the header
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert isinstance(scan_images([path])[path], str) and len(decoded) == 2


def test_scan_cache_off_decodes_everything(folder, cache, decoded):
    setup_fit(folder)
    decoded.clear()
    setup_fit(folder, scan_cache=False)
    assert len(decoded) == 6


def test_unwritable_cache_warns_and_scans_anyway(folder, tmp_path, monkeypatch, decoded):
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path / "a_file"))
    with pytest.warns(UserWarning, match="scan cache off"):
        assert find_unreadable(sorted(folder.rglob("*.jpg"))) == {}
    assert len(decoded) == 6


def test_missing_file_is_named_without_decoding(tmp_path, cache):
    assert "FileNotFoundError" in find_unreadable([tmp_path / "gone.png"])[tmp_path / "gone.png"]


@pytest.mark.parametrize("progressive", [False, True])
def test_reduced_size_jpeg_check_still_catches_every_truncation(progressive):
    """The draft (1/8 scale) decode reads the whole entropy-coded stream: a JPEG cut anywhere fails the check,
    just as a full decode does."""
    buffer = io.BytesIO()
    Image.effect_noise((96, 80), 60).convert("RGB").save(buffer, "JPEG", quality=90, progressive=progressive)
    data = buffer.getvalue()
    assert not isinstance(check_image(io.BytesIO(data)), str)
    for cut in [*range(20, len(data), 37), len(data) - 2, len(data) - 1]:
        with pytest.raises(OSError), Image.open(io.BytesIO(data[:cut])) as img:
            img.load()  # a full decode fails ...
        assert isinstance(check_image(io.BytesIO(data[:cut])), str), cut  # ... and so does the check


def test_cache_keeps_whole_dataset_results(cache):
    with ScanCache() as store:
        assert store.dataset("fingerprint-1") is None
        store.store_dataset("fingerprint-1", {"train/7": "OSError: broken"})
    with ScanCache() as store:
        assert store.dataset("fingerprint-1") == {"train/7": "OSError: broken"}


def remembered(cache: Path) -> set[str]:
    """The file paths the scan cache holds."""
    with sqlite3.connect(cache / "scan.sqlite") as db:
        return {path for (path,) in db.execute("SELECT path FROM files")}


def test_deleted_files_are_forgotten_by_the_next_scan_of_their_folder(folder, cache, tmp_path):
    other = tmp_path / "data" / "cat_other"  # a sibling folder whose name starts like "cat": not scanned, kept
    other.mkdir()
    Image.new("RGB", (9, 9)).save(other / "0.jpg")
    scan_images(sorted(folder.rglob("*.jpg")))
    assert len(remembered(cache)) == 7
    gone, kept = folder / "cat" / "1.jpg", folder / "cat" / "0.jpg"
    gone.unlink()
    (folder / "dog" / "2.jpg").unlink()
    (other / "0.jpg").unlink()
    scan_images([kept])  # a scan of the "cat" folder forgets its deleted file, and only that one
    assert str(gone) not in remembered(cache) and str(kept) in remembered(cache)
    assert {str(folder / "dog" / "2.jpg"), str(other / "0.jpg")} <= remembered(cache)
    find_unreadable(sorted(folder.rglob("*.jpg")))
    assert remembered(cache) == {str(p) for p in folder.rglob("*.jpg")} | {str(other / "0.jpg")}
