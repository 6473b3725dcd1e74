"""Pretraining on unlabelled images, then few labels: MAE, DINO and distillation against the same ViT from scratch.

Generated shapes without the colour cue (:func:`vitkit.synthetic.make_shapes_folder`, ``colour_cue=False``): only the
outline tells the 4 classes apart, at random places, sizes and colours on noisy backgrounds. Each method pretrains
the quickstart ViT (32 px, 4x4 patches, 4 blocks) on ``--pool`` unlabelled images for the same CPU time
(``--budget`` CPU seconds: the number of steps comes from a short timed calibration run; data is loaded in-process,
so the budget covers decoding and augmentation too). Distillation distils the MAE encoder into a 2-block student.
Every encoder is then scored with ``--labels`` labelled images per class against ``--val`` held-out images per class:

- k-NN: lightly's weighted k-NN on the pooled features (the labelled images are the bank), no training;
- linear probe: frozen encoder, fresh linear head (:class:`vitkit.LinearProbe`);
- fine-tune: all weights, fresh linear head; the same recipe (LR, epochs, augmentation) as from scratch.

Probe and fine-tune are averaged over ``--seeds`` seeds. Not a test: numbers, printed as a table and saved as JSON.

    .venv/bin/python benchmarks/bench_pretrain.py [--budget 300] [--out benchmarks/results/pretrain.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from vitkit import (
    DINO,
    MAE,
    Backbone,
    ClassFolderDataModule,
    Classification,
    Distillation,
    FineTuning,
    LinearHead,
    LinearProbe,
    TransferModule,
    UnlabelledDataModule,
    WarmupCosineLR,
)
from vitkit.data.images import ImageDataset
from vitkit.pretrain import knn_accuracy
from vitkit.synthetic import make_shapes_folder

VIT = {"model_name": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 32, "patch_size": 4, "depth": 4}}
STUDENT = {"model_name": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 32, "patch_size": 4, "depth": 2}}
TRAINER = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}


def adamw(lr: float, **kwargs) -> partial:
    return partial(torch.optim.AdamW, lr=lr, weight_decay=0.05, **kwargs)


def schedule() -> partial:
    return partial(WarmupCosineLR, warmup=0.1)


#: name -> (backbone config, method factory, batch size); DINO takes a dynamic-size ViT for its 12 px local crops.
METHODS = {
    "MAE": (VIT, lambda b: MAE(b, decoder_dim=128, decoder_depth=2, decoder_heads=4, optimizer=adamw(1.5e-3,
            betas=(0.9, 0.95)), lr_scheduler=schedule()), 64),
    "DINO": ({**VIT, "model_kwargs": {**VIT["model_kwargs"], "dynamic_img_size": True}},
             lambda b: DINO(b, output_dim=1024, hidden_dim=512, bottleneck_dim=128, n_local_views=2,
                            teacher_momentum=0.99, transform_kwargs={"sigmas": (0.1, 0.5)}, optimizer=adamw(1e-3),
                            lr_scheduler=schedule()), 32),
}  # fmt: skip


class StepTimer(L.Callback):
    """CPU seconds (this process) from one training step's start to the next one's (loading the batch included),
    after ``skip`` warm-up steps."""

    def __init__(self, skip: int = 2) -> None:
        self.skip, self.times, self.start = skip, [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.process_time()
        if self.start is not None and trainer.global_step > self.skip:
            self.times.append(now - self.start)
        self.start = now


def pretrain(name: str, make, backbone: dict, batch_size: int, pool: Path, budget: float, work: Path) -> dict:
    """Calibrate the CPU time per step, then pretrain for ``budget`` CPU seconds; return timings and the checkpoint."""
    timer = StepTimer()
    data = UnlabelledDataModule(pool, batch_size=batch_size, num_workers=0)
    L.Trainer(max_steps=12, callbacks=[timer], enable_checkpointing=False, default_root_dir=work / "calibrate",
              **TRAINER).fit(make(Backbone(**backbone)), data)  # fmt: skip
    steps = max(1, int(budget / statistics.median(timer.times)))
    L.seed_everything(0, verbose=False)
    module = make(Backbone(**backbone))
    trainer = L.Trainer(max_steps=steps, enable_checkpointing=False, default_root_dir=work / name, **TRAINER)
    cpu, wall = time.process_time(), time.perf_counter()
    trainer.fit(module, UnlabelledDataModule(pool, batch_size=batch_size, num_workers=0))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    checkpoint = work / name / "pretrained.ckpt"
    trainer.save_checkpoint(checkpoint)
    loss = float(trainer.callback_metrics["train/loss_epoch"])
    print(f"{name}: {steps} steps of {batch_size} in {cpu:.0f} CPU s ({wall:.0f} s wall), loss {loss:.3f}", flush=True)
    return {"steps": steps, "batch_size": batch_size, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
            "loss": round(loss, 4), "checkpoint": checkpoint}  # fmt: skip


def knn(backbone: Backbone, root: Path) -> float:
    """k-NN accuracy on ``root/val`` with the few labelled images of ``root/train`` as the bank; no training."""
    data = ClassFolderDataModule(root, num_workers=0, data_config=backbone.data_config)
    transform = data.transform(train=False)
    features, labels = [], []
    for split in ("train", "val"):
        with torch.no_grad():
            for images, targets in DataLoader(ImageDataset(data.splits[split], transform), batch_size=64):
                features.append(backbone(images))
                labels.append(targets)
    bank = torch.arange(sum(len(t) for t in labels)) < len(data.splits["train"])
    features = torch.nn.functional.normalize(torch.cat(features), dim=1)
    return knn_accuracy(features, torch.cat(labels), k=10, bank=bank)


def few_labels(backbone: dict, weights: Path | None, strategy, lr: float, root: Path, epochs: int, seed: int) -> float:
    """Final-epoch val accuracy of a fresh linear head (and the encoder, unless frozen) trained on the few labels."""
    L.seed_everything(seed, verbose=False)
    data = ClassFolderDataModule(root, batch_size=8, num_workers=0, augment={"scale": (0.5, 1.0), "hflip": 0.5})
    model = TransferModule(Backbone(**backbone, weights=weights), num_outputs=data.num_outputs, head=LinearHead,
                           task=Classification(label_smoothing=0.1), finetune=strategy, optimizer=adamw(lr),
                           lr_scheduler=schedule())  # fmt: skip
    trainer = L.Trainer(max_epochs=epochs, check_val_every_n_epoch=epochs, num_sanity_val_steps=0,
                        enable_checkpointing=False, default_root_dir=root.parent / "fit", **TRAINER)  # fmt: skip
    trainer.fit(model, data)
    return float(trainer.callback_metrics["val/acc"])


def score(name: str, backbone: dict, weights: Path | None, root: Path, args: argparse.Namespace) -> dict:
    model = Backbone(**backbone, weights=weights).eval()
    row = {"method": name, "knn": round(knn(model, root), 3)}
    for key, strategy, lr in (("linear_probe", LinearProbe, 1e-2), ("fine_tune", FineTuning, 1e-3)):
        accs = [few_labels(backbone, weights, strategy(), lr, root, args.epochs, s) for s in range(args.seeds)]
        row[key] = round(statistics.mean(accs), 3)
        row[f"{key}_std"] = round(statistics.stdev(accs), 3) if len(accs) > 1 else 0.0
    print(f"{name}: {row}", flush=True)
    return row


def main() -> None:
    for name in ("lightning.pytorch", "lightning.fabric"):  # one line per run below, not Lightning's per-fit notes
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="CPU seconds of pretraining per method")
    parser.add_argument("--pool", type=int, default=2000, help="unlabelled images")
    parser.add_argument("--labels", type=int, default=10, help="labelled images per class")
    parser.add_argument("--val", type=int, default=100, help="held-out images per class")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the few-label fits")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the few-label fits")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on shared cores)")
    parser.add_argument("--methods", default="MAE,DINO,distillation")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pretrain.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vitkit-bench-pretrain-"))
    pool = make_shapes_folder(work / "unlabelled", per_class=args.pool // 4, seed=1, colour_cue=False)
    root = work / "few"  # train/: the few labels, val/: held out; other seeds than the unlabelled pool
    make_shapes_folder(root / "train", per_class=args.labels, seed=2, colour_cue=False)
    make_shapes_folder(root / "val", per_class=args.val, seed=3, colour_cue=False)
    methods = args.methods.split(",")
    rows = [{**score("scratch", VIT, None, root, args), "cpu_s": 0, "wall_s": 0}]
    pretrained = {}
    for name in [m for m in METHODS if m in methods]:
        backbone, make, batch_size = METHODS[name]
        run = pretrain(name, make, backbone, batch_size, pool, args.budget, work)
        pretrained[name] = run.pop("checkpoint")
        rows.append({**score(name, VIT, pretrained[name], root, args), **run})
    if "distillation" in methods and "MAE" in pretrained:
        teacher = {**VIT, "weights": pretrained["MAE"]}
        make = lambda b: Distillation(b, teacher=Backbone(**teacher), optimizer=adamw(1e-3),  # noqa: E731
                                      lr_scheduler=schedule(), augment={"scale": (0.2, 1.0), "hflip": 0.5})  # fmt: skip
        run = pretrain("distillation", make, STUDENT, 64, pool, args.budget, work)
        rows.append({**score("scratch, 2 blocks", STUDENT, None, root, args), "cpu_s": 0, "wall_s": 0})
        rows.append({**score("distilled MAE -> 2 blocks", STUDENT, run.pop("checkpoint"), root, args), **run})
    print(f"\n{args.labels} labelled images per class, {args.val} held out per class, {args.pool} unlabelled images, "
          f"{args.budget:.0f} CPU s of pretraining per method, {args.threads} torch thread(s):")  # fmt: skip
    print("| encoder                    | CPU s | wall s |  k-NN | linear probe |   fine-tune  |")
    print("|----------------------------|-------|--------|-------|--------------|--------------|")
    for r in rows:
        probe, tune = (f"{r[k]:.3f} ± {r[k + '_std']:.2f}" for k in ("linear_probe", "fine_tune"))
        print(f"| {r['method']:<26} | {r['cpu_s']:>5.0f} | {r['wall_s']:>6.0f} | {r['knn']:>5.3f} | {probe} | {tune} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
