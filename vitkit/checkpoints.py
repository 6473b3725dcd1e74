"""Checkpoint files: written atomically, read without running code, carrying what rebuilds the run."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from vitkit.errors import WeightsError


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint on the CPU with ``weights_only=True``; a file that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    kind = not_a_torch_file(path)
    if kind:
        raise WeightsError(f"{path} is {kind}, not a checkpoint: give a .ckpt file that `vitkit fit` or `vitkit "
                           "pretrain` wrote (runs/<recipe>/version_N/checkpoints/).")  # fmt: skip
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # pickle refusing to run code, truncated or non-torch files
        raise WeightsError(f"cannot read checkpoint {path}: {err}") from err


def is_pretraining_checkpoint(path: str | Path | None) -> bool:
    """Whether ``path`` is a checkpoint that ``vitkit pretrain`` wrote (its method's ``_class_path`` in it)."""
    if not path or not Path(path).is_file() or not_a_torch_file(Path(path)):
        return False
    try:
        return "_class_path" in (read_checkpoint(path, mmap=True).get("hyper_parameters") or {})
    except WeightsError:
        return False


def not_a_torch_file(path: Path) -> str | None:
    """What a file is when its first bytes say it cannot be a torch file (``torch.save``'s zip or pickle), e.g.
    ``"an ONNX model"``; ``None`` when it may be one."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK") or head.startswith(b"\x80"):  # torch.save's zip archive; a legacy pickle
        return None
    if not head:
        return "an empty file"
    if path.suffix == ".onnx" or head.startswith(b"\x08"):  # ONNX: a protobuf whose first field is ir_version
        return "an ONNX model (`vitkit export` output, for inference runtimes)"
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        return "a safetensors file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a torch file"
    names = {".yaml": "a YAML file", ".yml": "a YAML file", ".json": "a JSON file"}
    return names.get(path.suffix.lower(), "a text file")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, made crash-safe and code-free.

    - Saving writes a hidden temporary file in the checkpoint's own folder, flushes it to disk, then renames it over
      the target: a crash or a kill at any moment leaves either the previous checkpoint or the new one, whole.
      (Lightning's default writes the file in the system temp folder and moves it, which copies, and so can
      truncate, the target when that folder is on another file system, as ``/tmp`` often is.) A kill during the
      write leaves that temporary file behind; :func:`remove_partial_saves` deletes it when a run starts again.
    - Loading always uses ``weights_only=True``: a checkpoint cannot run code, whoever made it.

    Remote paths (``s3://``, ...) keep Lightning's fsspec writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}.")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes it private (0600); a checkpoint is not
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return None

    def load_checkpoint(
        self, path: str | Path, map_location: Callable | None = None, weights_only: bool | None = True
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location or (lambda s, _: s), weights_only=True)


#: The temporary files of :class:`AtomicCheckpointIO`: ``.NAME.XXXXXXXX.tmp`` (``tempfile.mkstemp``'s random part).
_PARTIAL = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_partial_saves(folder: str | Path) -> list[Path]:
    """Delete the temporary files that saves into ``folder`` interrupted by a kill left behind (each as large as a
    checkpoint, and hidden); return them. Call it only where no save into ``folder`` is under way."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [path for path in folder.iterdir() if _PARTIAL.match(path.name) and path.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def current_umask() -> int:
    """The process's umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class RunInfo(L.Callback):
    """Adds ``checkpoint["vitkit"]``: what evaluating or resuming needs besides the model's own config.

    - ``data``: the data module's config (``class_path`` and ``init_args``, paths as given), so ``vitkit validate
      --ckpt_path C`` evaluates on the data it was trained on;
    - ``data_config``: the timm data config the transforms used (input size, mean/std, interpolation, crop);
    - ``wandb_id``: the W&B run, which ``--ckpt_path`` resuming continues.

    It also removes, as the run starts, what saves interrupted by a kill left in its checkpoint folders
    (:func:`remove_partial_saves`).
    """

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data = data

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for callback in trainer.checkpoint_callbacks:
            folder = getattr(callback, "dirpath", None)
            if folder is not None and "://" not in str(folder):
                for path in remove_partial_saves(folder):
                    rank_zero_info(f"removed {path}, a checkpoint save that was interrupted")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        from vitkit.callbacks import wandb_loggers_of

        data_config = getattr(trainer.datamodule, "resolved_data_config", None)
        wandb = [logger.version for logger in wandb_loggers_of(trainer)]
        checkpoint["vitkit"] = {
            "data": self.data,
            "data_config": _plain(data_config()) if data_config is not None else None,
            "wandb_id": wandb[0] if wandb else None,
        }


def _plain(value: Any) -> Any:
    """Tuples to lists, so the checkpoint holds YAML-like data only."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
