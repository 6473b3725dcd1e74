"""Generated image datasets with a known answer, for the demo, the tests and smoke-testing a set-up offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
#: Base fill colour per shape when ``colour_cue`` is on (jittered per image).
PALETTE = {"circle": (220, 60, 60), "square": (60, 200, 80), "triangle": (70, 110, 230), "cross": (230, 210, 60)}


def draw_shape(
    rng: np.random.Generator, shape: str, size: int, colour: tuple[int, int, int] | None = None
) -> Image.Image:
    """One ``size`` x ``size`` RGB picture of ``shape`` at a random place, scale and colour on a noisy background."""
    background = rng.integers(0, 90, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, mode="RGB")
    draw = ImageDraw.Draw(img)
    fill = colour or tuple(int(c) for c in rng.integers(120, 256, size=3))
    r = rng.uniform(0.2, 0.38) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}.")
    return img


def make_shapes_folder(
    root: str | Path,
    per_class: int = 50,
    shapes: tuple[str, ...] = SHAPES,
    sizes: tuple[int, int] = (40, 96),
    seed: int = 0,
    colour_cue: bool = True,
    flat: bool = False,
) -> Path:
    """Write a class-folder tree ``root/<shape>/<i>.png|jpg``: odd sizes, PNG and JPEG mixed, some grayscale.

    With ``colour_cue`` each class is drawn in a jittered colour of its own (:data:`PALETTE`) as well as its own
    shape, so a small model learns it in a minute; without it only the shape tells the classes apart. With ``flat``
    all images go straight into ``root`` (``<shape>_<i>``): an unlabelled folder for ``vitkit pretrain``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for shape in shapes:
        folder = root if flat else root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = None
            if colour_cue:
                base = np.array(PALETTE.get(shape, (200, 200, 200)))
                colour = tuple(int(c) for c in np.clip(base + rng.integers(-40, 41, size=3), 0, 255))
            img = draw_shape(rng, shape, int(rng.integers(sizes[0], sizes[1] + 1)), colour)
            if rng.random() < 0.15:
                img = img.convert("L")
            name = f"{shape}_{i:04d}" if flat else f"{i:04d}"
            if rng.random() < 0.5:
                img.save(folder / f"{name}.jpg", quality=90)
            else:
                img.save(folder / f"{name}.png")
    return root


def make_multilabel_manifest(root: str | Path, n: int = 200, size: int = 48, seed: int = 0) -> Path:
    """Images holding a random subset of the four shapes (each in its own colour, one per quadrant), and
    ``root/labels.csv`` with ``path,labels`` (shape names joined by ``|``). Returns the CSV path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    half = size // 2
    lines = ["path,labels"]
    for i in range(n):
        canvas = Image.fromarray(np.clip(rng.normal(40, 12, (size, size, 3)), 0, 255).astype(np.uint8), mode="RGB")
        present = [s for s in SHAPES if rng.random() < 0.5]
        cells = rng.permutation(4)
        for shape, cell in zip(present, cells, strict=False):
            colour = tuple(int(c) for c in np.clip(np.array(PALETTE[shape]) + rng.integers(-30, 31, 3), 0, 255))
            tile = draw_shape(rng, shape, half, colour)
            canvas.paste(tile, ((cell % 2) * half, (cell // 2) * half))
        name = f"images/{i:04d}.{'png' if i % 2 else 'jpg'}"
        canvas.save(root / name)
        lines.append(f"{name},{'|'.join(present)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def make_regression_manifest(root: str | Path, n: int = 200, size: int = 48, seed: int = 0) -> Path:
    """Images of a disc on a plain background, and ``root/targets.csv`` with ``path,brightness,radius``:
    the background's grey level (0-255) and the disc's radius as a fraction of the image. Returns the CSV path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["path,brightness,radius"]
    for i in range(n):
        brightness, radius = float(rng.uniform(20, 200)), float(rng.uniform(0.1, 0.4))
        pixels = np.clip(rng.normal(brightness, 6, (size, size, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels, mode="RGB")
        r = radius * size
        cx, cy = rng.uniform(r, size - r, size=2)
        ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 140, 0))
        name = f"images/{i:04d}.png"
        img.save(root / name)
        lines.append(f"{name},{brightness:.3f},{radius:.4f}")
    (root / "targets.csv").write_text("\n".join(lines) + "\n")
    return root / "targets.csv"
