"""Finding image files in real folders and decoding them into RGB pictures."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from vitkit.data.samples import SampleArray
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


def load_image(path: str | Path | IO[bytes], background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Decode ``path`` (or an open binary file) into an upright RGB image.

    EXIF orientation is applied, transparency is composited over ``background`` (not dropped), 16-bit and
    32-bit integer images are scaled to 8 bits rather than clipped, and palette / CMYK / grayscale become RGB.
    """
    return _decode(path, background)[0]


def _decode(
    path: str | Path | IO[bytes], background: tuple[int, int, int] = (255, 255, 255), draft: bool = False
) -> tuple[Image.Image, ImageInfo]:
    """:func:`load_image`, also returning what the file held before conversion; ``draft``: see :func:`check_image`."""
    with Image.open(path) as img:
        info = ImageInfo(img.width, img.height, img.mode, img.format or "?")
        if draft and img.format == "JPEG":
            img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
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


def check_image(source: str | Path | IO[bytes]) -> ImageInfo | str:
    """What the pre-training scan records for an image file (or file object): its :class:`ImageInfo`, or why
    :func:`load_image` cannot decode it.

    The check runs the same steps as :func:`load_image` with one saving: a JPEG is decoded at 1/8 scale
    (``Image.draft``). libjpeg scales in the inverse DCT, after it has entropy-decoded every block of the file, so a
    truncated or corrupt stream fails exactly as in a full decode (a test cuts a JPEG at every length to show it);
    only the full-size inverse DCT, upsampling and colour conversion are skipped (1.1-2x faster on 192 px photos,
    more on large ones).
    """
    try:
        return _decode(source, draft=True)[1]
    except Exception as err:  # PIL raises many types: truncated, unidentified, empty, OSError
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def scan_images(paths: Sequence[Path], workers: int = 1, cache: bool = True) -> dict[Path, ImageInfo | str]:
    """Check every file as :func:`check_image` does (in threads): its :class:`ImageInfo`, or why it cannot be read.

    With ``cache``, results are remembered by path, size and mtime (:mod:`vitkit.data.scan_cache`): only files
    that are new or changed since an earlier scan are decoded; the others cost a ``stat``.
    """
    return dict(zip(paths, _scan(paths, workers, cache, infos=True), strict=True))


def find_unreadable(paths: Sequence[Path], workers: int = 1, cache: bool = True) -> dict[Path, str]:
    """``{path: reason}`` for each file that :func:`load_image` cannot decode (see :func:`scan_images`)."""
    results = _scan(paths, workers, cache, infos=False)
    return {path: result for path, result in zip(paths, results, strict=True) if result is not None}


def _scan(paths: Sequence[Path], workers: int, cache: bool, infos: bool) -> list[Any]:
    """Per path, its ImageInfo or the reason it cannot be read; without ``infos``, the reason or None."""
    from vitkit.data.scan_cache import ScanCache

    results: list[Any] = [None] * len(paths)
    stats: dict[str, tuple[int, int]] = {}
    keys: list[str | None] = [None] * len(paths)
    folders: set[str] = set()
    for i, path in enumerate(paths):
        name = os.fspath(path)
        key = name if name.startswith(os.sep) else os.path.abspath(name)  # abspath only where needed: 1M calls
        folders.add(os.path.dirname(key))
        try:
            stat = os.stat(key)
        except OSError as err:
            results[i] = f"{type(err).__name__}: {err}"
            continue
        keys[i], stats[key] = key, (stat.st_size, stat.st_mtime_ns)
    store = ScanCache.open() if cache else None
    try:
        known = store.lookup(stats) if store is not None else {}
        todo = [i for i, key in enumerate(keys) if key is not None and key not in known]
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            decoded = dict(zip(todo, pool.map(lambda i: check_image(paths[i]), todo), strict=True))
        if store is not None:
            store.store(
                (keys[i], *stats[keys[i]], r._asdict() if isinstance(r, ImageInfo) else None, _error(r))  # type: ignore[index]
                for i, r in decoded.items()
            )
            store.forget_missing(folders, stats)  # deleted files' results are dropped
    finally:
        if store is not None:
            store.close()
    for i, key in enumerate(keys):
        if key is None:
            continue
        if i in decoded:
            results[i] = decoded[i] if infos else _error(decoded[i])
        else:
            info, error = known[key]
            results[i] = (error or ImageInfo(**json.loads(info))) if infos else error
    return results


def _error(result: ImageInfo | str) -> str | None:
    return result if isinstance(result, str) else None


class ImageDataset(Dataset):
    """``(transform(image), target)`` pairs from ``(path, target)`` samples.

    The samples are kept in a :class:`~vitkit.data.samples.SampleArray` (numpy arrays, no Python object per
    sample), so DataLoader workers do not copy them page by page over an epoch; ``dataset.samples[i]`` still gives
    ``(path, target)``.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None) -> None:
        self.samples = samples if isinstance(samples, SampleArray) else SampleArray(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path = self.samples.path(index)
        try:
            image = load_image(path)
        except Exception as err:
            raise DataError(f"cannot read image {path}: {err}") from err
        target = self.samples.targets[index]  # label vectors and regression targets become float tensors
        target = torch.from_numpy(target.astype(np.float32)) if target.ndim else int(target)
        return (self.transform(image) if self.transform is not None else image), target
