"""``vitkit shard``: write a folder or CSV dataset into WebDataset tar shards that WebDatasetDataModule reads."""

from __future__ import annotations

import io
import json
import os
import random
import re
from pathlib import Path
from typing import Any

from vitkit.data.base import ImageDataModule
from vitkit.data.images import load_image
from vitkit.data.streams import require

#: Formats stored as they are; others are stored as the PNG of what vitkit decodes from them.
_KEPT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


def write_shards(
    data: ImageDataModule, output: str | Path, maxcount: int = 10_000, seed: int = 0
) -> dict[str, list[Path]]:
    """Write ``data``'s train/val/test samples into ``output/<split>-NNNNNN.tar`` with ``classes.txt``,
    ``sizes.json`` (samples per shard) and, where the task has them, ``label_stats.json``.

    Unreadable images follow the data's ``on_bad_image`` (named all at once, or left out). Training samples are
    shuffled (seeded) across shards, so that a shard's shuffle buffer sees all classes. Returns the shards per split.
    """
    wds = require("webdataset", "webdataset")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    names = data.class_names or []
    (output / "classes.txt").write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    if data.label_stats is not None:
        (output / "label_stats.json").write_text(json.dumps(data.label_stats), encoding="utf-8")
    root = getattr(data, "root", None) or getattr(data, "image_root", None)
    sizes: dict[str, int] = {}
    written: dict[str, list[Path]] = {}
    for split, samples in data.splits.items():
        if split not in ("train", "val", "test") or not samples:
            continue
        samples = data._readable(split, list(samples))
        if split == "train":
            random.Random(seed).shuffle(samples)
        keys = _keys([path for path, _ in samples], root)
        written[split] = []
        for start in range(0, len(samples), maxcount):
            shard = output / f"{split}-{start // maxcount:06d}.tar"
            # An integer mtime keeps the headers plain ustar (a float one adds a PAX header to every file, which
            # costs readers time) and makes the same data give byte-identical shards.
            with wds.TarWriter(str(shard), mtime=0) as tar:
                chunk = zip(samples[start : start + maxcount], keys[start : start + maxcount], strict=True)
                for (path, target), key in chunk:
                    tar.write({"__key__": key, **_image_entry(Path(path)), "cls": _label(target)})
            sizes[shard.name] = len(samples[start : start + maxcount])
            written[split].append(shard)
    known = json.loads((output / "sizes.json").read_text()) if (output / "sizes.json").is_file() else {}
    (output / "sizes.json").write_text(json.dumps({**known, **sizes}, indent=1), encoding="utf-8")
    return written


def _image_entry(path: Path) -> dict[str, bytes]:
    ext = _KEPT.get(path.suffix.lower())
    if ext is not None:
        return {ext: path.read_bytes()}
    buffer = io.BytesIO()
    load_image(path).save(buffer, format="PNG")
    return {"png": buffer.getvalue()}


def _label(target: Any) -> str:
    return json.dumps([float(v) for v in target]) if isinstance(target, (tuple, list)) else str(int(target))


def _keys(paths: list[Path], root: Any) -> list[str]:
    """A unique WebDataset key per image: its path under the data root without suffix; dots (which end keys in
    WebDataset) become ``_``."""
    keys: list[str] = []
    seen: set[str] = set()
    for i, path in enumerate(paths):
        try:
            relative = os.path.relpath(path, root) if root is not None else path.name
        except ValueError:  # another drive
            relative = path.name
        key = re.sub(r"\.", "_", str(Path(relative).with_suffix(""))).replace("\\", "/").lstrip("/")
        if not key or key in seen:
            key = f"{key}_{i}"
        seen.add(key)
        keys.append(key)
    return keys


def shard_main(args: list[str]) -> int:
    """``vitkit shard``: write a dataset into tar shards; prints the arguments that read them back."""
    from vitkit.data.check import data_command_parser, parse_data_command

    parser = data_command_parser(
        "vitkit shard",
        "Write a dataset (class folders, or a CSV manifest with --data vitkit.ManifestDataModule) into WebDataset tar "
        "shards, per split, with classes.txt and sizes.json; vitkit.WebDatasetDataModule reads them. Images are "
        "scanned first (unreadable ones follow --data.on_bad_image). "
        "Example: `vitkit shard --data.root my_images --output shards --maxcount 5000`.",
    )
    parser.add_argument("--output", type=str, required=True, help="Folder for the shards.")
    parser.add_argument("--maxcount", type=int, default=10_000, help="Images per shard.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the shuffle of the training images.")
    config, data = parse_data_command(parser, args)
    written = write_shards(data, config.output, config.maxcount, config.seed)
    for split, shards in written.items():
        pattern = f"{config.output}/{split}-{{000000..{len(shards) - 1:06d}}}.tar"
        count = sum(json.loads((Path(config.output) / "sizes.json").read_text())[s.name] for s in shards)
        print(f"{split}: {count} images in {len(shards)} shard(s): {pattern}")
    names = " ".join(f"--data.{split} '{config.output}/{split}-{{000000..{len(s) - 1:06d}}}.tar'" for split, s in
                     written.items())  # fmt: skip
    print(f"train with: vitkit fit ... --data vitkit.WebDatasetDataModule {names}")
    return 0
