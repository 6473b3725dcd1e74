"""Compare fine-tuning strategies on generated data: accuracy, trainable parameters and time per epoch.

A tiny ViT is pretrained once on a generated shapes dataset (400 images); each strategy then starts from that
encoder with a fresh head on a different small dataset (lower resolution, 3 labelled images per class), with the
same budget, next to the same ViT trained from scratch. Not a test: numbers, printed as a table and saved as JSON.

    .venv/bin/python benchmarks/finetune_strategies.py [--epochs 10] [--out benchmarks/results/finetune.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch

from vitkit import (
    Backbone,
    ClassFolderDataModule,
    Classification,
    FineTuning,
    FreezeThenUnfreeze,
    LinearProbe,
    LoRA,
    MLPHead,
    TransferModule,
    WarmupCosineLR,
)
from vitkit.synthetic import make_shapes_folder

VIT = {"model_name": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 32, "patch_size": 4, "depth": 4}}

#: name -> (strategy, learning rate); every run has the same data, epochs and batch size.
STRATEGIES = {
    "scratch (no pretraining)": (None, 1e-3),
    "full fine-tuning": (FineTuning(), 1e-3),
    "full + layer decay 0.75": (FineTuning(layer_decay=0.75), 1e-3),
    "linear probe": (LinearProbe(), 1e-2),
    "freeze 3 epochs, then all": (FreezeThenUnfreeze(unfreeze_at_epoch=3), 1e-3),
    "LoRA r=4": (LoRA(rank=4, alpha=8), 3e-3),
}


class EpochTimer(L.Callback):
    """Wall time of each training epoch and the best val accuracy."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.best = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self.start)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and "val/acc" in trainer.callback_metrics:
            self.best = max(self.best, float(trainer.callback_metrics["val/acc"]))


def build(weights: Path | None, finetune, lr: float, num_outputs: int) -> TransferModule:
    return TransferModule(
        Backbone(**VIT, weights=weights), num_outputs=num_outputs, head=partial(MLPHead, hidden_dims=[128]),
        task=Classification(label_smoothing=0.1), finetune=finetune,
        optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.05),
        lr_scheduler=partial(WarmupCosineLR, warmup=0.1),
    )  # fmt: skip


def train(model: TransferModule, data: ClassFolderDataModule, epochs: int, folder: Path) -> EpochTimer:
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=folder, callbacks=[timer],
                        enable_checkpointing=False)  # fmt: skip
    trainer.fit(model, data)
    if folder.name == "pretrain":
        trainer.save_checkpoint(folder / "pretrained.ckpt")
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune_strategies.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vitkit-bench-"))
    augment = {"scale": (0.5, 1.0), "hflip": 0.5}
    L.seed_everything(0, verbose=False)
    source = ClassFolderDataModule(make_shapes_folder(work / "shapes", per_class=100), batch_size=32,
                                   num_workers=2, augment=augment)  # fmt: skip
    pretrain = train(build(None, None, 1e-3, source.num_outputs), source, 8, work / "pretrain")
    print(f"pretrained on {work / 'shapes'}: val accuracy {pretrain.best:.3f}")
    target_root = make_shapes_folder(work / "small", per_class=40, sizes=(20, 36), seed=5)
    rows = []
    for name, (strategy, lr) in STRATEGIES.items():
        L.seed_everything(0, verbose=False)
        data = ClassFolderDataModule(target_root, val_fraction=0.925, batch_size=4, num_workers=0, augment=augment)
        weights = None if strategy is None else work / "pretrain" / "pretrained.ckpt"
        model = build(weights, strategy, lr, data.num_outputs)
        timer = train(model, data, args.epochs, work / name.split()[0])
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append({"strategy": name, "lr": lr, "val_acc": round(timer.best, 4), "trainable_params": trainable,
                     "seconds_per_epoch": round(sum(timer.seconds) / len(timer.seconds), 3)})  # fmt: skip
    print(f"\n{args.epochs} epochs on {len(data.samples('train'))} labelled images, val on {len(data.samples('val'))}:")
    print(f"| {'strategy':<28} | {'lr':>6} | {'val acc':>7} | {'trainable params':>16} | {'s/epoch':>7} |")
    print(f"|{'-' * 30}|{'-' * 8}|{'-' * 9}|{'-' * 18}|{'-' * 9}|")
    for r in rows:
        print(f"| {r['strategy']:<28} | {r['lr']:>6g} | {r['val_acc']:>7.3f} | {r['trainable_params']:>16,} | "
              f"{r['seconds_per_epoch']:>7.2f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"pretrain_val_acc": pretrain.best, "epochs": args.epochs, "rows": rows}, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
