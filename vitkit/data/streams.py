"""What the streamed data modules (WebDataset shards, Hugging Face datasets) share: decoding samples with the
``on_bad_image`` policy, targets from stored labels, batches that name their samples, and optional packages."""

from __future__ import annotations

import importlib
import io
import json
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from vitkit.data.images import UNLABELLED, load_image
from vitkit.errors import DataError

log = logging.getLogger("vitkit.data")


def require(module: str, extra: str) -> ModuleType:
    """Import an optional package, or stop with one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"this data module needs the '{module}' package: pip install 'vitkit[{extra}]'") from None


def target_tensor(value: Any) -> Any:
    """A stored target as the model takes it: a class index stays an ``int``, a vector becomes float32."""
    if value is None:
        return UNLABELLED
    if isinstance(value, (bytes, str)):
        text = value.decode() if isinstance(value, bytes) else value
        value = json.loads(text) if text.strip().startswith("[") else int(text)
    if isinstance(value, (list, tuple)):
        return torch.tensor([float(v) for v in value], dtype=torch.float32)
    return int(value)


class StreamDecoder:
    """Decode one streamed image (bytes or a path) the way :func:`~vitkit.data.images.load_image` does and apply
    the transform; a sample that fails follows ``on_bad_image``: ``error`` stops with its key and reason, ``skip``
    logs its key (logger ``vitkit.data``) and drops it (returns None). A plain class so DataLoader workers can
    receive it under any start method."""

    def __init__(self, transform: Callable | None, on_bad_image: str, source: str, labelled: bool) -> None:
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.source = source
        self.labelled = labelled

    def __call__(
        self, image: bytes | str | None, target: Any, key: str, where: str | None = None
    ) -> tuple[Any, Any, str] | None:
        """``(transform(image), target, key)``, or None for a bad sample under ``skip``; ``where``: its shard."""
        try:
            if image is None:
                raise ValueError("no image in the sample")
            if target is None and self.labelled:
                raise ValueError("no label in the sample")
            picture = load_image(io.BytesIO(image) if isinstance(image, bytes) else image)
            value = target_tensor(target)
        except Exception as err:
            reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            if self.on_bad_image == "error":
                raise DataError(
                    f"sample {key} of {where or self.source} cannot be read: {reason}. Fix or remove it, or leave such "
                    "samples out with --data.on_bad_image skip."
                ) from err
            log.warning("skipped sample %s of %s (on_bad_image=skip): %s", key, where or self.source, reason)
            return None
        return (self.transform(picture) if self.transform is not None else picture), value, key


def stream_loader(dataset: IterableDataset, num_workers: int) -> DataLoader:
    """A DataLoader over a stream that batches itself (so each worker yields whole batches)."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
