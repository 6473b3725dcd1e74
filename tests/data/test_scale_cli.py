"""Through the real `vitkit` command: the same images as class folders, a Hugging Face dataset and WebDataset
shards train to the same accuracy; streamed data under DDP; the scan split between processes and remembered."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_VIT
from tests.helpers import vitkit
from vitkit.synthetic import make_shapes_folder

pytestmark = pytest.mark.slow
datasets = pytest.importorskip("datasets")  # the 'hf' extra
pytest.importorskip("webdataset")

CPU = ["--trainer.accelerator", "cpu", "--data.init_args.batch_size", "16"]
TINY = ["--config", "quickstart", "--model.backbone.init_args.model_kwargs", json.dumps(TINY_VIT["model_kwargs"]), *CPU]
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
RUN = Path("runs/quickstart/version_0")


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> dict[str, Path]:
    """Colour-cued shapes (4 x 40 train, 4 x 10 val) as class folders, a save_to_disk dataset and tar shards."""
    root = tmp_path_factory.mktemp("forms")
    make_shapes_folder(root / "folder" / "train", per_class=40, sizes=(24, 48), seed=1)
    make_shapes_folder(root / "folder" / "val", per_class=10, sizes=(24, 48), seed=2)
    loaded = datasets.load_dataset(str(root / "folder"), cache_dir=str(root / "hf_cache"))
    assert set(loaded) == {"train", "validation"}
    loaded.save_to_disk(str(root / "hf"))
    result = vitkit("shard", "--data.root", root / "folder", "--output", root / "shards", "--maxcount", "40")
    assert "train: 160 images in 4 shard(s)" in result.stdout and "val: 40 images in 1 shard(s)" in result.stdout
    return {"folder": root / "folder", "hf": root / "hf", "shards": root / "shards"}


def data_args(form: str, forms: dict[str, Path]) -> list[object]:
    if form == "folder":
        return ["--data.init_args.root", forms["folder"]]
    if form == "hf":
        return ["--data", "vitkit.HFDatasetDataModule", "--data.path", forms["hf"]]
    return ["--data", "vitkit.WebDatasetDataModule", "--data.train", f"{forms['shards']}/train-{{000000..000003}}.tar",
            "--data.val", f"{forms['shards']}/val-000000.tar"]  # fmt: skip


def fit(project: Path, *args: object) -> Path:
    """`vitkit fit --config quickstart ...` run from the user's ``project`` folder; its last checkpoint."""
    project.mkdir(exist_ok=True)
    vitkit("fit", *TINY, *args, "--trainer.logger", "false", cwd=project)
    return project / RUN / "checkpoints" / "last.ckpt"


def val_acc(project: Path, *args: object) -> float:
    """`vitkit validate --ckpt_path last` from ``project``: the accuracy it writes into the run folder."""
    vitkit("validate", "--ckpt_path", "last", *args, cwd=project)
    return json.loads((project / RUN / "validate" / "metrics.json").read_text())["val/acc"]


def test_hf_and_webdataset_train_to_the_folder_accuracy(forms, tmp_path):
    acc = {}
    for form in ("folder", "hf", "webdataset"):
        fit(tmp_path / form, *data_args(form, forms), "--data.init_args.num_workers", "2",
            "--trainer.max_epochs", "5")  # fmt: skip
        acc[form] = val_acc(tmp_path / form)
    assert min(acc.values()) >= 0.6, acc  # chance is 0.25
    assert abs(acc["hf"] - acc["folder"]) <= 0.15 and abs(acc["webdataset"] - acc["folder"]) <= 0.15, acc


def test_webdataset_under_ddp_sees_each_shard_once_per_epoch_and_predicts_each_sample_once(forms, tmp_path):
    """2 processes x 2 workers over 4 shards of 40: each (process, worker) reads one shard, every epoch."""
    checkpoint = fit(tmp_path, *data_args("webdataset", forms), *DDP, "--data.init_args.num_workers", "2",
                     "--data.init_args.batch_size", "8",
                     "--trainer.max_epochs", "2", "--trainer.callbacks+", "tests.data.recorders.KeyRecorder",
                     "--trainer.callbacks.output", tmp_path / "keys")  # fmt: skip
    everything = sorted(str(p.relative_to(forms["folder"] / "train").with_suffix(""))
                        for p in (forms["folder"] / "train").rglob("*.*"))  # fmt: skip
    for epoch in (0, 1):
        per_rank = [(tmp_path / "keys" / f"rank{r}-epoch{epoch}.txt").read_text().split() for r in (0, 1)]
        assert len(per_rank[0]) == len(per_rank[1]) == 80  # equal steps on both processes
        assert sorted(per_rank[0] + per_rank[1]) == [f"train/{k}" for k in everything]
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2 * 80 // 8
    vitkit("predict", "--ckpt_path", checkpoint, *data_args("webdataset", forms), *CPU, *DDP,
           "--data.init_args.num_workers", "2")  # fmt: skip
    (predictions,) = (tmp_path / RUN / "predictions").glob("*.csv")
    with open(predictions) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == sorted(
        f"val/{p.relative_to(forms['folder'] / 'val').with_suffix('')}" for p in (forms["folder"] / "val").rglob("*.*")
    )
    assert all(r["target"] == r["path"].split("/")[1] for r in rows)  # class names from classes.txt
    vitkit("embed", "--ckpt_path", checkpoint, *data_args("webdataset", forms), *CPU, *DDP,
           "--data.init_args.num_workers", "2", "--output", tmp_path / "emb")  # fmt: skip
    with open(tmp_path / "emb.csv") as f:
        embedded = [r["path"] for r in csv.DictReader(f)]
    assert sorted(embedded) == sorted(r["path"] for r in rows)
    assert np.load(tmp_path / "emb.npy").shape == (40, 192)


def test_hf_dataset_validates_the_same_on_two_processes_and_embeds(forms, tmp_path):
    checkpoint = fit(tmp_path, *data_args("hf", forms), "--data.init_args.num_workers", "0",
                     "--trainer.max_epochs", "1")  # fmt: skip
    results = {}
    for devices in ("1", "2"):
        results[devices] = val_acc(tmp_path, *data_args("hf", forms), *CPU, "--data.num_workers", "0",
                                   "--trainer.devices", devices,
                                   "--trainer.strategy", "ddp" if devices == "2" else "auto")  # fmt: skip
    assert results["2"] == pytest.approx(results["1"], abs=1e-6)
    vitkit(
        "embed",
        "--ckpt_path",
        checkpoint,
        *data_args("hf", forms),
        *CPU,
        *DDP,
        "--output",
        tmp_path / "emb",
    )
    with open(tmp_path / "emb.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [f"validation[{i}]" for i in range(40)]
    assert len(rows) == 40 and {r["target"] for r in rows} == {"circle", "cross", "square", "triangle"}


def test_two_processes_scan_disjoint_halves_and_a_second_run_decodes_nothing(tmp_path):
    root = make_shapes_folder(tmp_path / "data", per_class=10, shapes=("circle", "square"))
    (root / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    args = [*TINY, "--data", "tests.data.recorders.CountingFolderDataModule", "--data.root", root,
            "--data.num_workers", "0", "--data.log_dir", tmp_path / "log", "--data.val_fraction", "0.25",
            "--data.on_bad_image", "skip", *DDP, "--trainer.max_epochs", "1", "--trainer.logger", "false",
            "--trainer.default_root_dir", tmp_path / "run"]  # fmt: skip
    result = vitkit("fit", *args)
    decoded = [(tmp_path / "log" / f"decoded-rank{r}.txt").read_text().split() for r in (0, 1)]
    everything = sorted(str(p) for p in root.rglob("*.*"))
    assert not set(decoded[0]) & set(decoded[1]) and sorted(decoded[0] + decoded[1]) == everything
    assert abs(len(decoded[0]) - len(decoded[1])) <= 2  # halves of each split
    assert "skipped 1 of" in result.stderr  # found by one process, known to both
    for r in (0, 1):
        (tmp_path / "log" / f"decoded-rank{r}.txt").unlink()
    second = vitkit("fit", *args)
    again = [(tmp_path / "log" / f"decoded-rank{r}.txt").read_text() for r in (0, 1)]
    assert again == ["", ""], (decoded, again, result.stderr[-3000:], second.stderr[-3000:])
