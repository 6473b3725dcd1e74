"""Data modules and image loading (``datasets`` and ``webdataset`` are imported only when their modules are used)."""

from vitkit.data.base import ImageDataModule
from vitkit.data.folder import ClassFolderDataModule
from vitkit.data.hf import HFDatasetDataModule
from vitkit.data.images import IMAGE_EXTENSIONS, ImageDataset, is_image_file, list_images, load_image
from vitkit.data.manifest import ManifestDataModule
from vitkit.data.unlabelled import UnlabelledDataModule
from vitkit.data.webdataset import WebDatasetDataModule

__all__ = [
    "IMAGE_EXTENSIONS",
    "ClassFolderDataModule",
    "HFDatasetDataModule",
    "ImageDataModule",
    "ImageDataset",
    "ManifestDataModule",
    "UnlabelledDataModule",
    "WebDatasetDataModule",
    "is_image_file",
    "list_images",
    "load_image",
]
