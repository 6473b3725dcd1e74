"""ClassFolderDataModule: images sorted into one sub-folder per class."""

from __future__ import annotations

import random
from collections import defaultdict
from functools import cached_property
from pathlib import Path
from typing import Any

from vitkit.data.base import ImageDataModule
from vitkit.data.images import Sample, list_images
from vitkit.errors import DataError
from vitkit.tasks import LabelStats

_VAL_NAMES = ("val", "valid", "validation")


class ClassFolderDataModule(ImageDataModule):
    """Multi-class data from class sub-folders (``root/<class>/**/img``), the layout of torchvision's ImageFolder.

    ``root`` either holds ``train/`` and ``val/`` (or ``valid/``; ``test/`` optional) class-folder trees, or is
    itself one class-folder tree, split into train/val by a seeded, stratified ``val_fraction``. Class names are
    the train folder names, sorted. ``vitkit predict`` reads ``predict_root`` (any folder of images, searched
    recursively) if given, else the test split, else val.

    Args:
        root: the dataset folder.
        val_fraction: share of each class held out for validation when ``root`` has no val split.
        seed: seed of that split (independent of the training seed).
        **kwargs: :class:`~vitkit.data.base.ImageDataModule` arguments (batch_size, num_workers, augment,
            predict_root, ...).
    """

    def __init__(
        self,
        root: str | Path,
        val_fraction: float = 0.2,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"ClassFolderDataModule: val_fraction must be in (0, 1), got {val_fraction}.")
        self.root = Path(root).expanduser()
        self.val_fraction = val_fraction
        self.seed = seed

    @property
    def class_names(self) -> list[str]:
        return self.splits["classes"]

    @property
    def label_stats(self) -> LabelStats:
        """``class_counts``: training images per class (for ``Classification(class_weights="auto")``)."""
        counts = [0] * len(self.class_names)
        for _, target in self.splits["train"]:
            counts[target] += 1
        return {"class_counts": counts}

    def describe_source(self) -> str:
        return f"data root {self.root}"

    def split_hint(self, split: str) -> str:
        if split == "test":
            return (f"put class folders of test images in {self.root / 'test'}/<class>/, or score the val split "
                    "with `vitkit validate`.")  # fmt: skip
        return f"expected {self.root}/<class>/<images> or {self.root}/{split}/<class>/<images>."

    @cached_property
    def splits(self) -> dict[str, Any]:  # also holds "classes"
        """Scan the folders once: ``{"classes": [...], "train": [...], "val": [...], "test": [...] or None}``."""
        if not self.root.is_dir():
            raise DataError(f"data root not found: {self.root} (set --data.root to a folder of class sub-folders).")
        train_dir = self.root / "train"
        val_dir = next((self.root / n for n in _VAL_NAMES if (self.root / n).is_dir()), None)
        if train_dir.is_dir():
            classes, train = _scan_class_tree(train_dir)
            val = _scan_class_tree(val_dir, classes)[1] if val_dir is not None else None
        else:
            classes, train = _scan_class_tree(self.root)
            val = None
        if val is None:
            train, val = stratified_split(train, self.val_fraction, self.seed)
        test_dir = self.root / "test"
        test = _scan_class_tree(test_dir, classes)[1] if test_dir.is_dir() else None
        return {"classes": classes, "train": train, "val": val, "test": test}


def _scan_class_tree(folder: Path, known: list[str] | None = None) -> tuple[list[str], list[Sample]]:
    """Classes and samples of a class-folder tree; with ``known`` classes, every folder must be one of them."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"no class sub-folders in {folder}: expected {folder}/<class name>/<image files>.")
    classes = known if known is not None else [p.name for p in class_dirs]
    if known is not None:
        unknown = [p.name for p in class_dirs if p.name not in known]
        if unknown:
            raise DataError(
                f"{folder} has classes that are not in the train split: {', '.join(unknown)}. "
                f"Train classes are: {', '.join(known)}. Rename or remove those folders."
            )
    index = {name: i for i, name in enumerate(classes)}
    samples: list[Sample] = []
    for class_dir in class_dirs:
        images = list_images(class_dir)
        if not images:
            raise DataError(f"class folder {class_dir} has no images (looked for .jpg, .png, .webp, ... recursively).")
        samples += [(path, index[class_dir.name]) for path in images]
    if known is None and len(classes) < 2:
        raise DataError(f"{folder} has only one class folder ({classes[0]}); classification needs at least two.")
    return classes, samples


def stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``fraction`` of each target's samples (at least one where a class has two or more), seeded."""
    by_target: dict[Any, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_target[sample[1]].append(sample)
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for target in sorted(by_target):
        group = sorted(by_target[target])
        rng.shuffle(group)
        n_val = min(len(group) - 1, max(1, round(len(group) * fraction))) if len(group) > 1 else 0
        val += group[:n_val]
        train += group[n_val:]
    return train, val
