"""HFDatasetDataModule: images and labels from a Hugging Face ``datasets`` dataset (Arrow/Parquet), in memory-mapped
tables or streamed."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset, IterableDataset

from vitkit.data.base import ImageDataModule
from vitkit.data.hf_rows import HFImageDataset, HFStream, LabelCoder, dataset_key, remember_scan, scan_rows
from vitkit.data.streams import StreamDecoder, require, stream_loader
from vitkit.errors import DataError
from vitkit.tasks import LabelStats

_STAGES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


class HFDatasetDataModule(ImageDataModule):
    """Images from a Hugging Face dataset: a ``save_to_disk`` folder, a local folder or data files that
    ``datasets.load_dataset`` reads (imagefolder, parquet, ...), or a hub name (online). Needs
    ``pip install 'vitkit[hf]'``.

    The task follows the label feature: ``ClassLabel`` -> classification (class names from the feature; integer or
    string columns get their sorted distinct values), a list of ``ClassLabel`` -> multi-label, float columns (one,
    or a list given as ``label_column``) -> regression.

    Without ``streaming`` the tables are memory-mapped (flat memory in DataLoader workers) and, as for image
    folders, every image is decoded once before training (in threads; split over DDP processes). The result is
    remembered in the vitkit cache under the dataset's Arrow files (names, sizes, mtimes), so a second run does not
    decode again; datasets held only in memory are scanned every time. With ``streaming`` nothing can be checked up
    front: a bad sample follows ``on_bad_image`` when it is read (``error`` stops naming it, ``skip`` logs its key),
    and an epoch is ``samples_per_epoch`` samples (default: the split's size in the dataset's metadata).

    Args:
        path: the dataset: folder, data-file builder (``parquet``, ``imagefolder``) or hub name.
        image_column: column of the images.
        label_column: column of the targets, or a list of float columns (regression).
        train_split, val_split, test_split: split names; without a val split, ``val_fraction`` of train is held
            out (stratified for classes, seeded).
        streaming: read the splits as streams (``datasets`` IterableDataset) instead of memory-mapped tables.
        name: dataset configuration name (``load_dataset(path, name)``).
        data_files: ``load_dataset``'s data files, e.g. ``{train: a.parquet, validation: b.parquet}``.
        cache_dir: where ``load_dataset`` keeps its Arrow files (default: the Hugging Face cache).
        val_fraction: share of train held out when there is no val split.
        samples_per_epoch: streaming: training samples per epoch over all processes.
        shuffle_buffer: streaming: size of the training shuffle buffer.
        seed: seed of the held-out split and of the stream shuffles.
        **kwargs: :class:`~vitkit.data.base.ImageDataModule` arguments (batch_size, num_workers, augment, ...).
    """

    def __init__(
        self,
        path: str,
        image_column: str = "image",
        label_column: str | list[str] = "label",
        train_split: str = "train",
        val_split: str | None = "validation",
        test_split: str | None = None,
        streaming: bool = False,
        name: str | None = None,
        data_files: str | list[str] | dict[str, Any] | None = None,
        cache_dir: str | None = None,
        val_fraction: float = 0.1,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 2000,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require("datasets", "hf")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"HFDatasetDataModule: val_fraction must be in (0, 1), got {val_fraction}.")
        self.path = path
        self.image_column = image_column
        self.label_column = label_column
        self.split_names = {"train": train_split, "val": val_split, "test": test_split}
        self.streaming = streaming
        self.name = name
        self.data_files = data_files
        self.cache_dir = cache_dir
        self.val_fraction = val_fraction
        self.samples_per_epoch = samples_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self._split_sizes: dict[str, int] = {}

    @cached_property
    def loaded(self) -> Any:
        """The ``DatasetDict`` (or ``IterableDatasetDict``) as ``datasets`` loads it."""
        datasets = require("datasets", "hf")
        folder = Path(self.path).expanduser()
        try:
            if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
                loaded = datasets.load_from_disk(str(folder))
                if isinstance(loaded, datasets.Dataset):
                    loaded = datasets.DatasetDict({self.split_names["train"]: loaded})
                self._split_sizes = {k: len(v) for k, v in loaded.items()}
                if self.streaming:
                    shards = {k: max(1, min(len(v), 64)) for k, v in loaded.items()}
                    return datasets.IterableDatasetDict(
                        {k: v.to_iterable_dataset(num_shards=shards[k]) for k, v in loaded.items()}
                    )
                return loaded
            return datasets.load_dataset(
                self.path, self.name, data_files=self.data_files, cache_dir=self.cache_dir, streaming=self.streaming
            )
        except (FileNotFoundError, ValueError, ConnectionError) as err:
            raise DataError(f"cannot load the Hugging Face dataset {self.path!r}: {err}") from err

    @cached_property
    def coder(self) -> LabelCoder:
        """How the label column(s) become targets: task kind, output names, per-row encoding."""
        train = self._split_table("train")
        if train is None:
            raise DataError(f"{self.path} has no '{self.split_names['train']}' split (have: {', '.join(self.loaded)}).")
        return LabelCoder.from_dataset(train, self.label_column, self.image_column, self.path)

    @property
    def class_names(self) -> list[str]:
        return self.coder.names

    @property
    def label_stats(self) -> LabelStats | None:
        if self.streaming:
            return None
        _, targets, rows = self._rows["train"]  # type: ignore[misc]
        return self.coder.stats(targets[rows])

    @cached_property
    def _rows(self) -> dict[str, tuple[Any, np.ndarray, np.ndarray] | None]:
        """Non-streaming: ``{split: (table, its targets, the rows used)}``; val is held out of train if missing."""
        rows: dict[str, tuple[Any, np.ndarray, np.ndarray] | None] = {}
        for split in ("train", "val", "test"):
            table = self._split_table(split)
            if table is not None:
                targets = self.coder.targets(table)
                rows[split] = (table, targets, np.arange(len(targets)))
            else:
                rows[split] = None
        if rows["val"] is None:
            table, targets, _ = rows["train"]  # type: ignore[misc]
            train, val = _hold_out(targets, self.val_fraction, self.seed, stratify=self.coder.kind == "class")
            rank_zero_info(f"{self.path}: no val split; holding out {len(val)} of {len(targets)} train rows")
            rows["train"], rows["val"] = (table, targets, train), (table, targets, val)
        return rows

    def _split_table(self, split: str) -> Any:
        name = self.split_names[split]
        if name is None or name not in self.loaded:
            if split == "train" or (name is not None and split == "test"):
                raise DataError(f"{self.path} has no split '{name}' (it has {', '.join(self.loaded)}).")
            return None
        return self.loaded[name]

    def has_split(self, split: str) -> bool:
        return split in ("train", "val") or self.split_names.get(split) is not None  # val: held out if not given

    def describe_source(self) -> str:
        return f"Hugging Face dataset {self.path}"

    def split_hint(self, split: str) -> str:
        return f"name the dataset's {split} split with --data.{split}_split NAME."

    def setup(self, stage: str) -> None:
        if stage == "predict" and self.predict_root is not None and self.predict_split is None:
            return super().setup(stage)
        with self.listing_bad_images():
            for split in _STAGES[stage]:
                source = split
                if split == "predict":
                    source = self.predict_split or ("test" if self.split_names["test"] else "val")
                dataset = self._stream(source, split) if self.streaming else self._table(source, split)
                if dataset is not None:
                    self.datasets[split] = dataset
        if stage == "fit":
            self._suggest_balancing()

    def _table(self, source: str, split: str) -> Dataset | None:
        entry = self._rows[source]
        if entry is None:
            return None
        table, targets, rows = entry
        rows = self._readable_rows(source, table, rows)
        decoder = StreamDecoder(self.transform(split == "train"), "error", f"{self.path} {source}", False)
        return HFImageDataset(table, self.image_column, targets, rows, decoder, self.split_names[source] or source)

    def _readable_rows(self, split: str, table: Any, rows: np.ndarray) -> np.ndarray:
        """Decode every row's image once (threads; this process's share under DDP; remembered by dataset files)."""
        world, rank = self._world()
        key = dataset_key(table, self.image_column, rows) if self.scan_cache else None
        share = np.array_split(rows, world)[rank]  # contiguous: Arrow reads it in order
        bad = self._gather_unreadable(scan_rows(table, self.image_column, share, max(1, self.num_workers), key))
        if key is not None and rank == 0:
            remember_scan(key, bad)
        if not bad:
            return rows
        name = self.split_names[split] or split
        self._unreadable_found(split, len(rows), {f"{name}[{i}]": reason for i, reason in sorted(bad.items())})
        return np.setdiff1d(rows, np.fromiter(bad, dtype=np.int64))

    def _stream(self, source: str, split: str) -> IterableDataset | None:
        from datasets.distributed import split_dataset_by_node

        stream = self._split_table(source)
        if stream is None:
            raise DataError(f"{self.path}: streaming needs a '{source}' split; give --data.{source}_split.")
        world, rank = self._world()
        train = split == "train"
        if train:
            stream = stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        stream = split_dataset_by_node(stream, rank=rank, world_size=world)
        self._stream_workers = max(0, min(self.num_workers, stream.n_shards))
        decoder = StreamDecoder(self.transform(train), self.on_bad_image, f"{self.path} {source}", split != "predict")
        batches = self._stream_batches(source, world) if train else None
        name = f"{self.split_names[source]}/rank{rank}"
        dataset = HFStream(stream, self.image_column, self.coder, decoder, self.batch_size, batches, name)
        dataset.workers = max(1, self._stream_workers)
        return dataset

    def _stream_batches(self, source: str, world: int) -> int:
        """Training batches per DataLoader worker and epoch, the same on every process."""
        total = self.samples_per_epoch or self._split_sizes.get(self.split_names[source])
        if total is None:
            splits = getattr(self.loaded[self.split_names[source]].info, "splits", None) or {}
            info = splits.get(self.split_names[source])
            total = getattr(info, "num_examples", None)
        if not total:
            raise DataError(f"{self.path}: the streamed train split's size is unknown; give --data.samples_per_epoch.")
        workers = max(1, self._stream_workers)
        batches = total // (world * workers * self.batch_size)
        if batches < 1:
            raise DataError(f"{self.path}: {total} samples per epoch do not fill one batch per process and worker.")
        return batches

    def _loader(self, split: str, shuffle: bool = False) -> Any:
        dataset = self.datasets.get(split)
        if isinstance(dataset, IterableDataset):
            return stream_loader(dataset, self._stream_workers)
        return super()._loader(split, shuffle)


def _hold_out(targets: np.ndarray, fraction: float, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of train and held-out val: ``fraction`` of each class (or of all rows), seeded."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(targets == c) for c in np.unique(targets)] if stratify else [np.arange(len(targets))]
    val = []
    for group in groups:
        take = min(len(group) - 1, max(1, round(len(group) * fraction))) if len(group) > 1 else 0
        val.append(rng.permutation(group)[:take])
    held = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(targets)), held), held
