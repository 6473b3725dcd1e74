"""``vitkit check-data``: the pre-training scan of a dataset on its own, with a per-class summary."""

from __future__ import annotations

import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        return _table(["class", *splits], rows)
    if first is not None and all(v in (0, 1, 0.0, 1.0) for ts in targets.values() for t in ts for v in t):
        rows = [[name, *(sum(t[i] >= 0.5 for t in targets[s]) for s in splits)] for i, name in enumerate(names)]
        return _table(["label (images with it)", *splits], rows)
    rows = []
    for i, name in enumerate(names):
        cells = []
        for s in splits:
            values = [float(t[i]) for t in targets[s]]
            spread = statistics.pstdev(values) if values else 0.0
            cells.append(f"{statistics.fmean(values):.4g} ± {spread:.3g} [{min(values):.4g}, {max(values):.4g}]")
        rows.append([name, *cells])
    return _table(["target: mean ± std [min, max]", *splits], rows)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    justify = lambda i, c, w: c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731  names left, numbers right
    return ["  ".join(justify(i, c, w) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in cells]
