"""Rows of Hugging Face datasets as vitkit samples: targets from the label features, the up-front decode scan of
Arrow tables, and the map-style and streamed torch datasets that :class:`~vitkit.data.hf.HFDatasetDataModule`
hands to its DataLoaders."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset, IterableDataset, default_collate, get_worker_info

from vitkit.data.images import check_image
from vitkit.data.scan_cache import ScanCache
from vitkit.data.streams import StreamDecoder
from vitkit.errors import DataError
from vitkit.tasks import LabelStats

_READ = 256  # rows read per batch by the scan


@dataclass
class LabelCoder:
    """How label columns become targets. ``kind``: ``class`` (an index), ``multilabel`` (a 0/1 vector from a list
    of class labels) or ``regression`` (float columns). ``values``: the distinct values of a plain class column."""

    kind: str
    columns: list[str]
    names: list[str]
    values: list[Any] | None = None

    @classmethod
    def from_dataset(cls, table: Any, label_column: str | list[str], image_column: str, where: str) -> LabelCoder:
        """Read the task from the train split's features."""
        from datasets import ClassLabel, Value

        features = table.features
        columns = [label_column] if isinstance(label_column, str) else list(label_column)
        if features is None:
            raise DataError(f"{where}: the dataset's features are unknown; load it without streaming once.")
        missing = [c for c in [image_column, *columns] if c not in features]
        if missing:
            raise DataError(
                f"{where}: no column {', '.join(missing)}; it has {', '.join(features)}. "
                "Set --data.image_column / label_column."
            )
        kinds = [features[c] for c in columns]
        if len(columns) == 1 and isinstance(kinds[0], ClassLabel):
            return cls("class", columns, list(kinds[0].names))
        if len(columns) == 1 and isinstance(getattr(kinds[0], "feature", None), ClassLabel):
            return cls("multilabel", columns, list(kinds[0].feature.names))
        if all(isinstance(f, Value) and f.dtype.startswith("float") for f in kinds):
            return cls("regression", columns, columns)
        if len(columns) == 1 and isinstance(kinds[0], Value) and not hasattr(table, "n_shards"):
            values = sorted(table.unique(columns[0]))
            return cls("class", columns, [str(v) for v in values], values)
        raise DataError(
            f"{where}: cannot tell the task from column(s) {', '.join(columns)} ({', '.join(map(str, kinds))}): use "
            "a ClassLabel (classes), a list of ClassLabel (multi-label) or float columns (regression)."
        )

    def targets(self, table: Any) -> np.ndarray:
        """All targets of a table at once: int64 class indices, float32 multi-hot rows or float64 values."""
        import pyarrow.compute as pc

        arrow = table.with_format("arrow")
        if self.kind == "regression":
            return np.stack([arrow[c].to_numpy().astype(np.float64) for c in self.columns], axis=1)
        column = arrow[self.columns[0]].combine_chunks()
        if self.kind == "multilabel":
            vectors = np.zeros((len(column), len(self.names)), np.float32)
            vectors[pc.list_parent_indices(column).to_numpy(), column.flatten().to_numpy()] = 1.0
            return vectors
        values = column.to_numpy(zero_copy_only=False)
        if self.values is not None:
            values = np.searchsorted(np.asarray(self.values), values)
        return values.astype(np.int64)

    def encode(self, row: dict[str, Any]) -> Any:
        """One streamed row's target (an int, or a list of floats)."""
        if self.kind == "regression":
            return [float(row[c]) for c in self.columns]
        value = row[self.columns[0]]
        if self.kind == "multilabel":
            vector = [0.0] * len(self.names)
            for i in value:
                vector[i] = 1.0
            return vector
        return self.values.index(value) if self.values is not None else int(value)

    def stats(self, targets: np.ndarray) -> LabelStats:
        """What the task needs to know about the training targets (see :mod:`vitkit.tasks`)."""
        if self.kind == "multilabel":
            return {"positive_fraction": targets.mean(axis=0).tolist()}
        if self.kind == "class":
            return {"class_counts": np.bincount(targets, minlength=len(self.names)).tolist()}
        std = targets.std(axis=0, ddof=1) if len(targets) > 1 else np.zeros(targets.shape[1])
        return {"mean": targets.mean(axis=0).tolist(), "std": [s if s > 0 else 1.0 for s in std.tolist()]}


def _raw_images(table: Any, image_column: str) -> Any:
    """The table's image column only, undecoded: ``{"bytes": ..., "path": ...}`` per row."""
    from datasets import Image

    return table.select_columns([image_column]).cast_column(image_column, Image(decode=False))


def _source(cell: dict[str, Any]) -> bytes | str | None:
    return cell.get("bytes") or cell.get("path") if cell else None


def dataset_key(table: Any, image_column: str, rows: np.ndarray) -> str | None:
    """A key for remembering a scan: the table's Arrow files (name, size, mtime), the column and the rows; None
    for tables held only in memory."""
    files = [f["filename"] for f in table.cache_files]
    if not files:
        return None
    digest = hashlib.sha1(f"{image_column}|{len(table)}".encode())
    for name in files:
        stat = os.stat(name)
        digest.update(f"|{os.path.abspath(name)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    digest.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    return f"hf:{digest.hexdigest()}"


def scan_rows(table: Any, image_column: str, rows: np.ndarray, workers: int, key: str | None) -> dict[int, str]:
    """``{row: reason}`` for the given rows whose image does not decode (see :func:`check_image`), in threads; a
    scan remembered under ``key`` is reused."""
    store = ScanCache.open() if key is not None else None
    try:
        known = store.dataset(key) if store is not None else None  # type: ignore[arg-type]
    finally:
        if store is not None:
            store.close()
    if known is not None:
        return {int(row): reason for row, reason in known.items()}
    images = _raw_images(table, image_column)
    bad: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(rows), _READ):
            chunk = rows[start : start + _READ].tolist()
            cells = images[chunk][image_column]
            sources = [_source(c) for c in cells]
            checked = pool.map(lambda s: check_image(io.BytesIO(s) if isinstance(s, bytes) else s), sources)
            for row, source, result in zip(chunk, sources, checked, strict=True):
                if source is None or isinstance(result, str):
                    bad[row] = result if source is not None else "no image in the row"
    return bad


def remember_scan(key: str, bad: dict[int, str]) -> None:
    """Store a complete scan's findings under ``key``."""
    store = ScanCache.open()
    if store is not None:
        with store:
            store.store_dataset(key, {str(row): reason for row, reason in bad.items()})


class HFImageDataset(Dataset):
    """``(transform(image), target)`` for chosen rows of a memory-mapped table; ``samples[i]`` gives the image's
    file path (or ``split[row]``) and target, for the prediction writers."""

    def __init__(self, table: Any, image_column: str, targets: np.ndarray, rows: np.ndarray,
                 decoder: StreamDecoder, split: str) -> None:  # fmt: skip
        self.images = _raw_images(table, image_column)
        self.image_column = image_column
        self.targets = targets
        self.rows = np.asarray(rows, dtype=np.int64)
        self.decoder = decoder
        self.split = split
        self.samples = _RowSamples(self)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        row = int(self.rows[index])
        cell = self.images[row][self.image_column]
        image, target, _ = self.decoder(_source(cell), self.target(row), self._key(row, cell))
        return image, target

    def target(self, row: int) -> Any:
        return self.targets[row].tolist()

    def key(self, row: int) -> str:
        """The image's file path where the row only refers to a file, else ``split[row]``."""
        return self._key(row, self.images[row][self.image_column])

    def _key(self, row: int, cell: dict[str, Any] | None) -> str:
        return cell["path"] if cell and not cell.get("bytes") and cell.get("path") else f"{self.split}[{row}]"


class _RowSamples(Sequence):
    def __init__(self, dataset: HFImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def targets(self) -> np.ndarray:
        """All targets, in sample order (what a balanced sampler weighs)."""
        return self.dataset.targets[self.dataset.rows]

    def __getitem__(self, index: int) -> tuple[str, Any]:  # type: ignore[override]
        row = int(self.dataset.rows[index])
        target = self.dataset.target(row)
        return self.dataset.key(row), tuple(target) if isinstance(target, list) else target


class HFStream(IterableDataset):
    """A streamed split (already split by process; ``datasets`` splits it by DataLoader worker) as batches of
    ``(images, targets, keys)``. With ``batches``, every worker yields exactly that many per epoch, going round the
    stream again (reshuffled) if it runs short, so all processes take the same number of steps."""

    def __init__(self, stream: Any, image_column: str, coder: LabelCoder, decoder: StreamDecoder, batch_size: int,
                 batches: int | None, name: str) -> None:  # fmt: skip
        from datasets import Image

        self.stream = stream.cast_column(image_column, Image(decode=False))
        self.image_column = image_column
        self.coder = coder
        self.decoder = decoder
        self.batch_size = batch_size
        self.batches = batches
        self.name = name
        self.workers = 1
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch of this process (all its workers), where fixed; a TypeError tells Lightning it is not."""
        if self.batches is None:
            raise TypeError("a streamed evaluation split has no known length")
        return self.batches * self.workers

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        tag = f"{self.name}/worker{worker.id if worker else 0}"
        produced, count = 0, 0
        batch: list[Any] = []
        while True:
            self.stream.set_epoch(self.epoch)
            self.epoch += 1
            start = count
            for row in self.stream:
                cell = row.get(self.image_column)
                key = cell["path"] if cell and not cell.get("bytes") and cell.get("path") else f"{tag}/{count}"
                count += 1
                sample = self.decoder(_source(cell), self.coder.encode(row) if self.decoder.labelled else None, key)
                if sample is None:
                    continue
                batch.append(sample)
                if len(batch) == self.batch_size:
                    yield default_collate(batch)
                    batch, produced = [], produced + 1
                    if produced == self.batches:
                        return
            if self.batches is None or count == start:  # one pass; or a stream with nothing in it
                if batch and self.batches is None:
                    yield default_collate(batch)
                return
