"""Prediction writers: what ``vitkit predict`` leaves on disk."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from vitkit.data.images import UNLABELLED


class CSVPredictionWriter(BasePredictionWriter):
    """Write one CSV row per image: its path, the task's prediction columns, and the target where known.

    Classification: ``prediction, score, top1, top1_score, ...``; multi-label: ``prediction`` (labels joined by
    ``|``) and ``p_<label>``; regression: one column per target, in the original units.

    Args:
        output: CSV path; default ``<trainer.default_root_dir>/predictions.csv``. Under DDP each rank writes
            ``predictions.rank<N>.csv``.
        top_k: how many ranked labels to write (classification).
    """

    def __init__(self, output: str | Path | None = None, top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output) if output is not None else None
        self.top_k = top_k
        self._file: Any = None
        self._writer: Any = None

    def path(self, trainer: L.Trainer) -> Path:
        """Where this rank writes."""
        path = self.output or Path(trainer.default_root_dir) / "predictions.csv"
        return path.with_suffix(f".rank{trainer.global_rank}.csv") if trainer.world_size > 1 else path

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", newline="")
        self._writer = None  # created at the first batch, when the task's columns are known

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
        loaders = trainer.predict_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        samples = getattr(getattr(loader, "dataset", None), "samples", None)
        task = pl_module.task
        for row, index in enumerate(batch_indices or range(len(prediction))):
            path, target = samples[index] if samples is not None else (index, None)
            known = target is not None and not (isinstance(target, int) and target == UNLABELLED)
            line = {"path": str(path), **task.describe(prediction[row].float().cpu(), self.top_k)}
            line.update(task.describe_target(target if known else None))
            if self._writer is None:
                self._writer = csv.DictWriter(self._file, fieldnames=list(line))
                self._writer.writeheader()
            self._writer.writerow(line)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
