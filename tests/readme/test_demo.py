"""`make demo`: the script it runs, in a copy of the repository's layout (it writes demo_data/ and runs/ there)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_make_demo_runs_the_demo_script_offline():
    plan = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "WANDB_MODE=offline .venv/bin/python scripts/demo.py" in plan


def test_the_demo_trains_uses_and_transfers_the_model(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "demo.py", tmp_path / "scripts" / "demo.py")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", "VITKIT_RUN_DIR")}
    result = subprocess.run([sys.executable, "scripts/demo.py"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    accuracy = float(re.search(r"val accuracy: ([\d.]+) on 80 images, 4 classes", result.stdout).group(1))
    transfer = float(re.search(r"linear probe\): val accuracy ([\d.]+)", result.stdout).group(1))
    scratch = float(re.search(r"from scratch: +val accuracy ([\d.]+)", result.stdout).group(1))
    assert accuracy >= 0.9 and transfer > scratch
    pretrained = float(re.search(r"\(vitkit pretrain\), fine-tuned: val accuracy ([\d.]+)", result.stdout).group(1))
    few_scratch = float(re.findall(r"from scratch: +val accuracy ([\d.]+)", result.stdout)[-1])
    assert pretrained > few_scratch  # step 4: MAE on unlabelled images, then 10 labels per class
    assert (tmp_path / "runs/demo/pretrain/version_0/checkpoints/encoder.safetensors").is_file()
    run = tmp_path / "runs" / "demo" / "shapes" / "version_0"
    for made in ("predictions/val.csv", "attention", "embeddings/shapes.npy", "config.yaml"):
        assert (run / made).exists(), made
    assert list((run / "checkpoints").glob("best-*.onnx"))
    assert (tmp_path / "runs" / "demo" / "attention.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_data", "runs", "scripts"]
