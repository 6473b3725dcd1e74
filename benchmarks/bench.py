"""`make bench`: vitkit against a plain timm + torch baseline, in one run, on the same model, data, transforms,
batch size, workers and number of steps. Prints a table of ratios (vitkit / baseline) and writes JSON.

Each measurement runs in a fresh Python process (so its peak memory is its own); throughput counts only the steps
after warm-up. The start-up baseline is `python -c "import torch, lightning.pytorch"`, the floor of any Lightning
command. Defaults suit a 2-core CPU (a tiny ViT on a generated folder; ~4 min, most of it starting 12 Python processes);
on a GPU:

    python benchmarks/bench.py --model vit_base_patch16_224 --img-size 224 --patch-size 16 --batch-size 64 \\
        --precision bf16-mixed --accelerator gpu --workers 8 --steps 50 --images 3200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="vitkit vs plain timm + torch")
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--depth", type=int, default=None, help="ViT depth (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side; medians reported")
    parser.add_argument("--images", type=int, default=640, help="images in the generated folder")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench.json")
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- shared set-up


def model_kwargs(o: argparse.Namespace) -> dict:
    kwargs = {"img_size": o.img_size}
    if o.patch_size:
        kwargs["patch_size"] = o.patch_size
    if o.depth:
        kwargs["depth"] = o.depth
    return kwargs


def device(o: argparse.Namespace):
    import torch

    return torch.device("cuda" if o.accelerator == "gpu" else "cpu")


def autocast(o: argparse.Namespace):
    import torch

    if o.precision == "32-true":
        return torch.autocast(device(o).type, enabled=False)
    dtype = torch.bfloat16 if o.precision.startswith("bf16") else torch.float16
    return torch.autocast(device(o).type, dtype=dtype)


class Clock:
    """Times steps after warm-up; synchronises the GPU at each reading."""

    def __init__(self, o: argparse.Namespace) -> None:
        self.o, self.step, self.start, self.images = o, 0, None, 0

    def tick(self, batch_size: int) -> bool:
        """Call after each step; returns False once the timed steps are done."""
        self.step += 1
        if self.step == self.o.warmup:
            self._sync()
            self.start = time.perf_counter()
        elif self.step > self.o.warmup:
            self.images += batch_size
        return self.step < self.o.warmup + self.o.steps

    def rate(self) -> float:
        self._sync()
        return self.images / (time.perf_counter() - self.start)

    def _sync(self) -> None:
        import torch

        if torch.cuda.is_available() and self.o.accelerator == "gpu":
            torch.cuda.synchronize()


def vitkit_parts(o: argparse.Namespace, batch_size: int | None = None):
    from functools import partial

    import torch

    from vitkit import Backbone, ClassFolderDataModule, LinearHead, TransferModule

    model = TransferModule(Backbone(o.model, model_kwargs=model_kwargs(o)), num_outputs=4, head=LinearHead,
                           optimizer=partial(torch.optim.AdamW, lr=1e-4))  # fmt: skip
    data = ClassFolderDataModule(o.data, batch_size=batch_size or o.batch_size, num_workers=o.workers,
                                 data_config=model.data_config)  # fmt: skip
    return model, data


def baseline_parts(o: argparse.Namespace, train: bool):
    import timm
    import torch
    from torchvision.datasets import ImageFolder

    model = timm.create_model(o.model, num_classes=4, **model_kwargs(o))
    config = timm.data.resolve_model_data_config(model)
    config["input_size"] = (3, o.img_size, o.img_size)
    dataset = ImageFolder(o.data, transform=timm.data.create_transform(**config, is_training=train))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=o.batch_size, shuffle=train, num_workers=o.workers,
        pin_memory=o.accelerator == "gpu", persistent_workers=o.workers > 0,
    )  # fmt: skip
    return model, loader


# ---------------------------------------------------------------------------------------------- measurements


def measure_train_vitkit(o: argparse.Namespace) -> float:
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    model, data = vitkit_parts(o)
    clock = Clock(o)

    class Timer(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if not clock.tick(batch[0].shape[0]):
                trainer.should_stop = True

    # As `vitkit fit` runs it: a logger, the LR monitor, per-step and per-epoch metrics; no validation here.
    trainer = L.Trainer(accelerator=o.accelerator, devices=1, precision=o.precision, max_epochs=1000,
                        logger=CSVLogger(tempfile.mkdtemp()), callbacks=[Timer(), LearningRateMonitor()],
                        limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, data)
    return clock.rate()


def measure_train_baseline(o: argparse.Namespace) -> float:
    import torch
    import torch.nn.functional as F

    model, loader = baseline_parts(o, train=True)
    model.to(device(o)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    clock = Clock(o)
    while True:
        for images, targets in loader:
            images, targets = images.to(device(o), non_blocking=True), targets.to(device(o), non_blocking=True)
            with autocast(o):
                loss = F.cross_entropy(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not clock.tick(images.shape[0]):
                return clock.rate()


def measure_data_vitkit(o: argparse.Namespace) -> float:
    _, data = vitkit_parts(o)
    data.setup("fit")
    return _drain(o, data.train_dataloader())


def measure_data_baseline(o: argparse.Namespace) -> float:
    return _drain(o, baseline_parts(o, train=True)[1])


def _drain(o: argparse.Namespace, loader) -> float:
    clock = Clock(o)
    while True:
        for images, _ in loader:
            if not clock.tick(images.shape[0]):
                return clock.rate()


def measure_predict_vitkit(o: argparse.Namespace) -> float:
    import lightning as L

    from vitkit import CSVPredictionWriter

    model, data = vitkit_parts(o)
    clock = Clock(o)

    class Timer(L.Callback):
        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            clock.tick(batch[0].shape[0])

    data.predict_root = o.data  # every image in the folder, as `vitkit predict --data.predict_root` does
    trainer = L.Trainer(accelerator=o.accelerator, devices=1, precision=o.precision, logger=False,
                        callbacks=[Timer(), CSVPredictionWriter(Path(tempfile.mkdtemp()) / "p.csv")],
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_predict_batches=o.warmup + o.steps)  # fmt: skip
    trainer.predict(model, data, return_predictions=False)
    return clock.rate()


def measure_predict_baseline(o: argparse.Namespace) -> float:
    import torch

    model, loader = baseline_parts(o, train=False)
    model.to(device(o)).eval()
    clock = Clock(o)
    with torch.inference_mode():
        while True:
            for images, _ in loader:
                with autocast(o):
                    model(images.to(device(o), non_blocking=True)).softmax(-1).cpu()
                if not clock.tick(images.shape[0]):
                    return clock.rate()


MEASURES = {name[len("measure_") :]: fn for name, fn in globals().items() if name.startswith("measure_")}


# ---------------------------------------------------------------------------------------------- driver


def run_measure(name: str, o: argparse.Namespace, argv: list[str]) -> dict:
    """One measurement in a fresh process: its rate and its peak RSS."""
    out = subprocess.run([sys.executable, __file__, *argv, "--data", str(o.data), "--measure", name],
                         capture_output=True, text=True, cwd=REPO)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_run(results: list[dict]) -> dict:
    """Per-key median over repeated runs (a 2-core machine's throughput varies by ~10% between runs)."""
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def row(name: str, ours: float, base: float | None, goal: str) -> dict:
    ratio = ours / base if base else None
    return {"benchmark": name, "vitkit": ours, "baseline": base, "ratio": ratio, "goal": goal}


def startup_seconds(*command: str, repeat: int = 2) -> float:
    """Best wall time of ``command`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(list(command), capture_output=True, check=True, cwd=REPO)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    o = options(argv)
    if o.measure:  # child process
        rate = MEASURES[o.measure](o)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
        cuda = 0.0
        import torch

        if torch.cuda.is_available():
            cuda = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps({"rate": rate, "rss_mib": peak, "cuda_mib": cuda}))
        return
    from vitkit.synthetic import make_shapes_folder

    o.data = Path(tempfile.mkdtemp(prefix="vitkit-bench-")) / "shapes"
    make_shapes_folder(o.data, per_class=o.images // 4, seed=0)
    print(f"{o.model} img {o.img_size}, batch {o.batch_size}, {o.workers} workers, {o.steps} timed steps after "
          f"{o.warmup}, {o.accelerator} {o.precision}, {o.images} images")  # fmt: skip
    rows = []
    goals = {"train": 0.97, "data": 1.0, "predict": 0.95}
    labels = {"train": "training (img/s)", "data": "input pipeline (img/s)", "predict": "inference (img/s)"}
    for kind in ("train", "data", "predict"):
        runs = [(run_measure(f"{kind}_vitkit", o, argv), run_measure(f"{kind}_baseline", o, argv))
                for _ in range(o.repeats)]  # fmt: skip
        ours, base = (median_run([r[i] for r in runs]) for i in (0, 1))
        rows.append(row(labels[kind], ours["rate"], base["rate"], f">= {goals[kind]}"))
        if kind == "train":
            rows.append(row("peak RSS in training (MiB)", ours["rss_mib"], base["rss_mib"], "~1"))
            if ours["cuda_mib"]:
                rows.append(row("peak CUDA allocated (MiB)", ours["cuda_mib"], base["cuda_mib"], "~1"))
    # Baseline: what any Lightning command pays before its own code runs.
    floor = startup_seconds(sys.executable, "-c", "import torch, lightning.pytorch")
    vitkit = str(Path(sys.executable).with_name("vitkit"))
    print_config = [vitkit, "fit", "--config", "recipes/quickstart.yaml", "--print_config"]
    rows.append(row("start-up: vitkit --help (s)", startup_seconds(vitkit, "--help"), floor, "< 3 s"))
    rows.append(row("start-up: fit --print_config (s)", startup_seconds(*print_config), floor, "< 3 s"))
    print(f"\n| {'benchmark':<34} | {'vitkit':>10} | {'baseline':>10} | {'ratio':>6} | {'goal':>7} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 12}|{'-' * 8}|{'-' * 9}|")
    for r in rows:
        base = f"{r['baseline']:>10.1f}" if r["baseline"] is not None else f"{'-':>10}"
        ratio = f"{r['ratio']:>6.2f}" if r["ratio"] is not None else f"{'-':>6}"
        print(f"| {r['benchmark']:<34} | {r['vitkit']:>10.2f} | {base} | {ratio} | {r['goal']:>7} |")
    o.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(o).items() if k not in ("measure",)}
    o.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    print(f"\nwritten {o.out}")


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    main()
