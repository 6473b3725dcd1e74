"""Data modules and image loading."""

from vitkit.data.base import ImageDataModule
from vitkit.data.folder import ClassFolderDataModule
from vitkit.data.images import IMAGE_EXTENSIONS, ImageDataset, is_image_file, list_images, load_image
from vitkit.data.manifest import ManifestDataModule

__all__ = [
    "IMAGE_EXTENSIONS",
    "ClassFolderDataModule",
    "ImageDataModule",
    "ImageDataset",
    "ManifestDataModule",
    "is_image_file",
    "list_images",
    "load_image",
]
