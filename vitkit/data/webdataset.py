"""WebDatasetDataModule: images and labels streamed from WebDataset tar shards (local files or any URL webdataset
opens: ``https://``, ``pipe:aws s3 cp ... -``, ``s3://`` via fsspec)."""

from __future__ import annotations

import json
import os
import tarfile
from functools import cached_property
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import IterableDataset, default_collate

from vitkit.data.base import ImageDataModule
from vitkit.data.streams import StreamDecoder, require, stream_loader
from vitkit.errors import DataError
from vitkit.tasks import LabelStats

_STAGES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


class WebDatasetDataModule(ImageDataModule):
    """Images streamed from tar shards, one sample per key (``0001.jpg`` + ``0001.cls``), as written by
    ``vitkit shard`` or any WebDataset tool. Needs ``pip install 'vitkit[webdataset]'``.

    Each shard goes to one process (``webdataset.split_by_node``) and, within it, to one DataLoader worker
    (``split_by_worker``), so no sample is read twice. Training reshuffles the shard order and the samples (in a
    buffer) every epoch. An epoch is as many batches as every (process, worker) can fill from its own shards:
    each sample is seen at most once per epoch, and exactly once when the shards divide evenly (equal shard sizes,
    a multiple of processes x workers shards). Sizes come from ``sizes.json`` next to the shards (written by
    ``vitkit shard``; the OpenCLIP convention), else local tars are counted, else give ``samples_per_epoch``.
    Validation, test and predict read every sample once. Bad samples follow ``on_bad_image``: ``error`` stops
    with the sample's key, ``skip`` logs the key and goes on.

    Args:
        train: training shards: a brace pattern (``data/train-{000000..000099}.tar``) or a list of them.
        val: validation shards.
        test: test shards (``vitkit test``; ``vitkit predict`` reads test, else val, unless ``predict_root``).
        image_key: extensions that may hold the image (``;``-separated, first found wins).
        label_key: extension of the target: a class index (``3``), or a JSON list of floats (label vector or
            regression values).
        class_names: output names; default: ``classes.txt`` (one name per line) next to the train shards.
        shuffle_buffer: samples in the training shuffle buffer (per worker).
        samples_per_epoch: training samples per epoch over all processes; default from the shard sizes.
        seed: seed of the shard and sample shuffles.
        **kwargs: :class:`~vitkit.data.base.ImageDataModule` arguments (batch_size, num_workers, augment, ...).
    """

    def __init__(
        self,
        train: str | list[str] | None,
        val: str | list[str] | None,
        test: str | list[str] | None = None,
        image_key: str = "jpg;jpeg;png;webp",
        label_key: str = "cls",
        class_names: list[str] | None = None,
        shuffle_buffer: int = 2000,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require("webdataset", "webdataset")
        self.urls = {"train": _expand(train), "val": _expand(val), "test": _expand(test)}
        self.image_keys = [k.strip().lower() for k in image_key.split(";") if k.strip()]
        self.label_key = label_key.lower()
        self._class_names = list(class_names) if class_names else None
        self.shuffle_buffer = shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self._workers: dict[str, int] = {}  # DataLoader workers per split: no more than the shards can feed

    @cached_property
    def class_names(self) -> list[str] | None:  # type: ignore[override]
        if self._class_names is not None:
            return self._class_names
        text = self._sidecar("classes.txt")
        if text is None:
            if self.urls["train"]:
                raise DataError(
                    f"no class names for {self.urls['train'][0]}: put classes.txt (one name per line) next to the "
                    "shards or give --data.class_names."
                )
            return None
        return [line.strip() for line in text.splitlines() if line.strip()]

    @cached_property
    def label_stats(self) -> LabelStats | None:  # type: ignore[override]
        text = self._sidecar("label_stats.json")  # written by `vitkit shard` for multi-label and regression data
        return json.loads(text) if text else None

    def has_split(self, split: str) -> bool:
        return bool(self.urls.get(split))

    def describe_source(self) -> str:
        first = next((urls[0] for urls in self.urls.values() if urls), "no shards")
        return f"WebDataset shards {first}"

    def split_hint(self, split: str) -> str:
        return f"give its shards with --data.{split} 'shards/{split}-{{000000..000009}}.tar' (vitkit shard)."

    def setup(self, stage: str) -> None:
        if stage == "predict" and self.predict_root is not None and self.predict_split is None:
            return super().setup(stage)
        for split in _STAGES[stage]:
            source = split if split != "predict" else self.predict_split or ("test" if self.urls["test"] else "val")
            urls = self.urls[source]
            if urls:
                self.datasets[split] = self._pipeline(urls, split)

    def _loader(self, split: str, shuffle: bool = False) -> Any:
        dataset = self.datasets.get(split)
        if not isinstance(dataset, IterableDataset):
            return super()._loader(split, shuffle)
        return stream_loader(dataset, self._workers.get(split, self.num_workers))

    def _pipeline(self, urls: list[str], split: str) -> IterableDataset:
        """shards -> split by process and worker -> (shuffled) -> samples -> (shuffled) -> decoded -> batches.

        Evaluation with fewer shards than processes splits by sample instead (every process reads all shards and
        keeps every n-th sample), so that no process is left without data."""
        wds = require("webdataset", "webdataset")
        train = split == "train"
        world, rank = self._world()
        workers = max(1, self.num_workers)
        if train and world <= len(urls) < world * workers:  # each worker reads whole shards: fewer workers
            workers = len(urls) // world
            rank_zero_info(f"vitkit: {len(urls)} train shard(s) for {world} process(es): reading with {workers} "
                           "DataLoader worker(s) per process (more shards: vitkit shard --maxcount N)")  # fmt: skip
        self._workers[split] = workers if self.num_workers > 0 else 0
        by_sample = not train and world > max(1, len(urls))
        decoder = StreamDecoder(self.transform(train), self.on_bad_image, f"the {split} shards", split != "predict")
        handler = wds.warn_and_continue if self.on_bad_image == "skip" else wds.reraise_exception
        by_node = [] if by_sample else [wds.split_by_node]
        stages: list[Any] = [wds.SimpleShardList(urls), *by_node, wds.split_by_worker]
        if train:
            stages.append(wds.detshuffle(len(urls), initial=len(urls), seed=self.seed))
        stages.append(wds.tarfile_to_samples(handler=handler))
        if by_sample:
            stages.append(wds.slice(rank, None, world))
        if train:
            stages.append(wds.detshuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 2, seed=self.seed))
        stages.append(_Decode(decoder, self.image_keys, self.label_key))
        stages.append(wds.batched(self.batch_size, collation_fn=default_collate, partial=not train))
        pipeline = wds.DataPipeline(*stages)
        if train:
            batches = self._batches_per_worker(urls, world, workers)
            return pipeline.with_epoch(nbatches=batches).with_length(batches * workers, silent=True)
        lengths = self._eval_batches(urls, world, workers, by_sample)
        # Lightning compares lengths across processes: give one only where every process has batches.
        return pipeline.with_length(lengths[rank], silent=True) if lengths and min(lengths) > 0 else pipeline

    def _eval_batches(self, urls: list[str], world: int, workers: int, by_sample: bool) -> list[int] | None:
        """Each process's number of evaluation batches, where the shard sizes are known."""
        sizes = self._sizes(urls, required=False)
        if sizes is None:
            return None
        lengths = []
        for rank in range(world):
            shards = urls if by_sample else urls[rank::world]
            counts = [sum(sizes[u] for u in shards[w::workers]) for w in range(workers)]
            if by_sample:
                counts = [len(range(rank, count, world)) for count in counts]
            lengths.append(sum(-(-count // self.batch_size) for count in counts))
        return lengths

    def _batches_per_worker(self, urls: list[str], world: int, workers: int) -> int:
        """Training batches each (process, worker) yields per epoch: what the smallest share of shards fills."""
        slots = [urls[r::world][w::workers] for r in range(world) for w in range(workers)]
        if len(urls) < world:  # every process must read whole shards of its own
            raise DataError(
                f"{len(urls)} train shards cannot feed {world} process(es): write at least {world} shards "
                "(vitkit shard --maxcount N) or train on fewer devices."
            )
        if not all(slots):
            raise DataError(
                f"{len(urls)} train shards cannot feed {world} process(es) x {workers} worker(s): write at least "
                f"{world * workers} shards (vitkit shard --maxcount N) or lower --data.num_workers."
            )
        if self.samples_per_epoch is not None:
            batches = self.samples_per_epoch // (world * workers * self.batch_size)
        else:
            sizes = self._sizes(urls, required=True)
            batches = min(sum(sizes[u] for u in slot) for slot in slots) // self.batch_size
        if batches < 1:
            raise DataError(
                f"the train shards are too small for batches of {self.batch_size} on {world} process(es) x "
                f"{workers} worker(s): lower --data.batch_size or num_workers."
            )
        return batches

    def _sizes(self, urls: list[str], required: bool) -> dict[str, int] | None:
        """Samples per shard: from ``sizes.json`` next to the shards, else by counting local tar files."""
        text = self._sidecar("sizes.json", urls)
        known = json.loads(text) if text else {}
        sizes = {u: known.get(os.path.basename(u)) for u in urls}
        for url in (u for u, n in sizes.items() if n is None):
            if os.path.isfile(url):
                sizes[url] = _count_samples(url)
            elif required:
                raise DataError(
                    f"the number of samples in {url} is unknown: put sizes.json ({{shard name: samples}}) next to "
                    "the shards, or give --data.samples_per_epoch."
                )
            else:
                return None
        return sizes  # type: ignore[return-value]

    def _sidecar(self, name: str, urls: list[str] | None = None) -> str | None:
        """Text of ``name`` in the folder of the given (else the first train/val/test) shards, or None."""
        urls = urls or self.urls["train"] or self.urls["val"] or self.urls["test"]
        if not urls:
            return None
        path = f"{os.path.dirname(urls[0]) or '.'}/{name}"
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
        if "://" not in path:
            return None
        return _read_remote(path)


def _read_remote(url: str) -> str | None:
    """Text of a remote sidecar file, None if the server says it is not there (HTTP 404/410, FileNotFoundError).

    Any other failure (network, credentials, server) is a :class:`DataError` naming the file over http(s), where
    the status is known, and a warning elsewhere (a ``pipe:`` command's exit status cannot tell "missing" apart).
    """
    import urllib.error
    import urllib.request

    what = f"cannot read {url} (a sidecar file of the shards)"
    if url.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return response.read().decode("utf-8")
        except urllib.error.HTTPError as err:
            if err.code in (404, 410):
                return None
            raise DataError(f"{what}: HTTP {err.code} {err.reason}; check the URL and its credentials.") from err
        except (OSError, ValueError) as err:  # URLError (refused, DNS, TLS) and timeouts are OSErrors
            raise DataError(f"{what}: {getattr(err, 'reason', err)}; check the network and the URL.") from err
    try:
        with require("webdataset", "webdataset").gopen(url) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        return None
    except Exception as err:  # any scheme's own errors: named, then read as absent
        rank_zero_warn(f"vitkit: {what}, going on without it: {type(err).__name__}: {err}".replace("\n", " "))
        return None


class _Decode:
    """Pipeline stage: raw samples -> ``(image tensor, target, key)``, dropping those that ``skip`` leaves out."""

    def __init__(self, decoder: StreamDecoder, image_keys: list[str], label_key: str) -> None:
        self.decoder = decoder
        self.image_keys = image_keys
        self.label_key = label_key

    def __call__(self, samples: Any) -> Any:
        for sample in samples:
            image = next((sample[k] for k in self.image_keys if k in sample), None)
            decoded = self.decoder(image, sample.get(self.label_key), sample.get("__key__"), sample.get("__url__"))
            if decoded is not None:
                yield decoded


def _expand(urls: str | list[str] | None) -> list[str]:
    """Shard URLs with braces expanded (``a-{000..009}.tar``) and ``~`` resolved in local paths."""
    if not urls:
        return []
    from webdataset.shardlists import expand_urls

    items = [urls] if isinstance(urls, str) else list(urls)
    expanded = [u for item in items for u in expand_urls(item)]
    return [os.path.expanduser(u) if "://" not in u and not u.startswith("pipe:") else u for u in expanded]


def _count_samples(path: str) -> int:
    """Samples (distinct keys) in a local tar shard; reads only the headers."""
    from webdataset.tariterators import base_plus_ext

    try:
        with tarfile.open(path) as tar:
            keys = {base_plus_ext(m.name)[0] for m in tar if m.isfile()}
    except (OSError, tarfile.TarError) as err:
        raise DataError(f"cannot read shard {path}: {err}") from err
    return len(keys - {None})
