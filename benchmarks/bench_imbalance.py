"""Long-tailed classes: macro-F1 with no balancing, class weights, the balanced sampler and the focal loss.

Generated shapes (each class its own shape and jittered colour, 24-48 px) with a long tail in train
(100/40/12/5 images) and a balanced val split (20 per class). The same small ViT (32 px, 8x8 patches, 4 blocks,
from scratch, quickstart's head, optimizer and schedule) is trained with the same budget four ways; the table
gives val macro-F1, balanced accuracy and the rarest class's recall (mean over seeds). Not a test: numbers,
printed and saved as JSON.

    .venv/bin/python benchmarks/bench_imbalance.py [--epochs 12] [--seeds 2] [--out benchmarks/results/imbalance.json]
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
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score, multiclass_recall

from vitkit import Backbone, ClassFolderDataModule, Classification, MLPHead, TransferModule, WarmupCosineLR
from vitkit.synthetic import make_shapes_folder

VIT = {"model_name": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 4}}
TAIL = {"circle": 100, "square": 40, "triangle": 12, "cross": 5}
#: name -> (task arguments, data module sampler)
VARIANTS = {
    "none (defaults)": ({}, None),
    "class_weights auto": ({"class_weights": "auto"}, None),
    "sampler balanced": ({}, "balanced"),
    "focal_gamma 2": ({"focal_gamma": 2.0}, None),
}


def long_tailed(root: Path) -> Path:
    """``root/train`` with the :data:`TAIL` counts, ``root/val`` with 20 images of each class."""
    make_shapes_folder(root / "train", per_class=max(TAIL.values()), shapes=tuple(TAIL), sizes=(24, 48), seed=1)
    for name, keep in TAIL.items():
        for path in sorted((root / "train" / name).iterdir())[keep:]:
            path.unlink()
    make_shapes_folder(root / "val", per_class=20, shapes=tuple(TAIL), sizes=(24, 48), seed=2)
    return root


def run(root: Path, task_args: dict, sampler: str | None, epochs: int, seed: int, folder: Path) -> dict[str, float]:
    L.seed_everything(seed, verbose=False)
    data = ClassFolderDataModule(root, batch_size=32, num_workers=0, sampler=sampler,
                                 augment={"scale": (0.5, 1.0), "hflip": 0.5})  # fmt: skip
    model = TransferModule(
        Backbone(**VIT), num_outputs=data.num_outputs, class_names=data.class_names, label_stats=data.label_stats,
        head=partial(MLPHead, hidden_dims=[128], dropout=0.1), task=Classification(label_smoothing=0.1, **task_args),
        optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05),
        lr_scheduler=partial(WarmupCosineLR, warmup=0.1), calibrate=False,
    )  # fmt: skip
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=folder)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        logits, targets = zip(*((model(x), y) for x, y in data.val_dataloader()), strict=True)
    logits, targets = torch.cat(logits), torch.cat(targets)
    n = data.num_outputs
    rarest = data.class_names.index(min(TAIL, key=TAIL.get))
    return {
        "f1_macro": float(multiclass_f1_score(logits, targets, n, average="macro")),
        "balanced_acc": float(multiclass_accuracy(logits, targets, n, average="macro")),
        "rarest_recall": float(multiclass_recall(logits, targets, n, average=None)[rarest]),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/imbalance.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vitkit-bench-imbalance-"))
    root = long_tailed(work / "data")
    rows = []
    for name, (task_args, sampler) in VARIANTS.items():
        results = []
        for seed in range(args.seeds):
            results.append(run(root, task_args, sampler, args.epochs, seed, work / "runs"))
            print(f"{name}, seed {seed}: {results[-1]}", flush=True)
        row = {"variant": name, **{k: sum(r[k] for r in results) / len(results) for k in results[0]}}
        row["f1_macro_per_seed"] = [round(r["f1_macro"], 3) for r in results]
        rows.append(row)
    tail = "/".join(str(c) for c in TAIL.values())
    print(f"\ntrain {tail} images ({', '.join(TAIL)}), val 20 each; {args.epochs} epochs, mean of {args.seeds} seeds")
    print(f"| {'variant':<20} | macro-F1 | balanced acc | recall of {min(TAIL, key=TAIL.get):<8} | s/run |")
    print(f"|{'-' * 22}|{'-' * 10}|{'-' * 14}|{'-' * 20}|{'-' * 7}|")
    for r in rows:
        print(f"| {r['variant']:<20} | {r['f1_macro']:>8.3f} | {r['balanced_acc']:>12.3f} | "
              f"{r['rarest_recall']:>18.3f} | {r['seconds']:>5.0f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"train": TAIL, "val_per_class": 20, "epochs": args.epochs, "rows": rows}, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
