"""Faults injected into real `vitkit` runs by class_path: a rank that raises, slow steps, a worker that dies."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import lightning as L
from torch.utils.data import Dataset, get_worker_info

from vitkit import ClassFolderDataModule


class RaiseOnRank(L.Callback):
    """Raise in one DDP process at a given training batch."""

    def __init__(self, rank: int, batch: int = 1) -> None:
        self.rank, self.batch = rank, batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_rank == self.rank and idx == self.batch:
            raise RuntimeError(f"injected failure on rank {self.rank}")


class SlowSteps(L.Callback):
    """Sleep after each training batch, so that a test can kill a run in the middle of an epoch; append
    ``epoch,global_step`` to ``log`` at each epoch start, so that it can tell where a run (re)started."""

    def __init__(self, seconds: float, log: str | None = None) -> None:
        self.seconds, self.record = seconds, log

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.record is not None:
            with open(self.record, "a") as f:
                f.write(f"{trainer.current_epoch},{trainer.global_step}\n")

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(self.seconds)


class _DiesInWorker(Dataset):
    def __init__(self, dataset: Dataset, index: int) -> None:
        self.dataset, self.index = dataset, index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if index == self.index and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
        return self.dataset[index]


class DyingWorkerData(ClassFolderDataModule):
    """Class folders whose DataLoader worker is killed when it loads the first training image."""

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if "train" in self.datasets:
            self.datasets["train"] = _DiesInWorker(self.datasets["train"], index=0)


class InterruptAt(L.Callback):
    """Raise KeyboardInterrupt (as Ctrl-C does) at a training batch of an epoch."""

    def __init__(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if trainer.current_epoch == self.epoch and idx == self.batch:
            raise KeyboardInterrupt
