"""INT8 export: throughput of PyTorch eager, ONNX fp32 and ONNX int8 (dynamic and static) on this CPU, and what
quantization costs in agreement with fp32 and accuracy on labelled images.

Two models: the quickstart ViT (32 px, 4x4 patches, 4 blocks), trained here for a few epochs on generated shapes so
accuracy means something; and a ViT-S/16 at 224 px built from scratch (random weights: throughput and agreement
only). Images/s at batch 1 and batch 32 (median of timed repeats after a warm-up), top-1 agreement of each int8 model
with the fp32 ONNX model, and top-1 accuracy on the shapes' labelled val folder. Not a test: numbers, printed as a
table and saved as JSON.

    .venv/bin/python benchmarks/bench_export.py [--epochs 4] [--out benchmarks/results/export.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import onnxruntime as ort
import torch

from vitkit import Backbone, ClassFolderDataModule, Classification, MLPHead, TransferModule
from vitkit.export import export_model
from vitkit.quantize import quantize_onnx
from vitkit.synthetic import make_shapes_folder

QUICKSTART = {"model_name": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 32, "patch_size": 4, "depth": 4}}
VIT_S = {"model_name": "vit_small_patch16_224", "model_kwargs": {}}


def images_per_second(run, batch: np.ndarray, repeats: int) -> float:
    run(batch)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def trained_quickstart(root: Path, epochs: int) -> tuple[TransferModule, ClassFolderDataModule]:
    data = ClassFolderDataModule(root=str(root / "train"), batch_size=32, num_workers=0)
    data.setup("fit")
    model = TransferModule(Backbone(**QUICKSTART), num_outputs=4, head=MLPHead, task=Classification(),
                           class_names=data.class_names)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    return model.eval(), data


def labelled(root: Path, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """A class-folder tree's images, resized, cropped and normalised as vitkit evaluates them, and their labels."""
    from PIL import Image
    from timm.data import create_transform

    transform = create_transform(**config)
    classes = sorted(p.name for p in root.iterdir())
    pairs = [
        (transform(Image.open(f).convert("RGB")), i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).iterdir())
    ]
    return torch.stack([x for x, _ in pairs]).numpy(), np.array([y for _, y in pairs])


def measure(name: str, model: TransferModule, folder: Path, images: np.ndarray, labels: np.ndarray | None,
            calibration: list[np.ndarray], repeats: tuple[int, int]) -> list[dict]:  # fmt: skip
    fp32 = export_model(model, folder / f"{name}.onnx", "onnx")
    files = {
        "onnx fp32": fp32,
        "onnx int8 dynamic": quantize_onnx(fp32, folder / f"{name}.dynamic.onnx", "dynamic"),
        "onnx int8 static": quantize_onnx(fp32, folder / f"{name}.static.onnx", "static", calibration),
    }
    runners = {"pytorch eager": lambda x: model.task.predict(model(torch.from_numpy(x))).numpy()}
    for label, path in files.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runners[label] = lambda x, s=session: s.run(None, {"images": x})[0]
    rows, reference = [], None
    for label, run in runners.items():
        with torch.no_grad():
            outputs = np.concatenate([run(images[i : i + 32]) for i in range(0, len(images), 32)])
            one = images_per_second(run, images[:1], repeats[0])
            many = images_per_second(run, images[:32], repeats[1])
        top1 = outputs.argmax(1)
        reference = top1 if label == "onnx fp32" else reference
        rows.append({"model": name, "runtime": label, "batch1_img_s": one, "batch32_img_s": many, "top1": top1,
                     "accuracy": float((top1 == labels).mean()) if labels is not None else None,
                     "size_mb": files[label].stat().st_size / 1e6 if label in files else None})  # fmt: skip
    for row in rows:
        row["agreement"] = float((row.pop("top1") == reference).mean())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/export.json")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    L.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_shapes_folder(root / "train", per_class=60, sizes=(24, 64), seed=1)
        make_shapes_folder(root / "val", per_class=40, sizes=(24, 64), seed=2)
        start = time.perf_counter()
        quick, _ = trained_quickstart(root, args.epochs)
        print(f"quickstart ViT trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s")
        images, labels = labelled(root / "val", quick.data_config)
        train_images, _ = labelled(root / "train", quick.data_config)  # static quantization calibrates on these
        calibration = [train_images[i : i + 32] for i in range(0, len(train_images), 32)]
        rows = measure("quickstart", quick, root, images, labels, calibration, (200, 20))
        torch.manual_seed(0)
        vit_s = TransferModule(Backbone(**VIT_S), num_outputs=4, head=MLPHead, task=Classification()).eval()
        big = torch.nn.functional.interpolate(torch.from_numpy(images[:64]), size=224, mode="bilinear").numpy()
        big_train = torch.nn.functional.interpolate(torch.from_numpy(train_images[:64]), size=224, mode="bilinear")
        rows += measure(
            "vit_small_patch16_224", vit_s, root, big, None, [big_train[:32].numpy(), big_train[32:].numpy()], (5, 2)
        )
    print(f"\n{'model':24} {'runtime':20} {'img/s b1':>9} {'img/s b32':>10} {'agree':>6} {'acc':>6} {'MB':>6}")
    for r in rows:
        acc = f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "-"
        size = f"{r['size_mb']:.1f}" if r["size_mb"] is not None else "-"
        print(f"{r['model']:24} {r['runtime']:20} {r['batch1_img_s']:9.1f} {r['batch32_img_s']:10.1f} "
              f"{r['agreement']:6.3f} {acc:>6} {size:>6}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
