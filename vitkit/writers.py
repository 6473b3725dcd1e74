"""Prediction writers: what ``vitkit predict`` and ``vitkit embed`` leave on disk.

Under DDP every process writes a part file next to the output; once all are done, rank 0 merges them in the
dataset's order into one file and removes the parts (the output folder must be shared by all processes).

Streamed data (WebDataset shards, streaming Hugging Face datasets) has no sample indices: its batches name their
samples in a third element, ``(images, targets, keys)``, and rows are numbered in the order they arrive.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from vitkit.data.images import UNLABELLED


def _samples_of(trainer: L.Trainer, dataloader_idx: int) -> Sequence[Any] | None:
    """The ``(path, target)`` samples of the predict dataset, where it has them."""
    loaders = trainer.predict_dataloaders
    loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
    return getattr(getattr(loader, "dataset", None), "samples", None)


def _path_and_target(
    samples: Sequence[Any] | None, index: int, task: Any, batch: Any = None, row: int = 0
) -> tuple[str, dict[str, str]]:
    """A sample's path (or key) and the task's target columns (empty where the image has no label)."""
    if samples is not None:
        path, target = samples[index]
    elif isinstance(batch, (list, tuple)) and len(batch) > 2:  # streamed: (images, targets, keys)
        path, target = batch[2][row], batch[1][row].tolist()
        target = tuple(target) if isinstance(target, list) else target
    else:
        path, target = index, None
    known = target is not None and not (isinstance(target, int) and target == UNLABELLED)
    if task is None:  # a pretrained encoder (vitkit embed of a pretraining checkpoint): no target columns
        return str(path), {}
    return str(path), task.describe_target(target if known else None)


def _indices(batch_indices: Sequence[int] | None, seen: int, count: int) -> list[int]:
    """The batch's sample indices; for streamed data (none given), numbers in arrival order after ``seen``."""
    return list(batch_indices) if batch_indices else list(range(seen, seen + count))


def _part(path: Path, rank: int, kind: str = "csv") -> Path:
    """A rank's part file beside ``path``."""
    suffix = ".npy" if kind in ("features", "index") else ""
    return path.with_name(f"{path.name}.rank{rank}.{kind}.part{suffix}")


class CSVPredictionWriter(BasePredictionWriter):
    """Write one CSV row per image: its path, the task's prediction columns, and the target where known.

    Classification: ``prediction, score, top1, top1_score, ...``; multi-label: ``prediction`` (labels joined by
    ``|``) and ``p_<label>``; regression: one column per target, in the original units.

    Args:
        output: CSV path; default ``<trainer.default_root_dir>/predictions.csv``.
        top_k: how many ranked labels to write (classification).
    """

    def __init__(self, output: str | Path | None = None, top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output) if output is not None else None
        self.top_k = top_k
        self._file: Any = None
        self._writer: Any = None
        self._fields: list[str] | None = None
        self._seen = 0

    def path(self, trainer: L.Trainer) -> Path:
        """The CSV file written."""
        return self.output or Path(trainer.default_root_dir) / "predictions.csv"

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Rows go to a part file (with the sample index first) as they come, so memory stays flat.
        self._file = _part(path, trainer.global_rank).open("w", newline="")
        self._writer = csv.writer(self._file)
        self._fields = None
        self._seen = 0

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: torch.Tensor,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        samples = _samples_of(trainer, dataloader_idx)
        task = pl_module.task
        prediction = prediction.float().cpu()
        indices = _indices(batch_indices, self._seen, len(prediction))
        self._seen += len(prediction)
        for row, index in enumerate(indices):
            path, target_columns = _path_and_target(samples, index, task, batch, row)
            line = {"path": path, **task.describe(prediction[row], self.top_k), **target_columns}
            if self._fields is None:
                self._fields = list(line)
                self._writer.writerow(["index", *self._fields])
            self._writer.writerow([index, *line.values()])

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        trainer.strategy.barrier("vitkit-predictions")
        if trainer.is_global_zero:
            _merge_csv_parts(self.path(trainer), trainer.world_size)


def _merge_csv_parts(path: Path, world_size: int) -> None:
    """Join the ranks' part files into ``path``, in sample order, without the index column."""
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for rank in range(world_size):
        with _part(path, rank).open(newline="") as f:
            reader = csv.reader(f)
            part_header = next(reader, None)
            if part_header is not None:
                header = part_header[1:]
                rows += [(int(r[0]), r[1:]) for r in reader]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        if header is not None:
            writer.writerow(header)
        writer.writerows(r for _, r in sorted(rows, key=lambda item: item[0]))
    for rank in range(world_size):
        _part(path, rank).unlink()


class EmbeddingWriter(BasePredictionWriter):
    """Write pooled backbone features: ``<output>.npy`` (N x num_features, float32) and ``<output>.csv`` (one row
    per image, in the same order: ``row, path`` and the target where known).

    Args:
        output: file stem; default ``<trainer.default_root_dir>/embeddings`` (gives ``embeddings.npy`` and
            ``embeddings.csv``).
    """

    def __init__(self, output: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output) if output is not None else None
        self._indices: list[int] = []
        self._features: list[np.ndarray] = []
        self._rows: list[dict[str, str]] = []

    def stem(self, trainer: L.Trainer) -> Path:
        """Path of the outputs without suffix."""
        stem = self.output or Path(trainer.default_root_dir) / "embeddings"
        return stem.with_suffix("") if stem.suffix in (".npy", ".csv") else stem

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._indices, self._features, self._rows = [], [], []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: torch.Tensor,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        indices = _indices(batch_indices, len(self._indices), len(prediction))
        samples = _samples_of(trainer, dataloader_idx)
        for row, index in enumerate(indices):  # the path and target now: streamed data is not there at the merge
            path, target_columns = _path_and_target(samples, index, getattr(pl_module, "task", None), batch, row)
            self._rows.append({"path": path, **target_columns})
        self._indices += indices
        self._features.append(prediction.float().cpu().numpy())

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stem = self.stem(trainer)
        stem.parent.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        features = np.concatenate(self._features) if self._features else np.zeros((0, 0), np.float32)
        np.save(_part(stem, rank, "features"), features, allow_pickle=False)
        np.save(_part(stem, rank, "index"), np.asarray(self._indices, np.int64), allow_pickle=False)
        with _part(stem, rank, "rows").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self._rows[0]) if self._rows else ["path"])
            writer.writeheader()
            writer.writerows(self._rows)
        self._indices, self._features, self._rows = [], [], []
        trainer.strategy.barrier("vitkit-embeddings")
        if trainer.is_global_zero:
            self._merge(trainer, pl_module, stem)

    def _merge(self, trainer: L.Trainer, pl_module: L.LightningModule, stem: Path) -> None:
        kinds = ("features", "index", "rows")
        parts = [[_part(stem, r, kind) for kind in kinds] for r in range(trainer.world_size)]
        features = [np.load(f) for f, _, _ in parts]
        indices = np.concatenate([np.load(i) for _, i, _ in parts])
        features = np.concatenate([f for f in features if f.size] or [np.zeros((0, 0), np.float32)])
        rows: list[dict[str, str]] = []
        for _, _, names in parts:
            with names.open(newline="") as f:
                rows += list(csv.DictReader(f))
        order = np.argsort(indices, kind="stable")
        np.save(stem.with_suffix(".npy"), features[order], allow_pickle=False)
        with stem.with_suffix(".csv").open("w", newline="") as f:
            writer = None
            for row, position in enumerate(order.tolist()):
                line = {"row": row, **rows[position]}
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(line))
                    writer.writeheader()
                writer.writerow(line)
        for part in (p for ranks in parts for p in ranks):
            part.unlink()
