"""`make demo`: train a small ViT on a generated image folder, then transfer its encoder to a new small dataset.

1. `vitkit fit --config quickstart` on demo_data/shapes (400 images), offline W&B logging; the val
   accuracy is recomputed from `vitkit predict`'s CSV with the best checkpoint.
2. The trained model at work: attention maps of one val image per class (`vitkit explain`, put side by side in
   runs/demo/attention.png), an ONNX export (`vitkit export`) and the encoder's embeddings of the data (`vitkit
   embed`), all in the fit's run folder, runs/demo/shapes/version_0.
3. Transfer: a new dataset (demo_data/shapes_small: other images, lower resolution) with only 1 labelled image per
   class. The encoder of step 1 with a fresh head (a linear probe) against the same ViT trained from scratch, with
   the same data and budget (10 epochs).
4. Pretraining without labels: `vitkit pretrain --config pretrain` (MAE, with a smaller ViT) on demo_data/unlabelled
   (1,200 shapes without their colour cue, one flat folder, no labels), then `vitkit fit` with 10 labelled images per
   class (demo_data/few_labels) from the pretrained encoder, beside the same ViT from scratch.

Everything goes through the real `vitkit` command, as a user would run it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from vitkit.synthetic import make_shapes_folder

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "demo_data" / "shapes"
SMALL = ROOT / "demo_data" / "shapes_small"
DEMO_RUNS = ROOT / "runs" / "demo"
RUN = DEMO_RUNS / "shapes" / "version_0"  # the fit's run folder (runs/demo is emptied first)
#: The transfer comparison: 1 labelled image per class (val_fraction 0.975 of 40), 10 epochs of batch 4. (With 3 per
#: class the colour cue is enough for a ViT from scratch with the small-data defaults: 0.94, the probe 0.93.)
FEW_LABELS = ["--data.init_args.val_fraction", "0.975", "--data.init_args.batch_size", "4", "--trainer.max_epochs",
              "10", "--trainer.logger", "false", "--report", "false"]  # fmt: skip
VITKIT = str(Path(sys.executable).with_name("vitkit"))
UNLABELLED = ROOT / "demo_data" / "unlabelled"
FEW = ROOT / "demo_data" / "few_labels"
#: Step 4: the quickstart ViT with 8x8 patches (16 tokens; 4x cheaper than the recipe's 4x4, so MAE gets enough steps
#: in about a minute), MAE with a 1-block decoder over the 1,200 unlabelled images, then 30 epochs on 40 labels.
SMALL_VIT = '{"img_size": 32, "patch_size": 8, "depth": 4}'
FEW_EPOCHS = 30
PRETRAIN_ARGS = ["--model.backbone.init_args.model_kwargs", SMALL_VIT, "--trainer.max_epochs", "26",
                 "--data.batch_size", "32", "--model.decoder_dim", "64", "--model.decoder_depth", "1",
                 "--model.optimizer.init_args.lr", "3e-3", "--trainer.logger", "false"]  # fmt: skip
FIT_FEW_ARGS = ["--model.backbone.init_args.model_kwargs", SMALL_VIT, "--data.batch_size", "8", "--data.num_workers",
                "0", "--trainer.max_epochs", str(FEW_EPOCHS), "--trainer.logger", "false",
                "--report", "false"]  # fmt: skip


def vitkit(*args: str) -> None:
    print("$ vitkit " + " ".join(args), flush=True)
    subprocess.run([VITKIT, *args], check=True, cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"})


def main() -> int:
    if not DATA.is_dir():
        make_shapes_folder(DATA, per_class=100, seed=0)
        print(f"generated {sum(1 for _ in DATA.rglob('*.*'))} images in {DATA}")
    if not SMALL.is_dir():
        make_shapes_folder(SMALL, per_class=40, sizes=(20, 36), seed=5)
    shutil.rmtree(DEMO_RUNS, ignore_errors=True)
    start = time.perf_counter()
    vitkit("fit", "--config", "quickstart", "--data.root", str(DATA), "--trainer.default_root_dir", str(RUN.parent))
    fit_seconds = time.perf_counter() - start
    best = next((RUN / "checkpoints").glob("best-*.ckpt"))
    vitkit("predict", "--ckpt_path", str(best))  # the checkpoint's own data: its val split
    predictions = RUN / "predictions" / "val.csv"
    with open(predictions) as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["target"] for r in rows})
    accuracy = sum(r["prediction"] == r["target"] for r in rows) / len(rows)
    chance = 1 / len(classes)
    print(f"\nfit: {fit_seconds:.0f} s; best checkpoint: {best.relative_to(ROOT)}")
    print(f"predictions: {predictions.relative_to(ROOT)}")
    print(f"val accuracy: {accuracy:.3f} on {len(rows)} images, {len(classes)} classes (chance {chance:.2f})")
    if accuracy < 2 * chance:
        print("demo FAILED: accuracy is not far above chance", file=sys.stderr)
        return 1

    use_model(best, rows)
    transfer = fit_small("transfer", "--model.backbone.init_args.weights", str(best), "--model.finetune",
                         "vitkit.LinearProbe", "--model.optimizer.init_args.lr", "1e-2")  # fmt: skip
    scratch = fit_small("scratch")
    print(f"\ntransfer to {SMALL.relative_to(ROOT)} (1 labelled image per class, 10 epochs, same ViT):")
    print(f"  pretrained encoder + fresh head (linear probe): val accuracy {transfer:.3f}")
    print(f"  trained from scratch:                           val accuracy {scratch:.3f}")
    pretrain_story()
    return 0


def pretrain_story() -> None:
    """Pretrain a small ViT on unlabelled images (MAE), then fine-tune it with 10 labels per class, beside scratch."""
    if not UNLABELLED.is_dir():
        make_shapes_folder(UNLABELLED, per_class=300, seed=11, colour_cue=False, flat=True)
    if not FEW.is_dir():
        make_shapes_folder(FEW / "train", per_class=10, seed=12, colour_cue=False)
        make_shapes_folder(FEW / "val", per_class=50, seed=13, colour_cue=False)
    folder = DEMO_RUNS / "pretrain"
    start = time.perf_counter()
    vitkit("pretrain", "--config", "pretrain", "--data.root", str(UNLABELLED), *PRETRAIN_ARGS,
           "--trainer.default_root_dir", str(folder))  # fmt: skip
    seconds = time.perf_counter() - start
    weights = folder / "version_0" / "checkpoints" / "last.ckpt"
    pretrained = fit_few("from_pretrain", "--model.backbone.init_args.weights", str(weights))
    scratch = fit_few("few_scratch")
    count = sum(1 for _ in UNLABELLED.iterdir())
    print(f"\nMAE pretraining on {count} unlabelled images ({UNLABELLED.relative_to(ROOT)}): {seconds:.0f} s; then 10 "
          f"labelled images per class, {FEW_EPOCHS} epochs, the same ViT (8x8 patches):")  # fmt: skip
    print(f"  pretrained encoder (vitkit pretrain), fine-tuned: val accuracy {pretrained:.3f}")
    print(f"  trained from scratch:                            val accuracy {scratch:.3f}")


def fit_few(name: str, *args: str) -> float:
    """Fine-tune the small ViT on the 10-labels-per-class folder; return its last epoch's val accuracy."""
    folder = DEMO_RUNS / name
    vitkit("fit", "--config", "quickstart", "--data.root", str(FEW), *FIT_FEW_ARGS, "--trainer.default_root_dir",
           str(folder), *args)  # fmt: skip
    states = torch.load(folder / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return next(float(s["current_score"]) for k, s in states["callbacks"].items() if "val/acc" in k)


def use_model(checkpoint: Path, rows: list[dict[str, str]]) -> None:
    """Attention maps of one val image per class, side by side; an ONNX export; the data's embeddings."""
    examples = [next(r["path"] for r in rows if r["target"] == c) for c in sorted({r["target"] for r in rows})]
    maps = RUN / "attention"
    vitkit("explain", "--ckpt_path", str(checkpoint), "--images", json.dumps(examples))
    pngs = sorted(maps.rglob("*.png"))  # attention/<source>/ (here "images": the listed files)
    maps = pngs[0].parent
    pictures = [Image.open(p) for p in pngs]
    grid = Image.new("RGB", (sum(p.width for p in pictures) + 8 * (len(pictures) - 1), pictures[0].height), "white")
    for i, picture in enumerate(pictures):
        grid.paste(picture, (i * (picture.width + 8), 0))
    grid.save(DEMO_RUNS / "attention.png")
    side_by_side = (DEMO_RUNS / "attention.png").relative_to(ROOT)
    print(f"attention maps: {maps.relative_to(ROOT)}/, side by side in {side_by_side}")
    vitkit("export", "--ckpt_path", str(checkpoint), "--format", "onnx")
    vitkit("embed", "--ckpt_path", str(checkpoint), "--data.predict_root", str(DATA), "--trainer.enable_progress_bar",
           "false")  # fmt: skip


def fit_small(name: str, *args: str) -> float:
    """Fit the quickstart ViT on the few-label dataset; return its best val accuracy."""
    folder = DEMO_RUNS / name
    vitkit("fit", "--config", "quickstart", "--data.root", str(SMALL), *FEW_LABELS, "--trainer.default_root_dir",
           str(folder), *args)  # fmt: skip
    best = next((folder / "version_0" / "checkpoints").glob("best-*.ckpt"))
    states = torch.load(best, map_location="cpu", weights_only=True)["callbacks"]
    return next(float(s["best_model_score"]) for k, s in states.items() if "val/acc" in k)


if __name__ == "__main__":
    sys.exit(main())
