"""`vitkit report`: report.html / report.json / label_errors.csv at the end of fit and from the command, the
numbers against the checkpoint they describe, and the page as a browser shows it (headless Chromium)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_VIT
from tests.helpers import TINY_ARGS, vitkit
from vitkit import Backbone, ManifestDataModule, Regression, TransferModule
from vitkit.synthetic import SHAPES, make_regression_manifest, make_shapes_folder
from vitkit.trainer import VitkitTrainer

METRICS = {"precision", "recall", "f1", "support"}


def chromium() -> str:
    """Debian's headless Chromium (.ci/run installs the package); skipped only where it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs the Debian package chromium")
        pytest.skip("headless Chromium not installed (Debian package chromium: apt-get install -y chromium)")
    return found


def browse(page: Path, *args: str) -> subprocess.CompletedProcess:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def assert_pictures_render(html: Path, tmp_path: Path, pictures: int) -> None:
    """Chromium decodes every embedded picture (its natural width, read by a script in a copy of the page), and
    its screenshot of the page is not blank: far more coloured pixels than the same page without the pictures."""
    probe = tmp_path / "probe.html"
    script = ('<script>addEventListener("load", () => { document.body.dataset.widths = [...document.images]'
              '.map(i => i.complete ? i.naturalWidth : 0).join(","); })</script></body>')  # fmt: skip
    probe.write_text(html.read_text(encoding="utf-8").replace("</body>", script), encoding="utf-8")
    dom = browse(probe, "--dump-dom").stdout
    widths = [int(w) for w in dom.split('data-widths="')[1].split('"')[0].split(",")]
    assert len(widths) == pictures and min(widths) > 100, widths

    def coloured_share(page: Path) -> float:
        shot = tmp_path / f"{page.stem}.png"
        browse(page, "--window-size=1200,3000", f"--screenshot={shot}")
        pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        return float(((pixels.max(-1) - pixels.min(-1)) > 60).mean())

    text_only = tmp_path / "text_only.html"
    text_only.write_text(html.read_text(encoding="utf-8").replace('src="data:image/png', 'src="x:'), encoding="utf-8")
    with_pictures, without = coloured_share(html), coloured_share(text_only)
    assert with_pictures > 0.03 and with_pictures > 20 * without, (with_pictures, without)


def assert_describes(record: dict, checkpoint: Path) -> None:
    """report.json has the issue's keys, for every class, with the temperature stored in ``checkpoint``."""
    assert record["checkpoint"] == str(checkpoint.resolve()) and record["task"] == "classification"
    assert record["data"].startswith("data root ")  # which images it scored
    assert set(record["per_class"]) == set(SHAPES)
    assert all(set(v) >= METRICS for v in record["per_class"].values())
    assert sum(v["support"] for v in record["per_class"].values()) == record["samples"] == 12  # 20% of 15 per class
    calibration = record["calibration"]
    stored = float(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]["task.temperature"])
    # The checkpoint's temperature (1 when cross-fitting on val showed no held-out gain; the report's own fit on the
    # same val outputs then says the same), and which split the numbers are from: val, the split T was fitted on.
    assert calibration["temperature"] == pytest.approx(stored)
    assert calibration["stored_in_checkpoint"] is (stored != 1.0)
    assert calibration["fitted_on"] == "val" and calibration["held_out"] is False
    assert 0 <= calibration["ece_after"] <= 1 and 0 <= calibration["ece_before"] <= 1
    assert record["overall"]["balanced_acc"] == pytest.approx(
        np.mean([v["recall"] for v in record["per_class"].values()])
    )


@pytest.mark.slow
def test_fit_ends_with_a_report_and_vitkit_report_writes_one_into_the_run_folder(tmp_path):
    images = make_shapes_folder(tmp_path / "my_images", per_class=15, sizes=(24, 40), seed=2)
    fit = vitkit("fit", "--config", "quickstart", "--data.root", images, *TINY_ARGS, "--trainer.max_epochs", "1",
                 "--trainer.logger", "false", cwd=tmp_path)  # fmt: skip
    run = tmp_path / "runs" / "quickstart" / "version_0"
    output = fit.stdout + fit.stderr
    assert "report: runs/quickstart/version_0/report/report.html" in output
    # The summary is the fit's, not the restored state of the best checkpoint the report scored (saved before last).
    assert "last checkpoint: runs/quickstart/version_0/checkpoints/last.ckpt" in output
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    assert_describes(json.loads((run / "report" / "report.json").read_text()), best)

    shutil.rmtree(run / "report")
    bad = vitkit("report", "--ckpt_path", "last", "--confidence", "1.5", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("vitkit: error: --confidence 1.5")
    result = vitkit("report", "--ckpt_path", "last", cwd=tmp_path)
    assert "report written to runs/quickstart/version_0/report/report.html" in result.stdout
    assert sorted(p.name for p in (run / "report").iterdir()) == ["label_errors.csv", "report.html", "report.json"]
    record = json.loads((run / "report" / "report.json").read_text())
    assert_describes(record, run / "checkpoints" / "last.ckpt")
    with open(run / "report" / "label_errors.csv") as f:
        errors = list(csv.DictReader(f))
    assert len(errors) == record["label_errors"]
    assert all(float(e["confidence"]) >= 0.9 and e["predicted"] != e["label"] for e in errors)
    # per-class table, confusion matrix, PR curves, reliability diagram, top losses
    html = run / "report" / "report.html"
    assert html.read_text().count("<img") == 4 and "most confused pairs" in html.read_text()
    assert_pictures_render(html, tmp_path, pictures=4)


def test_a_regression_report_has_per_target_errors_and_scatter_plots(tmp_path):
    data = ManifestDataModule(make_regression_manifest(tmp_path / "data", n=30, size=32), batch_size=8,
                              num_workers=0, target_columns=["brightness", "radius"])  # fmt: skip
    model = TransferModule(Backbone(**TINY_VIT), num_outputs=2, class_names=data.class_names,
                           label_stats=data.label_stats, task=Regression())  # fmt: skip
    trainer = VitkitTrainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    written = trainer.report(model, data, output=str(tmp_path / "out"), top_losses=4)
    record = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written == tmp_path / "out" / "report.html" and record["task"] == "regression"
    assert set(record["per_target"]) == {"brightness", "radius"} and record["calibration"] is None
    assert all(set(v) == {"mae", "rmse", "r2"} for v in record["per_target"].values())
    model.eval()
    data.setup("validate")
    with torch.no_grad():
        predicted, true = zip(*((model.task.predict(model(x)), y) for x, y in data.val_dataloader()), strict=True)
    errors = (torch.cat(predicted) - torch.cat(true)).abs().mean(0)
    assert [record["per_target"][n]["mae"] for n in ("brightness", "radius")] == pytest.approx(errors.tolist())
    assert written.read_text().count("<img") == 2  # predicted-vs-true and residuals per target; top losses
