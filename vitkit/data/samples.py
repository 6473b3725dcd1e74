"""SampleArray: ``(path, target)`` samples kept in numpy arrays, so that memory stays flat in DataLoader workers."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class SampleArray(Sequence):
    """A read-only sequence of ``(Path, target)`` samples stored in three numpy arrays.

    DataLoader workers are forked from the training process and share its memory until a page is written. Reading
    a Python list of tuples writes to every tuple it touches (reference counts), and the garbage collector writes
    to all of them, so each worker slowly copies the whole list: with millions of samples, gigabytes per worker
    (PyTorch issue 13246). Here the paths are one UTF-8 byte buffer with offsets and the targets one array (class
    indices as int64; label vectors and regression targets as float32 where that is exact, else float64): no Python
    object per sample, nothing for a worker to copy.

    Items come back as before: ``(Path, int)`` or ``(Path, tuple[float, ...])``.
    """

    def __init__(self, samples: Iterable[tuple[str | Path, Any]]) -> None:
        encoded: list[bytes] = []
        targets: list[Any] = []
        for path, target in samples:
            encoded.append(os.fsencode(path))
            targets.append(target)
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._paths = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._targets = _target_array(targets)

    @property
    def targets(self) -> np.ndarray:
        """All targets: shape (N,) of class indices, or (N, outputs) of label vectors / values."""
        return self._targets

    def path(self, index: int) -> str:
        """The path of sample ``index`` as a string."""
        start, end = self._offsets[index], self._offsets[index + 1]
        return os.fsdecode(self._paths[start:end].tobytes())

    def target(self, index: int) -> Any:
        """The target of sample ``index``: an ``int``, or a tuple of floats."""
        value = self._targets[index]
        return int(value) if self._targets.ndim == 1 else tuple(value.tolist())

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> tuple[Path, Any]:  # type: ignore[override]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"SampleArray indices must be integers, got {type(index).__name__}.")
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        return Path(self.path(index)), self.target(index)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


def _target_array(targets: Sequence[Any]) -> np.ndarray:
    if not targets or not isinstance(targets[0], (tuple, list, np.ndarray)):
        return np.asarray(targets, dtype=np.int64)
    exact = np.asarray(targets, dtype=np.float64)
    compact = exact.astype(np.float32)
    return compact if np.array_equal(compact, exact) else exact
