"""Prediction writers: what ``vitkit predict`` leaves on disk."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class CSVPredictionWriter(BasePredictionWriter):
    """Write one CSV row per image: path, predicted label, its score, the top-k labels with scores, the target.

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
        self._writer = csv.writer(self._file)
        k = min(self.top_k, pl_module.num_outputs)
        self._writer.writerow(
            ["path", "prediction", "score", *[f"top{i + 1}{s}" for i in range(k) for s in ("", "_score")], "target"]
        )

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
        dataset = getattr(loader, "dataset", None)
        names = getattr(pl_module, "class_names", None) or [str(i) for i in range(pl_module.num_outputs)]
        scores, ranked = prediction.float().cpu().topk(min(self.top_k, prediction.shape[-1]), dim=-1)
        for row, index in enumerate(batch_indices or range(len(prediction))):
            path, target = dataset.samples[index] if hasattr(dataset, "samples") else (index, -1)
            top = [
                v
                for i, s in zip(ranked[row].tolist(), scores[row].tolist(), strict=True)
                for v in (names[i], f"{s:.6f}")
            ]
            label = names[target] if isinstance(target, int) and target >= 0 else ""
            self._writer.writerow([str(path), top[0], top[1], *top, label])

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
