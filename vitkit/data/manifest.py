"""ManifestDataModule: images listed in a CSV file with multi-label or regression targets."""

from __future__ import annotations

import csv
import math
import random
from functools import cached_property
from pathlib import Path
from typing import Any

from vitkit.data.base import ImageDataModule
from vitkit.data.images import Sample
from vitkit.errors import DataError
from vitkit.tasks import LabelStats

_SPLITS = ("train", "val", "test")
_MAX_LISTED = 20


class ManifestDataModule(ImageDataModule):
    """Images and targets from a CSV manifest. Give exactly one of ``label_column``, ``label_columns`` or
    ``target_columns``; the first two make multi-label data (:class:`vitkit.tasks.MultiLabel`), the third
    regression data (:class:`vitkit.tasks.Regression`).

    Errors name the CSV row as a spreadsheet shows it (the header is row 1) and list every bad row at once.

    Args:
        csv: the manifest; one row per image.
        image_root: folder that relative paths start from (default: the CSV's folder).
        path_column: column with the image path.
        split_column: optional column with ``train``/``val``/``test`` per row; without it a seeded ``val_fraction``
            of the rows is held out for validation.
        label_column: multi-label, one column of labels joined by ``separator`` (empty for none); the label
            vocabulary is the sorted set of train labels.
        label_columns: multi-label, several 0/1 columns, one per label (in this order).
        target_columns: regression, one or more numeric columns.
        separator: separator of ``label_column``.
        val_fraction: share of rows held out for validation when there is no split column.
        seed: seed of that split.
        **kwargs: :class:`~vitkit.data.base.ImageDataModule` arguments (batch_size, num_workers, augment,
            predict_root, ...).
    """

    def __init__(
        self,
        csv: str | Path,
        image_root: str | Path | None = None,
        path_column: str = "path",
        split_column: str = "split",
        label_column: str | None = None,
        label_columns: list[str] | None = None,
        target_columns: list[str] | None = None,
        separator: str = "|",
        val_fraction: float = 0.2,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        given = [
            n
            for n, v in (
                ("label_column", label_column),
                ("label_columns", label_columns),
                ("target_columns", target_columns),
            )
            if v
        ]
        if len(given) != 1:
            raise ValueError(
                "ManifestDataModule: give exactly one of label_column (labels joined by a separator), label_columns "
                f"(0/1 columns) or target_columns (regression); got {given or 'none'}."
            )
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"ManifestDataModule: val_fraction must be in (0, 1), got {val_fraction}.")
        self.csv = Path(csv).expanduser()
        self.image_root = Path(image_root).expanduser() if image_root is not None else self.csv.parent
        self.path_column = path_column
        self.split_column = split_column
        self.label_column = label_column
        self.label_columns = list(label_columns) if label_columns else None
        self.target_columns = list(target_columns) if target_columns else None
        self.separator = separator
        self.val_fraction = val_fraction
        self.seed = seed

    @property
    def kind(self) -> str:
        """``multilabel`` or ``regression``."""
        return "regression" if self.target_columns else "multilabel"

    @property
    def class_names(self) -> list[str]:
        return self.splits["names"]

    def describe_source(self) -> str:
        return f"manifest {self.csv}"

    def split_hint(self, split: str) -> str:
        if split == "test":
            return (f"mark test rows with '{self.split_column}' = test in the CSV, or score the val split with "
                    "`vitkit validate`.")  # fmt: skip
        return f"mark rows with '{self.split_column}' = {split} in the CSV."

    @property
    def label_stats(self) -> LabelStats:
        train = [target for _, target in self.splits["train"]]
        columns = list(zip(*train, strict=True))
        if self.kind == "multilabel":
            return {"positive_fraction": [sum(c) / len(c) for c in columns]}
        means = [sum(c) / len(c) for c in columns]
        stds = [
            math.sqrt(sum((v - m) ** 2 for v in c) / max(1, len(c) - 1)) for c, m in zip(columns, means, strict=True)
        ]
        return {"mean": means, "std": [s if s > 0 else 1.0 for s in stds]}

    @cached_property
    def splits(self) -> dict[str, Any]:  # also holds "names"
        """Read and check the manifest once: ``{"names": [...], "train": [...], "val": [...], "test": [...]}``."""
        rows, header = self._read()
        problems: list[str] = []
        missing = [c for c in self._required_columns() if c not in header]
        if missing:
            raise DataError(
                f"{self.csv}: missing column(s) {', '.join(missing)}; the header has {', '.join(header)}. "
                "Name the columns in the recipe (path_column, label_column, label_columns or target_columns)."
            )
        has_split = self.split_column in header
        parsed: dict[str, list[tuple[int, Path, Any]]] = {s: [] for s in _SPLITS}
        seen: dict[Path, int] = {}
        for number, row in rows:
            path, split, target = self._parse_row(number, row, has_split, problems)
            if path is None:
                continue
            if path in seen:
                problems.append(f"row {number}: duplicate path {row[self.path_column]} (first at row {seen[path]})")
                continue
            seen[path] = number
            if split is not None and target is not None:
                parsed[split].append((number, path, target))
        names = self._names(parsed["train"])
        samples = {split: self._encode(items, names, split, problems) for split, items in parsed.items()}
        if problems:
            listed = "\n  ".join(problems[:_MAX_LISTED])
            more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
            raise DataError(f"{self.csv} has {len(problems)} problem(s):\n  {listed}{more}")
        if not has_split:
            samples["train"], samples["val"] = _random_split(samples["train"], self.val_fraction, self.seed)
        for split in ("train", "val"):
            if not samples[split]:
                raise DataError(
                    f"{self.csv}: no '{split}' rows; add some or leave out the '{self.split_column}' column."
                )
        return {"names": names, "train": samples["train"], "val": samples["val"], "test": samples["test"] or None}

    def _read(self) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
        if not self.csv.is_file():
            raise DataError(f"manifest not found: {self.csv} (set --data.csv to your CSV file).")
        with self.csv.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            reader.fieldnames = header
            rows = [(i, row) for i, row in enumerate(reader, start=2) if any((v or "").strip() for v in row.values())]
        if not rows:
            raise DataError(f"{self.csv} is empty: it needs a header row and one row per image.")
        return rows, header

    def _required_columns(self) -> list[str]:
        return [
            self.path_column,
            *([self.label_column] if self.label_column else []),
            *(self.label_columns or []),
            *(self.target_columns or []),
        ]

    def _parse_row(self, number: int, row: dict[str, str], has_split: bool, problems: list[str]) -> tuple:
        """Path, split and raw target of one row, or Nones after recording what is wrong with it."""
        name = (row.get(self.path_column) or "").strip()
        if not name:
            problems.append(f"row {number}: empty {self.path_column}")
            return None, None, None
        path = Path(name).expanduser()
        path = path if path.is_absolute() else self.image_root / path
        if not path.is_file():
            problems.append(f"row {number}: image file not found: {path}")
        split = (row.get(self.split_column) or "").strip().lower() if has_split else "train"
        if split not in _SPLITS:
            problems.append(f"row {number}: {self.split_column} is {split!r}; use train, val or test")
            split = None
        if self.label_column:
            text = (row.get(self.label_column) or "").strip()
            target: Any = sorted({t.strip() for t in text.split(self.separator) if t.strip()})
        else:
            columns = self.label_columns or self.target_columns or []
            target = []
            for column in columns:
                value = _number(row.get(column))
                if value is None:
                    problems.append(f"row {number}: {column} is {row.get(column)!r}, not a number")
                elif self.label_columns and value not in (0.0, 1.0):
                    problems.append(f"row {number}: {column} is {row.get(column)!r}; label columns hold 0 or 1")
                target.append(value)
            target = None if None in target else tuple(target)
        return path, split, target

    def _names(self, train: list[tuple[int, Path, Any]]) -> list[str]:
        if self.label_column:
            return sorted({label for _, _, labels in train for label in labels})
        return list(self.label_columns or self.target_columns or [])

    def _encode(self, items: list[tuple[int, Path, Any]], names: list[str], split: str, problems: list[str]):
        if not self.label_column:
            return [(path, target) for _, path, target in items]
        index = {name: i for i, name in enumerate(names)}
        samples = []
        for number, path, labels in items:
            unknown = [label for label in labels if label not in index]
            if unknown:
                problems.append(f"row {number}: {split} label(s) {', '.join(unknown)} never occur in train")
                continue
            vector = [0.0] * len(names)
            for label in labels:
                vector[index[label]] = 1.0
            samples.append((path, tuple(vector)))
        return samples


def _number(text: str | None) -> float | None:
    try:
        value = float((text or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _random_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(samples) - 1, max(1, round(len(samples) * fraction)))
    val = set(order[:n_val])
    return [s for i, s in enumerate(samples) if i not in val], [s for i, s in enumerate(samples) if i in val]
