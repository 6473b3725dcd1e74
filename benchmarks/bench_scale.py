"""Large-dataset benchmark (`make bench-scale`): the pre-training scan, start-up to the first training step, DataLoader
worker memory over an epoch, and images/s from class folders vs WebDataset shards vs a Hugging Face dataset.

Baselines run in the same invocation: the scan as vitkit did it before (a full decode of every file, every run), the
start-up of the code in ``--before`` (a vitkit checkout without the scan cache, e.g. the main branch), and the old
``ImageDataset`` (a Python list of ``(Path, target)`` tuples) for worker memory.

    python benchmarks/bench_scale.py                       # 100,000 images, 1,000,000 manifest rows
    python benchmarks/bench_scale.py --images 20000 --rows 200000 --before ../main
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parent.parent
FIRST_STEP = '''
import os, time, psutil, lightning as L
class FirstStep(L.Callback):
    """Print the seconds from process start to the first training batch, then stop."""
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.is_global_zero:
            print(f"FIRST_STEP {time.time() - psutil.Process().create_time():.2f}", flush=True)
        trainer.should_stop = True
'''


def make_folder(root: Path, images: int, classes: int = 10, size: int = 32) -> list[Path]:
    """``images`` small JPEGs in ``classes`` folders (noise in a class colour), written in threads."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (classes, 3))
    paths = [root / f"c{i % classes:02d}" / f"{i:07d}.jpg" for i in range(images)]
    for c in range(classes):
        (root / f"c{c:02d}").mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        noise = np.random.default_rng(i).integers(-40, 40, (size, size, 3))
        pixels = np.clip(colours[i % classes] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(paths[i], quality=85)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(images)))
    return paths


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def bench_scan(paths: list[Path], cache: Path, workers: int) -> dict[str, float]:
    """Seconds to scan all files: the old full decode, then the cached scan cold and warm."""
    from vitkit.data.images import _decode, find_unreadable

    def full(path: Path) -> None:
        with contextlib.suppress(Exception):
            _decode(path)

    def old_scan() -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(full, paths))

    os.environ["VITKIT_CACHE_DIR"] = str(cache)
    shutil.rmtree(cache, ignore_errors=True)
    results = {"full decode, every run (before)": timed(old_scan)[0]}
    results["draft check, no cache"] = timed(find_unreadable, paths, workers, cache=False)[0]
    results["cached scan, first run"] = timed(find_unreadable, paths, workers)[0]
    results["cached scan, second run"] = timed(find_unreadable, paths, workers)[0]
    return results


def bench_draft(workdir: Path, images: int, workers: int, size: int = 192) -> dict[str, float]:
    """Seconds to check ``images`` photo-sized JPEGs by a full decode and by the 1/8-scale draft decode."""
    from vitkit.data.images import _decode, check_image
    from vitkit.synthetic import draw_shape

    folder = workdir / f"photos{size}"
    if not folder.exists():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(images):
            draw_shape(rng, "circle", size).save(folder / f"{i:05d}.jpg", quality=90)
    paths = sorted(folder.glob("*.jpg"))
    with ThreadPoolExecutor(workers) as pool:
        full_s, _ = timed(lambda: list(pool.map(_decode, paths)))
        draft_s, _ = timed(lambda: list(pool.map(check_image, paths)))
    return {f"full decode of {images} {size}px JPEGs": full_s, "draft (1/8 scale) check": draft_s}


def first_step(code: Path, root: Path, cache: Path, devices: int, workdir: Path) -> float:
    """Seconds from `vitkit fit` start to its first training batch, with ``code`` on PYTHONPATH."""
    (workdir / "vitkit_bench_first_step.py").write_text(FIRST_STEP)
    env = {**os.environ, "PYTHONPATH": f"{code}:{workdir}", "VITKIT_CACHE_DIR": str(cache), "WANDB_MODE": "offline"}
    command = [str(Path(sys.executable).with_name("vitkit")), "fit", "--config", str(REPO / "recipes/quickstart.yaml"),
               "--model.backbone.init_args.model_kwargs", '{"img_size": 32, "patch_size": 8, "depth": 2}',
               "--data.init_args.root", str(root), "--data.init_args.num_workers", "2",
               "--data.init_args.val_fraction", "0.01", "--trainer.accelerator", "cpu",
               "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
               "--trainer.logger", "false", "--trainer.max_steps", "1",
               "--trainer.limit_val_batches", "0", "--trainer.callbacks+", "vitkit_bench_first_step.FirstStep",
               "--trainer.default_root_dir", str(workdir / "run")]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=workdir, timeout=3600)
    line = next((x for x in result.stdout.splitlines() if x.startswith("FIRST_STEP")), None)
    if line is None:
        raise RuntimeError(f"vitkit fit failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return float(line.split()[1])


class ListDataset(Dataset):
    """vitkit's ImageDataset before: samples in a Python list of ``(Path, target)`` tuples."""

    def __init__(self, samples: list, load) -> None:
        self.samples = list(samples)
        self.load = load

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = self.load(path)
        return image, torch.tensor(target, dtype=torch.float32) if isinstance(target, tuple) else target


def synthetic_image(path: object) -> torch.Tensor:
    """A decoder that reads nothing: the epoch is all indexing and collation, which is what copies memory."""
    return torch.zeros(3, 8, 8)


def _watch_children(readings: list, done: threading.Event) -> None:
    """Every 0.5 s, the USS and PSS (MiB) of this process's children (the DataLoader workers)."""
    me = psutil.Process()
    while not done.is_set():
        with contextlib.suppress(psutil.Error):
            infos = [c.memory_full_info() for c in me.children()]
            readings.append([(i.uss / 2**20, i.pss / 2**20) for i in infos])
        time.sleep(0.5)


def worker_memory(rows: int, workers: int, batch_size: int) -> dict[str, dict[str, float]]:
    """Worker USS and PSS (MiB) after the first batches and at the end of one epoch over ``rows`` samples
    (4 regression targets each, as a manifest gives), for the list-based and the array-based dataset."""
    import vitkit.data.images as images

    samples = [(Path(f"/data/images/{i // 1000:04d}/{i:08d}.jpg"), tuple(float(v) for v in (i, i % 7, 0.5, 1.0)))
               for i in range(rows)]  # fmt: skip  # the data module keeps such a list in the parent, as in a real run
    images.load_image = synthetic_image  # the workers inherit it
    results = {}
    for name, dataset in (("list of tuples (before)", ListDataset(samples, synthetic_image)),
                          ("numpy arrays (SampleArray)", images.ImageDataset(samples))):  # fmt: skip
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True)
        readings: list[list[tuple[float, float]]] = []
        done = threading.Event()
        watcher = threading.Thread(target=_watch_children, args=(readings, done), daemon=True)
        start = time.perf_counter()
        for step, _ in enumerate(loader):
            if step == 0:
                watcher.start()
        done.set()
        watcher.join()
        seen = [r for r in readings if len(r) == workers]
        results[name] = {
            "uss_start": sum(u for u, _ in seen[0]) / workers,
            "uss_end": sum(u for u, _ in seen[-1]) / workers,
            "pss_start": sum(p for _, p in seen[0]) / workers,
            "pss_end": sum(p for _, p in seen[-1]) / workers,
            "epoch_s": time.perf_counter() - start,
        }
        del loader
    return results


def throughput(
    root: Path, workdir: Path, images: int, workers: int, batch_size: int, repeats: int = 3
) -> dict[str, float]:
    """Training-loader images/s over one epoch of ``images`` files as class folders, WebDataset shards (written by
    write_shards) and a Hugging Face dataset (save_to_disk, images embedded), with the same timm transforms; the
    median of ``repeats`` alternating epochs."""
    import datasets

    from vitkit import ClassFolderDataModule, HFDatasetDataModule, WebDatasetDataModule
    from vitkit.data.shard import write_shards

    common = {"batch_size": batch_size, "num_workers": workers, "data_config": {"input_size": (3, 32, 32)}}
    subset = workdir / "subset"
    if not subset.exists():
        for path in sorted(root.rglob("*.jpg"))[:images]:
            (subset / path.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(path, subset / path.parent.name / path.name)
    folder = ClassFolderDataModule(subset, val_fraction=0.01, **common)
    shard_s, _ = timed(write_shards, folder, workdir / "shards", maxcount=max(1, images // 16))
    count = len(list((workdir / "shards").glob("train-*.tar")))
    shards = WebDatasetDataModule(f"{workdir}/shards/train-{{000000..{count - 1:06d}}}.tar", None, **common)
    train = folder.samples("train")
    table = datasets.Dataset.from_dict(
        {"image": [str(p) for p, _ in train], "label": [t for _, t in train]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=folder.class_names)}),
    )
    hf_s, _ = timed(lambda: datasets.DatasetDict({"train": table, "validation": table.select(range(10))}).save_to_disk(
        str(workdir / "hf")))  # fmt: skip
    hf = HFDatasetDataModule(str(workdir / "hf"), **common)
    results: dict[str, float] = {"write shards (s)": shard_s, "save_to_disk (s)": hf_s}
    forms = {"class folders": folder, "WebDataset shards": shards, "HF dataset": hf}
    rates: dict[str, list[float]] = {name: [] for name in forms}
    for data in forms.values():
        data.setup("fit")
    for _ in range(repeats):  # alternating, fresh workers each time; medians below
        for name, data in forms.items():
            seen, start = 0, 0.0
            for step, batch in enumerate(data.train_dataloader()):
                if step == 2:
                    seen, start = 0, time.perf_counter()
                seen += len(batch[0])
            rates[name].append(seen / (time.perf_counter() - start))
    results.update({name: float(np.median(r)) for name, r in rates.items()})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000, help="images in the generated folder")
    parser.add_argument("--rows", type=int, default=1_000_000, help="samples for the worker-memory test")
    parser.add_argument("--throughput-images", type=int, default=20_000, help="images for the images/s test")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--before", type=Path, default=None, help="a vitkit checkout to time start-up against")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vitkit-bench-scale"))
    parser.add_argument("--only", nargs="*", default=["scan", "draft", "startup", "memory", "throughput"])
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    root = args.workdir / f"folder{args.images}"
    report: dict[str, object] = {"images": args.images, "rows": args.rows, "cpus": os.cpu_count()}
    if not root.exists():
        report["generate_s"], _ = timed(make_folder, root, args.images)
    paths = sorted(root.rglob("*.jpg"))
    if "scan" in args.only:
        report["scan"] = bench_scan(paths, args.workdir / "cache-scan", args.workers)
        print(json.dumps(report["scan"], indent=1), flush=True)
    if "draft" in args.only:
        report["draft"] = bench_draft(args.workdir, 2000, args.workers)
        print(json.dumps(report["draft"], indent=1), flush=True)
    if "startup" in args.only:
        startup = {}
        for label, code in (("before", args.before), ("after", REPO)):
            if code is None:
                continue
            for devices in (1, 2):
                cache = args.workdir / f"cache-{label}-{devices}"
                shutil.rmtree(cache, ignore_errors=True)
                for run in ("first", "second"):
                    startup[f"{label}, {devices} process(es), {run} run"] = first_step(
                        code, root, cache, devices, args.workdir
                    )
                    print(json.dumps(startup, indent=1), flush=True)
        report["startup"] = startup
    if "memory" in args.only:
        report["memory"] = worker_memory(args.rows, args.workers, batch_size=256)
        print(json.dumps(report["memory"], indent=1), flush=True)
    if "throughput" in args.only:
        report["throughput"] = throughput(root, args.workdir, args.throughput_images, args.workers, 128)
        print(json.dumps(report["throughput"], indent=1), flush=True)
    (args.workdir / "results.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
