"""vitkit: transfer learning with Vision Transformers on PyTorch Lightning and timm."""

from vitkit.augment import MixupCutmix
from vitkit.backbone import Backbone
from vitkit.data import (
    ClassFolderDataModule,
    HFDatasetDataModule,
    ImageDataModule,
    ManifestDataModule,
    UnlabelledDataModule,
    WebDatasetDataModule,
)
from vitkit.errors import DataError, VitkitError, WeightsError
from vitkit.finetune import FineTuning, FreezeThenUnfreeze, LinearProbe, LoRA, merge_adapters
from vitkit.heads import LinearHead, MLPHead
from vitkit.module import TransferModule
from vitkit.pretrain import DINO, MAE, Distillation
from vitkit.schedulers import WarmupCosineLR
from vitkit.tasks import Classification, MultiLabel, Regression, Task
from vitkit.writers import CSVPredictionWriter

__version__ = "0.1.0"

__all__ = [
    "DINO",
    "MAE",
    "Backbone",
    "CSVPredictionWriter",
    "ClassFolderDataModule",
    "Classification",
    "DataError",
    "Distillation",
    "FineTuning",
    "FreezeThenUnfreeze",
    "HFDatasetDataModule",
    "ImageDataModule",
    "LinearHead",
    "LinearProbe",
    "LoRA",
    "MLPHead",
    "ManifestDataModule",
    "MixupCutmix",
    "MultiLabel",
    "Regression",
    "Task",
    "TransferModule",
    "UnlabelledDataModule",
    "VitkitError",
    "WarmupCosineLR",
    "WebDatasetDataModule",
    "WeightsError",
    "merge_adapters",
]
