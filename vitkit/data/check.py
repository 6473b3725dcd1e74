"""``vitkit check-data``: the pre-training scan of a dataset on its own, with a per-class summary."""

from __future__ import annotations

import argparse
import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitkit.data.balance import balancing_advice
from vitkit.data.base import ImageDataModule
from vitkit.data.images import ImageInfo, scan_images
from vitkit.errors import DataError

SPLITS = ("train", "val", "test")
_MODES = {"L": "grayscale", "LA": "grayscale+alpha", "P": "palette", "RGBA": "RGBA", "CMYK": "CMYK"}


@dataclass
class DataReport:
    """What a scan found: samples per split, the outputs' names, each image's size and mode, unreadable files."""

    name: str
    names: list[str]
    samples: dict[str, list[tuple[Path, Any]]]
    images: dict[Path, ImageInfo] = field(default_factory=dict)
    unreadable: dict[Path, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.unreadable

    def format(self, max_listed: int = 50) -> str:
        """The report as text: splits, per-class (label, target) table, image sizes and modes, unreadable files."""
        splits = [s for s in SPLITS if self.samples.get(s) is not None]
        lines = [f"{self.name}: {sum(len(self.samples[s]) for s in splits)} images, {len(self.names)} outputs", ""]
        lines += _table(
            ["split", "images", "unreadable"],
            [[s, len(self.samples[s]), sum(p in self.unreadable for p, _ in self.samples[s])] for s in splits],
        )
        lines += ["", *_per_output(self.names, {s: [t for p, t in self.samples[s]] for s in splits})]
        if self.images:
            widths = sorted(info.width for info in self.images.values())
            heights = sorted(info.height for info in self.images.values())
            modes = Counter(_MODES.get(info.mode, info.mode) for info in self.images.values())
            formats = Counter(info.format for info in self.images.values())
            lines += [
                "",
                f"image sizes (w x h): min {widths[0]}x{heights[0]}, median {statistics.median_low(widths)}x"
                f"{statistics.median_low(heights)}, max {widths[-1]}x{heights[-1]}",
                "modes: " + ", ".join(f"{mode} {n}" for mode, n in modes.most_common()),
                "formats: " + ", ".join(f"{fmt} {n}" for fmt, n in formats.most_common()),
            ]
        if self.unreadable:
            lines += ["", f"{len(self.unreadable)} unreadable files (training stops on them unless on_bad_image=skip):"]
            lines += [f"  {path}: {reason}" for path, reason in list(self.unreadable.items())[:max_listed]]
            if len(self.unreadable) > max_listed:
                lines.append(f"  ... and {len(self.unreadable) - max_listed} more")
        else:
            lines += ["", "all images decode."]
        return "\n".join(lines)


def check_data(data: ImageDataModule, workers: int | None = None) -> DataReport:
    """Scan ``data`` as training would (folder / manifest checks, then every image decoded) and report on it."""
    splits = data.splits  # raises DataError on bad folders and manifests, naming the path or rows
    samples = {s: splits.get(s) for s in SPLITS if splits.get(s) is not None}
    if not samples:
        raise DataError(
            f"{type(data).__name__} has no image files to check: check-data reads class folders and CSV manifests "
            "(Hugging Face datasets are scanned when training starts; shards are checked as they are read)."
        )
    paths = list(dict.fromkeys(p for split in samples.values() for p, _ in split))
    scanned = scan_images(paths, workers=workers or os.cpu_count() or 1, cache=data.scan_cache)
    report = DataReport(type(data).__name__, list(data.class_names or []), samples)
    for path, result in scanned.items():
        if isinstance(result, str):
            report.unreadable[path] = result
        else:
            report.images[path] = result
    return report


def _per_output(names: list[str], targets: dict[str, list[Any]]) -> list[str]:
    """Images per class, positives per label, or target statistics per split."""
    splits = list(targets)
    first = next((t for ts in targets.values() for t in ts), None)
    if isinstance(first, int):
        counts = {s: Counter(ts) for s, ts in targets.items()}
        rows = [[name, *(counts[s][i] for s in splits)] for i, name in enumerate(names)]
        train = {name: counts["train"][i] for i, name in enumerate(names)} if "train" in counts else {}
        return _table(["class", *splits], rows) + imbalance(train, "class")
    if first is not None and all(v in (0, 1, 0.0, 1.0) for ts in targets.values() for t in ts for v in t):
        rows = [[name, *(sum(t[i] >= 0.5 for t in targets[s]) for s in splits)] for i, name in enumerate(names)]
        train = {row[0]: row[1 + splits.index("train")] for row in rows} if "train" in splits else {}
        return _table(["label (images with it)", *splits], rows) + imbalance(train, "label")
    rows = []
    for i, name in enumerate(names):
        cells = []
        for s in splits:
            values = [float(t[i]) for t in targets[s]]
            spread = statistics.pstdev(values) if values else 0.0
            cells.append(f"{statistics.fmean(values):.4g} ± {spread:.3g} [{min(values):.4g}, {max(values):.4g}]")
        rows.append([name, *cells])
    return _table(["target: mean ± std [min, max]", *splits], rows)


def imbalance(counts: dict[str, int], kind: str) -> list[str]:
    """A line with the largest/smallest training count ratio, and what to do about it when it is large."""
    if len(counts) < 2:
        return []
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    if counts[largest] == counts[smallest]:
        return ["", f"balanced: every {kind} has {counts[largest]} train images"]
    ratio = counts[largest] / max(counts[smallest], 1)
    lines = ["", f"imbalance: {ratio:.1f}x ({kind} {largest} {counts[largest]}, {kind} {smallest} {counts[smallest]} "
             "train images)"]  # fmt: skip
    advice = balancing_advice(ratio, kind)
    return [*lines, f"  {advice}"] if advice else lines


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    justify = lambda i, c, w: c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731  names left, numbers right
    return ["  ".join(justify(i, c, w) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in cells]


#: Recipe sections that data-only commands accept in a ``--config`` and ignore (they only need ``data``).
_NOT_DATA = ("model", "trainer", "checkpoint", "optimizer", "lr_scheduler", "seed_everything", "ckpt_path")


def data_command_parser(prog: str, description: str) -> Any:
    """The parser of a command that only needs a dataset (``check-data``, ``shard``): ``--data`` (class folders by
    default, any vitkit data module by class path) or a recipe's data section (``--config NAME|FILE``)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="A recipe; only its data section is used.")
    parser.add_subclass_arguments(ImageDataModule, "data", help="The data module (default: class folders).")
    parser.set_defaults({"data": {"class_path": "vitkit.data.ClassFolderDataModule"}})
    for key in _NOT_DATA:
        parser.add_argument(f"--{key}", type=dict | list | str | float | bool | None, help=argparse.SUPPRESS)
    return parser


def parse_data_command(parser: Any, args: list[str]) -> tuple[Any, ImageDataModule]:
    """Parse ``args`` (shipped recipes by name) and build the data module: ``(config, data)``."""
    from vitkit.recipes import resolve_config_args

    config = parser.parse_args(resolve_config_args(args))
    return config, parser.instantiate_classes(config).data


def check_data_main(args: list[str]) -> int:
    """``vitkit check-data``: scan a dataset as training would and print a per-class summary; exit 1 if any image
    cannot be read."""
    parser = data_command_parser(
        "vitkit check-data",
        "Scan a dataset as `vitkit fit` would (folders or manifest rows, then every image decoded) and print images "
        "per split and class, image sizes and modes, and every unreadable file with its reason. Exits 1 if any image "
        "cannot be read. Examples: `vitkit check-data --data.root my_images`, "
        "`vitkit check-data --config multilabel --data.csv labels.csv`.",
    )
    parser.add_argument("--workers", type=int | None, default=None, help="Decoding threads (default: all cores).")
    config, data = parse_data_command(parser, args)
    report = check_data(data, workers=config.workers)
    print(report.format())
    return 0 if report.ok else 1
