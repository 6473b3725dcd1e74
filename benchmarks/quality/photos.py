"""Benchmark data cut from real photographs: the sample photos that ship inside scikit-image's wheel.

No generated shapes: every image is a crop of a real photograph (textures of brick, grass, gravel, the moon's
surface and a stained tissue slide), odd sizes and aspect ratios, saved as JPEG, PNG or WebP, grayscale and colour
mixed as the photos are. Each photo is cut into three horizontal bands, one per split (train: top 60 %, val: next
18 %, test: last 22 %), so no pixel of a val or test image was seen in training.

Tasks:
- ``classes``: 5 classes, ``per_class`` train crops each, 20 val, 40 test (``root/{train,val,test}/<class>/``).
- ``longtail``: the same classes with train counts 100/50/20/8/5, val 20 and test 40 each.
- ``multilabel``: two textures side by side (or one texture twice); labels = the textures present (CSV).
- ``regression``: a crop split by a straight edge into two textures; target = fraction covered by the first (CSV).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("brick", "grass", "gravel", "moon", "ihc")
BANDS = {"train": (0.0, 0.60), "val": (0.60, 0.78), "test": (0.78, 1.0)}
FORMATS = (("jpg", {"quality": 90}), ("png", {}), ("webp", {"quality": 90}), ("jpg", {"quality": 75}))
LONG_TAIL = {"brick": 100, "grass": 50, "gravel": 20, "moon": 8, "ihc": 5}


def photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photographs, as PIL opens it (grayscale stays grayscale)."""
    import skimage  # the `bench` extra; bundled data files, no download

    return Image.open(Path(skimage.__file__).parent / "data" / f"{name}.png")


def crop(rng: np.random.Generator, image: Image.Image, split: str, size: tuple[int, int] = (40, 110)) -> Image.Image:
    """A random crop of odd size and aspect ratio from ``split``'s band of ``image``."""
    top, bottom = (int(f * image.height) for f in BANDS[split])
    h = int(min(rng.integers(*size), bottom - top))
    w = int(min(h * rng.uniform(0.75, 1.33), image.width))
    x, y = rng.integers(0, image.width - w + 1), rng.integers(top, bottom - h + 1)
    return image.crop((int(x), int(y), int(x) + w, int(y) + h))


def save(rng: np.random.Generator, image: Image.Image, stem: Path) -> Path:
    """Save ``image`` as ``stem`` + a format drawn from :data:`FORMATS`."""
    suffix, options = FORMATS[int(rng.integers(len(FORMATS)))]
    path = stem.with_suffix(f".{suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def class_folders(root: Path, per_class: dict[str, int] | int = 60, seed: int = 0) -> Path:
    """``root/{train,val,test}/<class>/`` crops; ``per_class`` train images (a dict for a long tail)."""
    rng = np.random.default_rng(seed)
    counts = per_class if isinstance(per_class, dict) else dict.fromkeys(CLASSES, per_class)
    for name in CLASSES:
        image = photo(name)
        for split, count in (("train", counts[name]), ("val", 20), ("test", 40)):
            for i in range(count):
                save(rng, crop(rng, image, split), root / split / name / f"{name}_{i:03d}")
    return root


def _pair(rng: np.random.Generator, a: Image.Image, b: Image.Image, split: str, size: int) -> tuple[Image.Image, float]:
    """A ``size`` px square crop split by a straight vertical or horizontal edge: ``a`` on one side, ``b`` on the
    other; returns it and the fraction of pixels from ``a``."""
    left = crop(rng, a.convert("RGB"), split, (size, size + 1)).resize((size, size))
    right = crop(rng, b.convert("RGB"), split, (size, size + 1)).resize((size, size))
    cut = int(rng.integers(0, size + 1))
    pixels = np.array(right)
    pixels[:, :cut] = np.array(left)[:, :cut]
    image = Image.fromarray(pixels)
    if rng.random() < 0.5:  # horizontal edge
        image = image.transpose(Image.Transpose.ROTATE_90)
    if rng.random() < 0.5:  # `a` on the other side
        image = image.transpose(Image.Transpose.ROTATE_180)
    return image, cut / size


def regression_manifest(root: Path, train: int = 225, seed: int = 0) -> Path:
    """``root/targets.csv``: 48-72 px crops, brick beside grass; target ``brick`` = brick's fraction of the image."""
    rng = np.random.default_rng(seed)
    a, b = photo("brick"), photo("grass")
    rows = []
    for split, count in (("train", train), ("val", 75), ("test", 100)):
        for i in range(count):
            image, fraction = _pair(rng, a, b, split, int(rng.integers(48, 73)))
            path = save(rng, image, root / "images" / f"{split}_{i:03d}")
            rows.append({"path": path.relative_to(root).as_posix(), "brick": f"{fraction:.4f}", "split": split})
    return _write(root / "targets.csv", rows)


def multilabel_manifest(root: Path, train: int = 300, seed: int = 0) -> Path:
    """``root/labels.csv``: two textures of :data:`CLASSES` side by side (a fifth of images: one texture only)."""
    rng = np.random.default_rng(seed)
    images = {name: photo(name) for name in CLASSES}
    rows = []
    for split, count in (("train", train), ("val", 100), ("test", 150)):
        for i in range(count):
            first, second = rng.choice(len(CLASSES), size=2, replace=False)
            if rng.random() < 0.2:
                second = first
            names = sorted({CLASSES[first], CLASSES[second]})
            size = int(rng.integers(48, 73))
            image, _ = _pair(rng, images[CLASSES[first]], images[CLASSES[second]], split, size)
            path = save(rng, image, root / "images" / f"{split}_{i:03d}")
            rows.append({"path": path.relative_to(root).as_posix(), "labels": "|".join(names), "split": split})
    return _write(root / "labels.csv", rows)


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def build(root: Path, seed: int = 0) -> dict[str, Path]:
    """Every task's data under ``root`` (built once; reused when present)."""
    paths = {"classes": root / "classes", "longtail": root / "longtail",
             "multilabel": root / "multilabel" / "labels.csv",
             "regression": root / "regression" / "targets.csv"}  # fmt: skip
    if not paths["classes"].exists():
        class_folders(paths["classes"], 60, seed)
    if not paths["longtail"].exists():
        class_folders(paths["longtail"], LONG_TAIL, seed + 1)
    if not paths["multilabel"].exists():
        multilabel_manifest(paths["multilabel"].parent, seed=seed + 2)
    if not paths["regression"].exists():
        regression_manifest(paths["regression"].parent, seed=seed + 3)
    return paths
