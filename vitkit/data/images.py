"""Finding image files in real folders and decoding them into RGB pictures."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from vitkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
_SYSTEM_FILES = {"thumbs.db", "desktop.ini"}
_ORIENTATION = 0x0112  # EXIF tag

#: A sample is an image path and its target (class index, label vector, values; UNLABELLED when unknown).
Sample = tuple[Path, Any]
#: Target of images without labels (``vitkit predict`` on a folder); an int so DataLoaders can batch it.
UNLABELLED = -1


def is_image_file(path: str | Path) -> bool:
    """True for files with an image extension that are not hidden or OS metadata (``.DS_Store``, ``._x.jpg``)."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower() not in _SYSTEM_FILES and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str | Path) -> list[Path]:
    """All image files under ``folder``, recursively and sorted; hidden folders are skipped."""
    found = []
    for current, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(current, f) for f in files if is_image_file(f)]
    return sorted(found)


class ImageInfo(NamedTuple):
    """Size, mode and format of an image file as stored (before conversion to RGB)."""

    width: int
    height: int
    mode: str
    format: str


def load_image(path: str | Path, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Decode ``path`` into an upright RGB image.

    EXIF orientation is applied, transparency is composited over ``background`` (not dropped), 16-bit and
    32-bit integer images are scaled to 8 bits rather than clipped, and palette / CMYK / grayscale become RGB.
    """
    return _decode(path, background)[0]


def _decode(path: str | Path, background: tuple[int, int, int] = (255, 255, 255)) -> tuple[Image.Image, ImageInfo]:
    """:func:`load_image`, also returning what the file held before conversion."""
    with Image.open(path) as img:
        info = ImageInfo(img.width, img.height, img.mode, img.format or "?")
        img.load()
        if img.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies even upright images: only when needed
            img = ImageOps.exif_transpose(img)
        return to_rgb(img, background), info


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to RGB (see :func:`load_image`)."""
    if img.mode == "RGB":
        return img.copy() if img.readonly else img
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integer or float grayscale
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBa") or (img.mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        canvas = Image.new("RGB", img.size, background)
        canvas.paste(img, mask=img.getchannel("A"))
        return canvas
    return img.convert("RGB")


def scan_images(paths: Sequence[Path], workers: int = 1) -> dict[Path, ImageInfo | str]:
    """Decode every file as :func:`load_image` does (in threads): its :class:`ImageInfo`, or why it cannot be read."""

    def check(path: Path) -> ImageInfo | str:
        try:
            return _decode(path)[1]
        except Exception as err:  # PIL raises many types: truncated, unidentified, empty, OSError
            return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(check, paths), strict=True))


def find_unreadable(paths: Sequence[Path], workers: int = 1) -> dict[Path, str]:
    """``{path: reason}`` for each file that :func:`load_image` cannot decode (decoding runs in threads)."""
    return {path: result for path, result in scan_images(paths, workers).items() if isinstance(result, str)}


class ImageDataset(Dataset):
    """``(transform(image), target)`` pairs from a list of ``(path, target)`` samples."""

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, target = self.samples[index]
        try:
            image = load_image(path)
        except Exception as err:
            raise DataError(f"cannot read image {path}: {err}") from err
        if isinstance(target, (tuple, list)):  # label vectors and regression targets
            target = torch.tensor(target, dtype=torch.float32)
        return (self.transform(image) if self.transform is not None else image), target
