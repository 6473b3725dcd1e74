"""`make demo`: generate a small class-folder dataset, fine-tune the quickstart ViT on it offline, report accuracy.

Everything goes through the real `vitkit` command, as a user would run it. The reported accuracy is recomputed
from `vitkit predict`'s CSV on the validation images, using the best checkpoint.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vitkit.synthetic import make_shapes_folder

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "demo_data" / "shapes"
RUN = ROOT / "runs" / "demo"
VITKIT = str(Path(sys.executable).with_name("vitkit"))


def vitkit(*args: str) -> None:
    print("$ vitkit " + " ".join(args), flush=True)
    subprocess.run([VITKIT, *args], check=True, cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"})


def main() -> int:
    if not DATA.is_dir():
        make_shapes_folder(DATA, per_class=100, seed=0)
        print(f"generated {sum(1 for _ in DATA.rglob('*.*'))} images in {DATA}")
    shutil.rmtree(RUN, ignore_errors=True)
    start = time.perf_counter()
    vitkit(
        "fit",
        "--config",
        "recipes/quickstart.yaml",
        "--data.init_args.root",
        str(DATA),
        "--trainer.default_root_dir",
        str(RUN),
        "--trainer.logger.init_args.save_dir",
        str(RUN),
        "--checkpoint.dirpath",
        str(RUN / "checkpoints"),
    )
    fit_seconds = time.perf_counter() - start
    best = next((RUN / "checkpoints").glob("best-*.ckpt"))
    vitkit(
        "predict",
        "--data",
        "vitkit.ClassFolderDataModule",
        "--data.root",
        str(DATA),
        "--ckpt_path",
        str(best),
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(RUN),
    )
    with open(RUN / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["target"] for r in rows})
    accuracy = sum(r["prediction"] == r["target"] for r in rows) / len(rows)
    chance = 1 / len(classes)
    print(f"\nfit: {fit_seconds:.0f} s; best checkpoint: {best.relative_to(ROOT)}")
    print(f"predictions: {(RUN / 'predictions.csv').relative_to(ROOT)}")
    print(f"val accuracy: {accuracy:.3f} on {len(rows)} images, {len(classes)} classes (chance {chance:.2f})")
    if accuracy < 2 * chance:
        print("demo FAILED: accuracy is not far above chance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
