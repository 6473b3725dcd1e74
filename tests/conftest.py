"""Shared fixtures: tiny ViTs and small generated image folders (no downloads)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from vitkit.synthetic import make_shapes_folder

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

#: A 2-block ViT for 32 px images: fast enough for CPU tests, the same code path as a ViT-B.
TINY_VIT = {"model_name": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 2}}


@pytest.fixture(scope="session", autouse=True)
def scan_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Scan results are remembered in a cache folder: the suite (and the `vitkit` runs it starts) keeps its own."""
    folder = tmp_path_factory.mktemp("vitkit-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VITKIT_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One class-folder tree: 4 classes x 24 images, PNG and JPEG mixed, odd sizes, some grayscale."""
    return make_shapes_folder(tmp_path_factory.mktemp("shapes"), per_class=24, sizes=(24, 64), seed=1)


@pytest.fixture
def split_root(tmp_path: Path, shapes_root: Path) -> Path:
    """``train/`` and ``val/`` trees made from :func:`shapes_root` (val: 6 images per class)."""
    for class_dir in shapes_root.iterdir():
        images = sorted(class_dir.iterdir())
        for split, chosen in (("val", images[:6]), ("train", images[6:])):
            (tmp_path / split / class_dir.name).mkdir(parents=True)
            for image in chosen:
                shutil.copy(image, tmp_path / split / class_dir.name / image.name)
    return tmp_path


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, shapes_root: Path) -> Path:
    """``last.ckpt`` of a 1-epoch `vitkit fit` of the quickstart recipe (tiny ViT) on :func:`shapes_root`."""
    from tests.helpers import fit_quickstart  # helpers import this module

    runs = tmp_path_factory.mktemp("trained")
    fit_quickstart(shapes_root, runs, "--trainer.max_epochs", "1", "--trainer.logger", "false")
    return runs / "version_0" / "checkpoints" / "last.ckpt"
