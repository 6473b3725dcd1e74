"""ImageDataModule: what every vitkit data module shares — timm transforms and DataLoaders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from vitkit.data.balance import BalancedSampler, balancing_advice, imbalance_of
from vitkit.data.images import UNLABELLED, ImageDataset, Sample, find_unreadable, list_images
from vitkit.errors import DataError
from vitkit.tasks import LabelStats

STAGES = ("train", "val", "test", "predict")


class ImageDataModule(L.LightningDataModule):
    """Base class of vitkit's data modules; on its own, the images of ``predict_root`` for a trained model.

    Subclasses implement :attr:`splits` and ``class_names`` (and ``label_stats`` when the task needs them). The
    base class has no labelled splits: ``vitkit predict|embed --ckpt_path CKPT --data.predict_root DIR`` uses it,
    with the classes taken from the checkpoint.

    Transforms come from timm's ``create_transform`` with the data config of the model being trained
    (input size, mean/std, interpolation, crop), so pretrained-weight statistics are never hard-coded.

    Args:
        batch_size: per-device batch size.
        num_workers: DataLoader worker processes (per device).
        image_size: override the model's input size (height = width); ViTs need ``img_size`` on the backbone instead.
        augment: extra ``timm.data.create_transform`` arguments for training, e.g. ``{scale: [0.5, 1.0],
            hflip: 0.5, auto_augment: rand-m9-mstd0.5, re_prob: 0.25, color_jitter: 0.4}``. Colour jitter is off
            unless given here (timm's 0.4 is an ImageNet-scale default: on small sets colour is often the cue).
        data_config: explicit timm data config; by default it is read from the model in ``setup``.
        predict_root: images for ``vitkit predict`` (any folder, searched recursively, no labels needed);
            without it, predict runs on the test split, else on val.
        on_bad_image: what to do with files that do not decode (truncated, empty, not an image), found by a scan
            of every image before training: ``error`` lists them all and stops; ``skip`` leaves them out, with a
            warning giving how many. Under DDP each process scans its share and the results are shared.
        scan_cache: remember scan results by file path, size and mtime in ``$VITKIT_CACHE_DIR`` (default
            ``~/.cache/vitkit``), so later runs decode only new or changed files; ``false`` scans everything.
        sampler: ``balanced`` draws training images so that every class is equally likely (inverse class
            frequency; multi-label: by a sample's rarest label), with replacement, seeded, epochs as long as
            without it (:class:`~vitkit.data.balance.BalancedSampler`); ``none`` (default) shuffles.
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = min(4, os.cpu_count() or 1),
        image_size: int | None = None,
        augment: dict[str, Any] | None = None,
        data_config: dict[str, Any] | None = None,
        predict_root: str | Path | None = None,
        on_bad_image: Literal["error", "skip"] = "error",
        scan_cache: bool = True,
        sampler: Literal["none", "balanced"] | None = None,
    ) -> None:
        super().__init__()
        if sampler not in (None, "none", "balanced"):
            raise ValueError(f"sampler must be 'none' or 'balanced', got {sampler!r}.")
        self.sampler = None if sampler == "none" else sampler
        #: What ``predict`` reads instead of ``predict_root`` / test / val when set (``vitkit report``: each split).
        self.predict_split: str | None = None
        self.batch_size = batch_size
        self.num_workers = min(num_workers, _cpus())  # a GPU recipe's 8 workers on a 2-core laptop: 2
        self.image_size = image_size
        self.augment = dict(augment or {})
        self.data_config = data_config
        self.predict_root = Path(predict_root).expanduser() if predict_root is not None else None
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}.")
        self.on_bad_image = on_bad_image
        self.scan_cache = scan_cache
        self.datasets: dict[str, Dataset] = {}
        #: ``{split: (images, {name: reason})}`` while :meth:`listing_bad_images` gathers every split's findings.
        self._bad_images: dict[str, tuple[int, dict[str, str]]] | None = None

    @property
    def num_outputs(self) -> int | None:
        """Size of the model's output layer (number of classes, labels or targets); None without labelled data."""
        return len(self.class_names) if self.class_names is not None else None

    @property
    def class_names(self) -> list[str] | None:
        """Names of the outputs, stored in the model's checkpoint."""
        return None

    @property
    def label_stats(self) -> LabelStats | None:
        """Statistics of the training targets that the task needs (see :mod:`vitkit.tasks`)."""
        return None

    @property
    def splits(self) -> dict[str, list[Sample] | None]:
        """``{"train": [...], "val": [...], "test": [...] or None}``; subclasses scan their source once."""
        return {"train": None, "val": None, "test": None}

    def samples(self, stage: str) -> list[Sample] | None:
        """The ``(path, target)`` samples of ``stage`` (train/val/test/predict), or ``None`` if it has none."""
        if stage != "predict":
            return self.splits[stage]
        if self.predict_split is not None:
            return self.splits[self.predict_split]
        if self.predict_root is None:
            samples = self.splits["test"] or self.splits["val"]
            if samples is None:
                raise DataError("no images to predict on: give a folder with --data.predict_root DIR.")
            return samples
        if not self.predict_root.is_dir():
            raise DataError(f"predict_root not found: {self.predict_root}")
        images = list_images(self.predict_root)
        if not images:
            raise DataError(f"no images found under predict_root {self.predict_root}.")
        return [(path, UNLABELLED) for path in images]

    @property
    def predict_source(self) -> str:
        """A name for what ``predict`` reads: the ``predict_root`` folder's name, else ``test`` or ``val``."""
        if self.predict_root is not None:
            return self.predict_root.resolve().name or "images"
        return "test" if self.has_split("test") else "val"

    def has_split(self, split: str) -> bool:
        """Whether this data has labelled ``split`` (train/val/test) samples."""
        return self.splits.get(split) is not None

    def require_split(self, split: str) -> None:
        """Raise a one-line DataError if this data has no ``split`` (checked before a model is loaded)."""
        if not self.has_split(split):
            raise DataError(f"{self.describe_source()} has no {split} split: {self.split_hint(split)}")

    def describe_source(self) -> str:
        """Where the data comes from, for messages."""
        return type(self).__name__

    def split_hint(self, split: str) -> str:
        """What to do to give this data a ``split`` (see :meth:`require_split`)."""
        return "give labelled data, e.g. --data.class_path vitkit.ClassFolderDataModule --data.root DIR."

    def resolved_data_config(self) -> dict[str, Any]:
        """The timm data config used for transforms: explicit, else the attached model's, else timm's default."""
        from timm.data import resolve_data_config  # lazily: see vitkit.backbone

        config = self.data_config
        if config is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            config = getattr(module, "data_config", None) or resolve_data_config(
                pretrained_cfg={"input_size": (3, 224, 224)}
            )
        config = dict(config)
        if self.image_size is not None:
            config["input_size"] = (config["input_size"][0], self.image_size, self.image_size)
        return config

    def transform(self, train: bool) -> Any:
        """timm's train (augmenting) or eval (resize + center crop) transform for the resolved data config.

        A model with a ``train_transform(data_config)`` method (the pretraining methods of :mod:`vitkit.pretrain`:
        multi-crop views, MAE crops) supplies the training transform itself.
        """
        from timm.data import create_transform

        config = self.resolved_data_config()
        module = self.trainer.lightning_module if self.trainer is not None else None
        if train and callable(getattr(module, "train_transform", None)):
            return module.train_transform(config)
        extra = {"color_jitter": None, **self.augment} if train else {}
        return create_transform(**config, is_training=train, **extra)

    def setup(self, stage: str) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}[stage]
        with self.listing_bad_images():
            for split in wanted:
                samples = self.samples(split)
                if samples is not None:
                    samples = self._readable(split, samples)
                    self.datasets[split] = ImageDataset(samples, self.transform(train=split == "train"))
        if stage == "fit":
            self._suggest_balancing()

    def _suggest_balancing(self) -> None:
        """Say once, as ``check-data`` does, when the training classes are far apart in size and nothing balances
        them (no ``sampler balanced``, no class weights in the task)."""
        targets = getattr(getattr(self.datasets.get("train"), "samples", None), "targets", None)
        task = getattr(self.trainer.lightning_module, "task", None) if self.trainer is not None else None
        weighted = getattr(task, "class_weights", None) is not None or getattr(task, "use_pos_weight", False)
        found = imbalance_of(targets, self.class_names) if targets is not None and self.class_names else None
        if found is None or self.sampler == "balanced" or weighted:
            return
        ratio, largest, smallest = found
        advice = balancing_advice(ratio, "class" if np.asarray(targets).ndim == 1 else "label")
        if advice:
            rank_zero_warn(f"the training data is imbalanced ({ratio:.1f}x: {largest} vs {smallest}): {advice}")

    @contextmanager
    def listing_bad_images(self) -> Iterator[None]:
        """Within it, the unreadable images of every split scanned are gathered; with ``on_bad_image=error`` one
        error lists them all at the end (train and val at once, not one split per run)."""
        self._bad_images = {}
        try:
            yield
        finally:
            found, self._bad_images = self._bad_images, None
        if found:
            raise DataError(_unreadable_message(found))

    def _readable(self, split: str, samples: list[Sample]) -> list[Sample]:
        """Decode every image once, before any DataLoader worker does; apply ``on_bad_image`` to failures.

        Under DDP, process ``r`` of ``n`` checks images ``r, r + n, ...`` and the processes exchange what they
        found (``all_gather_object``: no shared file system needed), so no image is decoded twice."""
        world, rank = self._world()
        paths = [path for path, _ in samples][rank::world]
        bad = find_unreadable(paths, workers=max(1, self.num_workers), cache=self.scan_cache)
        bad = self._gather_unreadable(bad)
        if not bad:
            return samples
        self._unreadable_found(split, len(samples), {str(path): reason for path, reason in bad.items()})
        return [(path, target) for path, target in samples if path not in bad]

    def _world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the attached trainer, ``(1, 0)`` without one."""
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    def _gather_unreadable(self, bad: dict[Any, str]) -> dict[Any, str]:
        """Every process's ``{sample: reason}`` findings, merged (in rank order) into one dict on every process."""
        if self._world()[0] == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return bad
        parts: list[dict[Any, str] | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, bad)
        return {key: reason for part in parts for key, reason in (part or {}).items()}

    def _unreadable_found(self, split: str, total: int, bad: dict[str, str]) -> None:
        """Apply ``on_bad_image``: stop with every unreadable sample named, or warn how many are left out."""
        if self.on_bad_image == "error":
            if self._bad_images is None:
                raise DataError(_unreadable_message({split: (total, bad)}))
            self._bad_images[split] = (total, bad)
            return
        rank_zero_warn(f"skipped {len(bad)} of {total} {split} images that cannot be read (on_bad_image=skip)")

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if split not in self.datasets:
            self.require_split(split)
            raise DataError(f"{self.describe_source()} has no {split} images.")
        dataset, sampler = self.datasets[split], None
        if split == "train" and self.sampler == "balanced":
            sampler, shuffle = self._balanced_sampler(dataset), False
        if split != "train" and self.trainer is not None and self.trainer.world_size > 1:
            # Lightning's default pads every process to the same length by repeating samples, which counts them
            # twice in the metrics (and the prediction files); this sampler gives each sample to one process.
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    def _balanced_sampler(self, dataset: Dataset) -> BalancedSampler:
        targets = getattr(getattr(dataset, "samples", None), "targets", None)
        if targets is None:
            raise DataError(
                f"{self.describe_source()}: sampler balanced needs the training targets up front; streamed data "
                "has none. Weight the loss instead (Classification class_weights: auto, MultiLabel pos_weight: true)."
            )
        world, rank = self._world()
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # seed_everything's, as Lightning's own samplers use
        return BalancedSampler(targets, num_replicas=world, rank=rank, seed=seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")


def _unreadable_message(found: dict[str, tuple[int, dict[str, str]]]) -> str:
    """Every split's unreadable images (the first 50 named, with their reasons) and what to do."""
    counts = [f"{len(bad)} of {total} {split}" for split, (total, bad) in found.items()]
    everything = [(name, reason) for _, bad in found.values() for name, reason in bad.items()]
    head = f"{counts[0]} images" if len(counts) == 1 else f"{len(everything)} images ({', '.join(counts)})"
    listed = "\n  ".join(f"{name}: {reason}" for name, reason in everything[:50])
    more = f"\n  ... and {len(everything) - 50} more" if len(everything) > 50 else ""
    return (
        f"{head} cannot be read:\n  {listed}{more}\n"
        "Fix or remove them, or leave them out with --data.on_bad_image skip."
    )


def _cpus() -> int:
    """CPUs this process may use (the affinity mask, as in containers), else all."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
