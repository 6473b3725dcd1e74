"""Class-balanced sampling: near-uniform class frequencies per epoch, on one process and split across two."""

from __future__ import annotations

import json
import shutil
import warnings
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest

from tests.conftest import TINY_VIT
from tests.helpers import fit_quickstart, run_folder, vitkit
from vitkit import Backbone, ClassFolderDataModule, Classification, TransferModule
from vitkit.data.balance import BalancedSampler, balanced_weights
from vitkit.data.check import check_data
from vitkit.errors import DataError
from vitkit.synthetic import make_shapes_folder

#: The issue's long tail: 100/50/20/8/5 images per class.
LONG_TAIL = np.repeat(np.arange(5), [100, 50, 20, 8, 5])


def frequencies(targets: np.ndarray, indices: list[int], classes: int) -> np.ndarray:
    return np.bincount(targets[indices], minlength=classes) / len(indices)


def test_balanced_sampler_draws_every_class_about_equally_in_epochs_of_the_usual_length():
    sampler = BalancedSampler(LONG_TAIL, seed=0)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        epoch_indices = list(sampler)
        assert len(epoch_indices) == len(sampler) == len(LONG_TAIL)
        drawn += epoch_indices
    assert np.abs(frequencies(LONG_TAIL, drawn, 5) - 0.2).max() < 0.02  # 3660 draws; unbalanced: 0.55 .. 0.03
    assert np.abs(frequencies(LONG_TAIL, list(range(len(LONG_TAIL))), 5) - 0.2).max() > 0.3


def test_balanced_sampler_is_seeded_and_differs_per_epoch():
    first, again = BalancedSampler(LONG_TAIL, seed=3), BalancedSampler(LONG_TAIL, seed=3)
    assert list(first) == list(again)
    assert list(first) != list(BalancedSampler(LONG_TAIL, seed=4))
    first.set_epoch(1)
    assert list(first) != list(again)


def test_two_processes_each_draw_their_share_of_one_balanced_draw():
    ranks = [BalancedSampler(LONG_TAIL, num_replicas=2, rank=r, seed=0) for r in (0, 1)]
    drawn: dict[int, list[int]] = {0: [], 1: []}
    for epoch in range(20):
        for rank, sampler in enumerate(ranks):
            sampler.set_epoch(epoch)
            indices = list(sampler)
            assert len(indices) == len(sampler) == 92  # ceil(183 / 2): an epoch as long as without balancing
            drawn[rank] += indices
    assert drawn[0] != drawn[1]
    for rank in (0, 1):  # each process's share is balanced, and so are both together
        assert np.abs(frequencies(LONG_TAIL, drawn[rank], 5) - 0.2).max() < 0.035
    assert np.abs(frequencies(LONG_TAIL, drawn[0] + drawn[1], 5) - 0.2).max() < 0.02


def test_multilabel_samples_are_weighted_by_their_rarest_label():
    labels = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0]], dtype=np.float32)  # b is rare; one image has none
    weights = balanced_weights(labels)
    assert weights.tolist() == pytest.approx([1 / 4, 1 / 4, 1 / 4, 1.0, 1.0])


def test_regression_targets_cannot_be_balanced():
    with pytest.raises(DataError, match="regression targets have no classes"):
        balanced_weights(np.array([[0.3], [2.5]], dtype=np.float32))


def long_tailed_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    make_shapes_folder(root, per_class=max(counts.values()), shapes=tuple(counts), sizes=(24, 32), seed=seed)
    for name, keep in counts.items():
        for path in sorted((root / name).iterdir())[keep:]:
            path.unlink()
    return root


def test_the_data_module_trains_through_the_balanced_sampler(tmp_path):
    root = long_tailed_folder(tmp_path / "tail", {"circle": 30, "square": 3})
    data = ClassFolderDataModule(root, sampler="balanced", batch_size=8, num_workers=0, data_config=SMALL)
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, BalancedSampler) and len(loader.sampler) == len(data.datasets["train"])
    seen = Counter(int(t) for _, targets in loader for t in targets)
    assert seen[1] > 5  # 2 of 26 train images are squares: about 13 of 26 draws
    assert data.label_stats == {"class_counts": [24, 2]}
    with pytest.raises(ValueError, match="sampler must be 'none' or 'balanced'"):
        ClassFolderDataModule(root, sampler="oversample")


@pytest.mark.parametrize(
    ("task", "flag"),
    [(Classification(class_weights="auto"), "class_weights auto"), (Classification(class_weights=[1.0, 2.0]), None)],
)
def test_balanced_sampler_with_automatic_class_weights_warns_once_that_it_corrects_twice(tmp_path, task, flag):
    root = long_tailed_folder(tmp_path / "tail", {"circle": 12, "square": 3})
    data = ClassFolderDataModule(root, sampler="balanced", batch_size=8, num_workers=0)
    data.setup("fit")
    model = TransferModule(Backbone(**TINY_VIT), num_outputs=2, task=task, label_stats=data.label_stats)
    trainer = L.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    twice = [str(w.message) for w in caught if "correct the class imbalance" in str(w.message)]
    if flag is None:  # weights given by hand are the user's own choice
        assert twice == []
    else:
        assert len(twice) == 1 and "\n" not in twice[0], twice
        assert f"sampler balanced and --model.task.init_args.{flag}" in twice[0] and "choose one" in twice[0]


SMALL = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
         "crop_pct": 1.0}  # fmt: skip


def test_check_data_shows_the_imbalance_and_suggests_balancing(tmp_path):
    skewed = check_data(ClassFolderDataModule(long_tailed_folder(tmp_path / "a", {"circle": 40, "square": 5})))
    text = skewed.format()
    assert "imbalance: 8.0x (class circle 32, class square 4 train images)" in text
    assert "--data.sampler balanced" in text and "class_weights auto" in text
    even = check_data(ClassFolderDataModule(long_tailed_folder(tmp_path / "b", {"circle": 10, "square": 10})))
    assert "balanced: every class has 8 train images" in even.format() and "imbalance" not in even.format()
    assert "sampler balanced" not in even.format()


@pytest.mark.slow
def test_two_ddp_processes_train_on_balanced_classes(tmp_path):
    """Through `vitkit fit` on 2 processes: Lightning does not swap the sampler for its own (unbalanced)
    distributed one; each process takes half an epoch of a balanced draw (recorded per process and epoch); the
    report at the end of fit gathers both processes' val outputs."""
    root = long_tailed_folder(tmp_path / "tail", {"circle": 40, "cross": 20, "square": 8, "triangle": 5})
    record = tmp_path / "seen"
    fit_quickstart(root, tmp_path / "runs", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                   "--trainer.strategy", "ddp", "--trainer.max_epochs", "3", "--trainer.logger", "false",
                   "--data.init_args.batch_size", "8", "--data.init_args.sampler", "balanced",
                   "--trainer.callbacks+", "tests.data.recorders.TargetRecorder",
                   "--trainer.callbacks.output", record)  # fmt: skip
    train = 32 + 16 + 6 + 4  # 80% of each class
    targets: dict[str, list[int]] = {}
    for path in sorted(record.iterdir()):
        targets[path.stem] = [int(line) for line in path.read_text().split()]
    assert sorted(targets) == [f"rank{r}-epoch{e}" for r in (0, 1) for e in range(3)]
    assert all(len(t) == train // 2 for t in targets.values())  # each process: half an epoch of the usual length
    assert targets["rank0-epoch0"] != targets["rank1-epoch0"] and targets["rank0-epoch0"] != targets["rank0-epoch1"]
    pooled = np.array([t for ts in targets.values() for t in ts])
    shares = np.bincount(pooled, minlength=4) / len(pooled)  # 174 draws; without balancing: 0.55, 0.28, 0.10, 0.07
    assert np.abs(shares - 0.25).max() < 0.11, shares
    shutil.rmtree(record)
    # The report at the end of fit ran on both processes and has every val image once (8 + 4 + 2 + 1).
    report = json.loads((run_folder(tmp_path / "runs") / "report" / "report.json").read_text())
    assert report["samples"] == 15 and [v["support"] for v in report["per_class"].values()] == [8, 4, 2, 1]


@pytest.mark.slow
def test_sampler_option_is_listed_in_the_data_help():
    result = vitkit("fit", "--data.help", "ClassFolderDataModule")
    assert "--data.sampler" in result.stdout and "Literal['none', 'balanced']" in result.stdout


@pytest.mark.slow
def test_fit_on_a_15x_imbalanced_folder_suggests_balancing_once(tmp_path):
    root = long_tailed_folder(tmp_path / "tail", {"circle": 38, "square": 3})
    result = fit_quickstart(root, tmp_path / "runs", "--trainer.max_epochs", "1", "--trainer.logger", "false")
    said = [line for line in result.stderr.splitlines() if "data is imbalanced" in line]
    assert len(said) == 1 and "circle vs square" in said[0] and "--data.sampler balanced" in said[0], said
    quiet = fit_quickstart(root, tmp_path / "runs", "--trainer.max_epochs", "1", "--trainer.logger", "false",
                           "--data.init_args.sampler", "balanced")  # fmt: skip
    assert "data is imbalanced" not in quiet.stderr
