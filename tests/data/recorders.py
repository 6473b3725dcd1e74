"""Test plug-ins given to `vitkit` by class_path: they record what each DDP process did, in files."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import lightning as L

import vitkit.data.images as images
from vitkit import ClassFolderDataModule


class KeyRecorder(L.Callback):
    """Write the sample keys of every training batch to ``output/rank<r>-epoch<e>.txt``."""

    def __init__(self, output: str) -> None:
        self.output = Path(output)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        self.output.mkdir(parents=True, exist_ok=True)
        with open(self.output / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.txt", "a") as f:
            f.writelines(f"{key}\n" for key in batch[2])


class CountingFolderDataModule(ClassFolderDataModule):
    """Class folders whose pre-training scan writes the files it decodes to ``log_dir/decoded-rank<r>.txt``."""

    def __init__(self, log_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log_dir = Path(log_dir)

    def setup(self, stage: str) -> None:
        decoded: list[str] = []
        lock = threading.Lock()
        check = images.check_image

        def counting(path: Any) -> Any:
            with lock:
                decoded.append(str(path))
            return check(path)

        images.check_image = counting
        try:
            super().setup(stage)
        finally:
            images.check_image = check
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / f"decoded-rank{self._world()[1]}.txt", "a") as f:
                f.writelines(f"{path}\n" for path in decoded)


class TargetRecorder(L.Callback):
    """Write the targets of every training batch to ``output/rank<r>-epoch<e>.txt`` (one per line)."""

    def __init__(self, output: str) -> None:
        self.output = Path(output)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        self.output.mkdir(parents=True, exist_ok=True)
        with open(self.output / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.txt", "a") as f:
            f.writelines(f"{int(target)}\n" for target in batch[1])
