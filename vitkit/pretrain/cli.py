"""``vitkit pretrain``: Lightning's ``fit`` of a pretraining method, with ``vitkit fit``'s run lifecycle."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vitkit.callbacks import ValidationReport
from vitkit.cli import ConfigToLoggers, VitkitArgumentParser, VitkitCLI, resolve_argv
from vitkit.data.base import ImageDataModule
from vitkit.trainer import VitkitTrainer

DESCRIPTION = (
    "vitkit pretrain: self-supervised pretraining of the encoder on your own unlabelled images (MAE, DINO, "
    "distillation from a teacher). Start with `vitkit pretrain --config pretrain --data.root my_unlabelled_images`, "
    "then `vitkit fit --config quickstart --data.root my_images --model.backbone.init_args.weights "
    "runs/pretrain/version_0/checkpoints/last.ckpt`. Same --trainer.*, --checkpoint.* and --ckpt_path as `vitkit fit`."
)


class PretrainArgumentParser(VitkitArgumentParser):
    """vitkit's parser, calling the command ``vitkit pretrain`` in usage and errors (LightningCLI runs ``fit``)."""

    @property
    def prog(self) -> str:
        return self._prog

    @prog.setter
    def prog(self, value: str) -> None:
        self._prog = value.replace("[options] fit", "pretrain") if value.endswith("[options] fit") else value


class PretrainCLI(VitkitCLI):
    """``vitkit pretrain``: ``fit`` of a :class:`~vitkit.pretrain.PretrainModule` (``model.class_path``:
    ``vitkit.MAE``, ``vitkit.DINO``, ``vitkit.Distillation``) on images without labels
    (:class:`~vitkit.UnlabelledDataModule` unless the recipe names another data module, whose labels are ignored).

    Everything of ``vitkit fit``'s run lifecycle (:class:`~vitkit.cli.VitkitCLI`): a ``runs/<recipe>/version_N``
    run folder, ``--ckpt_path last`` resume in it (and in its W&B run), checkpoints carrying the data config,
    loggers; without the label links and the validation report. The best checkpoint is the epoch with the lowest
    ``train/loss_epoch`` (``--checkpoint.monitor val/knn_acc --checkpoint.mode max`` with a k-NN set) and the encoder
    is also written as ``checkpoints/encoder.safetensors`` (timm layout).
    """

    pretraining = True

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "train/loss_epoch",
                "checkpoint.mode": "min",
                "checkpoint.save_last": False,  # `last.ckpt` is its own callback (VitkitCLI.instantiate_trainer)
                "checkpoint.filename": "best-epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                "data": {"class_path": "vitkit.UnlabelledDataModule"},
            }
        )
        if self.checkpoint_class_path and "embed" in self.subcommands():  # its method and data are the defaults
            model = {"class_path": self.checkpoint_class_path, "init_args": self.checkpoint_hparams}
            parser.set_defaults({"model": model})
            if self.checkpoint_info.get("data"):
                parser.set_defaults({"data": self.checkpoint_info["data"]})

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if config.get("ckpt_path"):  # the checkpoint holds every weight: no hub download or weights file needed
            for name in ("backbone", "teacher"):
                if config.get(f"model.init_args.{name}.init_args") is not None:
                    config[f"model.init_args.{name}.init_args.pretrained"] = False
                    config[f"model.init_args.{name}.init_args.weights"] = None
        super().before_instantiate_classes()

    def after_instantiate_classes(self) -> None:
        # A wrong or empty folder stops here, before a run folder is used (embed reads only its predict_root).
        if self.subcommand == "fit" and hasattr(self.datamodule, "splits"):
            self.datamodule.splits  # noqa: B018 (cached: the run reads the same scan)
        # The method's own config (its class_path and init_args, backbone and teacher included), so checkpoints
        # record how to rebuild it; the module itself keeps no live objects in its hyperparameters.
        model_config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))[self.subcommand]["model"]
        self.model.hparams.update({"_class_path": model_config["class_path"], **model_config["init_args"]})
        super().after_instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        # ValidationReport draws class predictions; pretraining validates with the k-NN monitor instead.
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ValidationReport)]
        return trainer


def pretrain_main(args: list[str], from_command_line: bool) -> None:
    """Run ``vitkit pretrain ARGS`` (``args`` without the word ``pretrain``)."""
    from vitkit.pretrain.base import PretrainModule

    argv = resolve_argv(["fit", *args])
    if from_command_line:
        sys.argv[2:] = argv[1:]  # DDP processes that Lightning launches re-run sys.argv: the same files for all
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter")  # args = ["fit", ...]
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")  # no k-NN set
    PretrainCLI(
        PretrainModule,
        ImageDataModule,
        trainer_class=VitkitTrainer,
        parser_class=PretrainArgumentParser,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        save_config_callback=ConfigToLoggers,
        seed_everything_default=0,
        parser_kwargs={"fit": {"description": DESCRIPTION}},
        save_config_kwargs={"overwrite": True},
    )


class PretrainEmbedCLI(PretrainCLI):
    """``vitkit embed --ckpt_path PRETRAIN.ckpt``: the pooled features of a pretrained encoder, as ``vitkit embed``
    writes them for a fitted model (the method and its data are the checkpoint's; ``--data.predict_root DIR``)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"embed": VitkitCLI.subcommands()["embed"]}


def pretrain_embed_main(argv: list[str]) -> None:
    """Run ``vitkit embed ARGS`` (``argv`` with the word ``embed``) on a pretraining checkpoint."""
    from vitkit.pretrain.base import PretrainModule

    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter")  # args: resolved recipes, last/best
    PretrainEmbedCLI(PretrainModule, ImageDataModule, trainer_class=VitkitTrainer, parser_class=VitkitArgumentParser,
                     subclass_mode_model=True, subclass_mode_data=True, args=argv, save_config_callback=None,
                     seed_everything_default=0)  # fmt: skip
