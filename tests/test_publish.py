"""Publish: the folder in timm's hub layout loads with timm alone and computes vitkit's calibrated predictions."""

from __future__ import annotations

import csv
import json
import os

import pytest
import timm
import torch
from PIL import Image

from tests.conftest import TINY_VIT
from tests.helpers import fit_quickstart, run_folder, vitkit
from vitkit import Backbone, TransferModule
from vitkit.errors import VitkitError
from vitkit.heads import LinearHead, MLPHead
from vitkit.publish import publish_model
from vitkit.tasks import Classification, MultiLabel, Regression

TASKS = {
    "classification": (Classification, None),
    "multilabel": (MultiLabel, None),
    "regression": (Regression, {"mean": [100.0, -3.0, 0.5], "std": [20.0, 2.0, 0.1]}),
}
#: What a user applies to timm's output to get what `vitkit predict` writes.
READ_OUT = {"classification": lambda x: x.softmax(-1), "multilabel": torch.sigmoid, "regression": lambda x: x}


def calibrated_model(task_name: str, head=LinearHead) -> TransferModule:
    """A tiny model with random weights and a stored temperature of 2 (classification, multi-label)."""
    torch.manual_seed(0)
    task, stats = TASKS[task_name]
    model = TransferModule(Backbone(**TINY_VIT), num_outputs=3, head=head, task=task(),
                           class_names=["a", "b", "c"], label_stats=stats)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        if hasattr(model.task, "temperature"):
            model.task.temperature.fill_(2.0)
    return model.eval()


@pytest.mark.parametrize("task_name", list(TASKS))
def test_timm_loads_the_folder_offline_and_computes_the_calibrated_predictions(task_name, tmp_path):
    model = calibrated_model(task_name)
    folder = publish_model(model, tmp_path / "published")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model.task.predict(model(images))
        got = READ_OUT[task_name](loaded(images))
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_config_carries_labels_preprocessing_and_calibration(tmp_path):
    model = calibrated_model("multilabel")
    config = json.loads((publish_model(model, tmp_path / "m") / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 3
    assert config["label_names"] == ["a", "b", "c"]
    assert config["model_args"]["patch_size"] == 8 and config["model_args"]["depth"] == 2
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and len(cfg["mean"]) == 3 and len(cfg["std"]) == 3 and cfg["crop_pct"]
    assert "tag" not in cfg  # the architecture's pretrained tag is not this model's origin
    assert config["vitkit"]["task"] == "multilabel" and config["vitkit"]["temperature"] == 2.0
    assert config["vitkit"]["thresholds"] == [0.5, 0.5, 0.5]


def test_a_head_with_hidden_layers_is_refused_in_one_line(tmp_path):
    with pytest.raises(VitkitError, match="LinearHead") as err:
        publish_model(calibrated_model("classification", head=MLPHead), tmp_path / "m")
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def linear_run(shapes_root, tmp_path_factory):
    """A 1-epoch quickstart fit with a linear head (timm's classifier form), with its end-of-fit report."""
    runs = tmp_path_factory.mktemp("linear")
    fit_quickstart(shapes_root, runs, "--trainer.max_epochs", "1", "--trainer.logger", "false",
                   "--model.head.class_path", "vitkit.LinearHead")  # fmt: skip
    return run_folder(runs)


@pytest.mark.slow
def test_publish_command_gives_the_logits_vitkit_predict_gives(linear_run, shapes_root, tmp_path):
    ckpt = linear_run / "checkpoints" / "last.ckpt"
    vitkit("publish", "--ckpt_path", ckpt, "--output", tmp_path / "pub")
    card = (tmp_path / "pub" / "README.md").read_text()
    for part in ("classification", "circle", "## Recipe", "| circle |", "temperature", "Intended use"):
        assert part in card, part
    vitkit("predict", "--ckpt_path", ckpt, "--data.predict_root", shapes_root / "cross", "--output", tmp_path / "p.csv")
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))[:6]
    model = timm.create_model(f"local-dir:{tmp_path / 'pub'}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    names = model.pretrained_cfg["label_names"]
    for row in rows:
        image = Image.open(row["path"]).convert("RGB")  # an absolute path: the folder was given as one
        with torch.no_grad():
            scores = model(transform(image).unsqueeze(0)).softmax(-1)[0]
        for name, score in zip(names, scores.tolist(), strict=True):
            column = next(k for k, v in row.items() if v == name and k.startswith("top"))
            assert abs(float(row[f"{column}_score"]) - score) <= 2e-6, (row["path"], name)


@pytest.mark.slow
def test_push_offline_is_one_line_after_writing_the_folder(linear_run, tmp_path):
    result = vitkit("publish", "--ckpt_path", linear_run / "checkpoints" / "last.ckpt", "--output", tmp_path / "pub",
                    "--push_to", "someone/shapes-vit", check=False, env={"HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("vitkit: error:")]
    assert "--push_to someone/shapes-vit" in line and (tmp_path / "pub" / "model.safetensors").is_file()


def test_published_files_are_as_readable_as_the_umask_says(tmp_path):
    mask = os.umask(0o022)
    try:
        folder = publish_model(calibrated_model("classification"), tmp_path / "m")
    finally:
        os.umask(mask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes  # safetensors wrote 0600
