"""End to end through the real `vitkit` console script, as a user runs it (subprocesses, generated data)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import run_folder, vitkit
from vitkit.recipes import RECIPES_DIR

RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))

pytestmark = pytest.mark.slow

#: Test overrides: a 2-block ViT, a head class from this test suite plugged by class_path, a CSV logger.
TEST_CONFIG = """
trainer:
  max_epochs: 2
  logger: lightning.pytorch.loggers.CSVLogger
model:
  backbone:
    init_args:
      model_kwargs: {img_size: 32, patch_size: 8, depth: 2}
  head:
    class_path: tests.test_heads.TwoLayerHead
    init_args: {width: 24}
data:
  init_args: {batch_size: 16, num_workers: 0}
"""


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, shapes_root) -> Path:
    """Run `vitkit fit` once with the quickstart recipe plus TEST_CONFIG; return the run folder."""
    root = tmp_path_factory.mktemp("runs")
    (root / "test.yaml").write_text(TEST_CONFIG)
    vitkit("fit", "--config", "quickstart", "--config", root / "test.yaml", "--data.init_args.root", shapes_root,
           "--trainer.default_root_dir", root)  # fmt: skip
    return run_folder(root)


def test_fit_writes_best_and_last_checkpoints_with_classes(fitted):
    names = sorted(p.name for p in (fitted / "checkpoints").iterdir())
    assert "last.ckpt" in names and any(n.startswith("best-epoch") for n in names)
    checkpoint = torch.load(fitted / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert checkpoint["hyper_parameters"]["class_names"] == ["circle", "cross", "square", "triangle"]
    assert checkpoint["hyper_parameters"]["num_outputs"] == 4


def test_custom_head_from_yaml_class_path_gets_linked_sizes(fitted):
    state = torch.load(fitted / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["head.net.0.weight"].shape == (24, 192)  # width from init_args, in_features from the backbone
    assert state["head.net.2.weight"].shape == (4, 24)  # out_features from the data's 4 class folders


def test_fit_logs_train_and_val_metrics_each_epoch(fitted):
    with open(fitted / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val = [r for r in rows if r.get("val/acc")]
    assert len(val) == 2
    for key in ("val/loss", "val/f1_macro", "train/acc", "train/loss_epoch"):
        assert any(r.get(key) for r in rows), key
    assert any(v for r in rows for k, v in r.items() if k.startswith("lr-AdamW"))  # one curve per param group
    assert float(val[-1]["val/acc"]) > 0.25  # 4 classes; after two epochs above chance


def test_validate_from_checkpoint_without_model_config(fitted, shapes_root):
    result = vitkit(
        "validate",
        "--data",
        "vitkit.ClassFolderDataModule",
        "--data.root",
        shapes_root,
        "--ckpt_path",
        fitted / "checkpoints" / "last.ckpt",
        "--trainer.logger",
        "false",
    )
    assert "val/acc" in result.stdout


def test_predict_from_checkpoint_writes_a_csv_of_classes(fitted, shapes_root, tmp_path):
    vitkit(
        "predict",
        "--data",
        "vitkit.ClassFolderDataModule",
        "--data.root",
        shapes_root,
        "--data.predict_root",
        shapes_root / "circle",
        "--ckpt_path",
        fitted / "checkpoints" / "last.ckpt",
        "--trainer.logger",
        "false",
        "--output",
        tmp_path / "circle.csv",
    )
    with open(tmp_path / "circle.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24
    assert {r["prediction"] for r in rows} <= {"circle", "cross", "square", "triangle"}
    assert all(Path(r["path"]).parent.name == "circle" and 0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert float(rows[0]["top1_score"]) >= float(rows[0]["top2_score"])


def test_bad_data_root_is_one_clear_error_without_traceback(tmp_path):
    result = vitkit(
        "fit",
        "--config",
        "quickstart",
        "--data.init_args.root",
        tmp_path / "nope",
        "--trainer.logger",
        "false",
        check=False,
    )
    assert result.returncode == 2
    assert f"vitkit: error: data root not found: {tmp_path / 'nope'}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_parses(recipe):
    # Pretraining recipes name their method (model.class_path: vitkit.MAE, ...) and run through `vitkit pretrain`.
    command = "pretrain" if "class_path" in yaml.safe_load(recipe.read_text())["model"] else "fit"
    result = vitkit(command, "--config", recipe, "--print_config")
    assert "model:" in result.stdout and "class_path" in result.stdout


def test_test_subcommand_scores_the_test_split(fitted, shapes_root, tmp_path):
    (tmp_path / "train").symlink_to(shapes_root, target_is_directory=True)
    for class_dir in shapes_root.iterdir():
        (tmp_path / "test" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:3]:
            (tmp_path / "test" / class_dir.name / image.name).symlink_to(image)
    result = vitkit("test", "--data", "vitkit.ClassFolderDataModule", "--data.root", tmp_path,
                    "--ckpt_path", fitted / "checkpoints" / "last.ckpt", "--trainer.logger", "false")  # fmt: skip
    assert "test/acc" in result.stdout and "test/f1_macro" in result.stdout
