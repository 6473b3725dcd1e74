"""``make bench-quality``: vitkit's shipped recipes against a plain timm + torch loop, on real photographs.

Each task is trained by vitkit exactly as a user types it (``vitkit fit --config RECIPE`` with only flags the README
shows, then ``vitkit test --ckpt_path best``) and by the plain loop of ``plain.py`` with the same model, image size,
epochs, batch size and images; both are scored on the test split, which nothing was fitted on (vitkit's best epoch
and temperature are chosen on val). Every run is one line of ``results.jsonl``, so a stopped benchmark keeps what
it measured; the table (mean ± std over seeds, ratio vitkit / plain) is printed and written as ``results.md``.

    .venv/bin/python benchmarks/quality/run.py [--seeds 0 1 2] [--tasks classes regression ...] [--epochs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from photos import build  # noqa: E402

VITKIT = str(Path(sys.executable).with_name("vitkit"))
#: task -> (metric, recipe, its model_kwargs for the plain loop, flags beyond --config/--data/--trainer.max_epochs)
KWARGS_64 = '{"img_size": 64, "patch_size": 8, "depth": 4}'
TASKS: dict[str, tuple[str, str, dict, list[str]]] = {
    "classes": ("acc", "quickstart", {"img": 64, "patch": 8}, ["--model.backbone.init_args.model_kwargs", KWARGS_64]),
    "longtail": ("f1_macro", "quickstart", {"img": 64, "patch": 8},
                 ["--model.backbone.init_args.model_kwargs", KWARGS_64]),
    "multilabel": ("map", "multilabel", {"img": 48, "patch": 8, "pool": "avg"}, []),
    "regression": ("r2", "regression", {"img": 48, "patch": 8, "pool": "avg"}, []),
}  # fmt: skip
#: long-tail variants: vitkit flags (from the README's imbalance table) and the plain loop's
VARIANTS = {
    "longtail": [("default", [], []), ("sampler balanced", ["--data.sampler", "balanced"], ["--balanced"]),
                 ("class_weights auto", ["--model.task.init_args.class_weights", "auto"], None)],
}  # fmt: skip


def data_flags(task: str, path: Path) -> list[str]:
    if task in ("classes", "longtail"):
        return ["--data.root", str(path)]
    if task == "multilabel":
        return ["--data.init_args.csv", str(path)]
    return ["--data.init_args.csv", str(path), "--data.init_args.target_columns", "[brick]"]


def run(command: list[str], cwd: Path) -> tuple[str, float]:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout, time.perf_counter() - start


def vitkit(task: str, path: Path, flags: list[str], epochs: int, seed: int, work: Path) -> dict:
    metric, recipe, _, extra = TASKS[task]
    slug = "".join(c if c.isalnum() else "-" for c in "-".join(flags[1::2]))
    root = work / "runs" / f"{task}{slug}-seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    fit = [VITKIT, "fit", "--config", recipe, *data_flags(task, path), "--trainer.max_epochs", str(epochs),
           "--seed_everything", str(seed), "--trainer.logger", "false", "--trainer.default_root_dir", str(root),
           *extra, *flags]  # fmt: skip
    _, seconds = run(fit, work)
    run([VITKIT, "test", "--ckpt_path", "best", "--trainer.default_root_dir", str(root)], work)
    scores = json.loads((root / "version_0" / "test" / "metrics.json").read_text())
    result = {"score": scores[f"test/{metric}"], "seconds": seconds}
    report = root / "version_0" / "report" / "report.json"
    if report.is_file():  # calibration on the held-out test split, T fitted on val
        calibration = (json.loads(report.read_text()).get("test") or {}).get("calibration") or {}
        result.update({k: calibration[k] for k in ("temperature", "ece_before", "ece_after") if k in calibration})
    return result


def plain(task: str, path: Path, flags: list[str], epochs: int, seed: int, work: Path) -> dict:
    metric, _, model, _ = TASKS[task]
    command = [sys.executable, str(HERE / "plain.py"), "--task", task, "--data", str(path), "--epochs", str(epochs),
               "--seed", str(seed), *(f"--{k}={v}" for k, v in model.items()), *flags]  # fmt: skip
    out, seconds = run(command, work)
    return {"score": json.loads(out.strip().splitlines()[-1])[metric], "seconds": seconds}


#: The LR grid the finder's suggestion is compared with (the recipe's 1e-3 in the middle).
LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def lr_row(path: Path, epochs: int, seed: int, work: Path) -> list[dict]:
    """``vitkit tune --mode lr`` on the classes task, then a fit at its suggestion and at each LR of the grid."""
    root = work / "runs" / f"lr-tune-seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    _, _, _, extra = TASKS["classes"]
    run([VITKIT, "tune", "--config", "quickstart", "--data.root", str(path), "--mode", "lr", "--seed_everything",
         str(seed), "--trainer.logger", "false", "--trainer.default_root_dir", str(root), *extra], work)  # fmt: skip
    suggestion = json.loads((root / "version_0" / "lr_find.json").read_text())["suggestion"]
    rows = []
    for name, lr in (("suggestion", suggestion), *((f"grid {lr:g}", lr) for lr in LR_GRID)):
        score = vitkit("classes", path, ["--model.optimizer.init_args.lr", f"{lr:.2e}", "--report", "false"],
                       epochs, seed, work)  # fmt: skip
        rows.append({"task": "lr", "variant": name, "who": "vitkit", "lr": lr, **score})
    return rows


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["variant"], row["who"]), []).append(row)
    lines = ["| task | variant | metric (test) | vitkit | plain loop | ratio | seeds | vitkit s | plain s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for (task, variant, who), runs in groups.items():
        if who != "vitkit" or task == "lr":
            continue
        ours = [r["score"] for r in runs]
        base = [r["score"] for r in groups.get((task, variant, "plain"), [])]
        if not base and variant != "default":  # a vitkit option without a plain counterpart: the plain default
            base = [r["score"] for r in groups.get((task, "default", "plain"), [])]

        def fmt(v: list[float]) -> str:
            return f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}" if v else "—"

        ratio = f"{statistics.mean(ours) / statistics.mean(base):.2f}" if base and statistics.mean(base) else "—"
        secs = (statistics.mean(r["seconds"] for r in runs),
                statistics.mean(r["seconds"] for r in groups.get((task, variant, "plain"), runs)))  # fmt: skip
        lines.append(f"| {task} | {variant} | {TASKS[task][0]} | {fmt(ours)} | {fmt(base)} | {ratio} | {len(ours)} "
                     f"| {secs[0]:.0f} | {secs[1]:.0f} |")  # fmt: skip
    lr = [r for r in rows if r["task"] == "lr"]
    if lr:
        best = max((r for r in lr if r["variant"] != "suggestion"), key=lambda r: r["score"])
        for r in (r for r in lr if r["variant"] == "suggestion"):
            lines += [
                "",
                f"LR finder (classes, seed {r['seed']}): suggested {r['lr']:.1e} -> acc {r['score']:.3f}; "
                f"best of the grid {best['lr']:g} -> {best['score']:.3f} (gap {best['score'] - r['score']:+.3f})",
            ]
    ece = [r for r in rows if "ece_after" in r]
    if ece:
        lines += ["", "Held-out calibration (test split; temperature fitted on val), mean over runs: "
                  f"ECE {statistics.mean(r['ece_before'] for r in ece):.3f} before, "
                  f"{statistics.mean(r['ece_after'] for r in ece):.3f} after ({len(ece)} runs, "
                  f"{sum(r['ece_after'] > r['ece_before'] + 1e-9 for r in ece)} made worse)."]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=[*TASKS, "lr"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--who", nargs="+", default=["vitkit", "plain"], choices=["vitkit", "plain"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality"))
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    data = build(args.out / "data")
    results = args.out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    done = {(r["task"], r["variant"], r["who"], r["seed"], r["epochs"]) for r in rows}
    for seed in args.seeds:
        if "lr" in args.tasks and ("lr", "suggestion", "vitkit", seed, args.epochs) not in done:
            for row in lr_row(data["classes"], args.epochs, seed, args.out):
                row.update(seed=seed, epochs=args.epochs)
                print(json.dumps(row), flush=True)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                rows.append(row)
        for task in (t for t in args.tasks if t in TASKS):
            for variant, ours, theirs in VARIANTS.get(task, [("default", [], [])]):
                for who, fn, flags in (("vitkit", vitkit, ours), ("plain", plain, theirs)):
                    key = (task, variant, who, seed, args.epochs)
                    if flags is None or key in done or who not in args.who:
                        continue
                    row = {"task": task, "variant": variant, "who": who, "seed": seed, "epochs": args.epochs,
                           **fn(task, data[task], flags, args.epochs, seed, args.out)}  # fmt: skip
                    print(json.dumps(row), flush=True)
                    with results.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    rows.append(row)
    text = table([r for r in rows if r["epochs"] == args.epochs and r["task"] in args.tasks])
    (args.out / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
