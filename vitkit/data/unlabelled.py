"""UnlabelledDataModule: any folder of images, for self-supervised pretraining (``vitkit pretrain``)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from vitkit.data.base import ImageDataModule
from vitkit.data.folder import ClassFolderDataModule
from vitkit.data.images import UNLABELLED, Sample, list_images
from vitkit.errors import DataError


class UnlabelledDataModule(ImageDataModule):
    """Every image under ``root`` (searched recursively; no labels or class folders needed) as training data.

    The training transform comes from the pretraining method (multi-crop views for DINO, random crops for MAE),
    sized from the backbone's timm data config. Images are scanned once before training, with the same
    ``on_bad_image`` policy as labelled data.

    Args:
        root: the folder of images.
        knn_root: optional small labelled set (a class-folder tree, ``knn_root/<class>/<images>``) for the k-NN
            accuracy monitor (``val/knn_acc``, each epoch); without it nothing is validated.
        **kwargs: :class:`~vitkit.data.base.ImageDataModule` arguments (batch_size, num_workers, on_bad_image, ...).
    """

    def __init__(self, root: str | Path, knn_root: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.knn_root = Path(knn_root).expanduser() if knn_root is not None else None

    def describe_source(self) -> str:
        return f"data root {self.root}"

    def split_hint(self, split: str) -> str:
        return "pretraining data has no labels; give --data.knn_root DIR (class folders) for the k-NN monitor."

    @cached_property
    def splits(self) -> dict[str, list[Sample] | None]:
        """``{"train": every image under root (unlabelled), "val": the k-NN set or None, "test": None}``."""
        if not self.root.is_dir():
            raise DataError(f"data root not found: {self.root} (set --data.root to a folder of images).")
        images = list_images(self.root)
        if not images:
            raise DataError(
                f"no images found under {self.root} (searched recursively for .jpg, .png, .webp, ...): "
                "point --data.root at a folder that holds your images."
            )
        knn = self._knn_samples()
        extra = f"; k-NN monitor: {len(knn)} labelled images under {self.knn_root}" if knn else ""
        rank_zero_info(f"vitkit: pretraining on {len(images)} images under {self.root}{extra}")
        return {"train": [(path, UNLABELLED) for path in images], "val": knn, "test": None}

    def _knn_samples(self) -> list[Sample] | None:
        """All labelled images of ``knn_root`` (train, val and test folders, if it has them), by class."""
        if self.knn_root is None:
            return None
        if not self.knn_root.is_dir():
            raise DataError(f"knn_root not found: {self.knn_root} (give a folder of class sub-folders).")
        splits = ClassFolderDataModule(self.knn_root, val_fraction=0.5).splits
        samples = [s for split in ("train", "val", "test") for s in splits[split] or []]
        return sorted(samples, key=lambda sample: (sample[1], str(sample[0])))

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if "val" in self.datasets else []  # no k-NN set: no validation
