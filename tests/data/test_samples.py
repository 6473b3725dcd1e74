"""SampleArray: samples in numpy arrays (flat memory in DataLoader workers) that read back as (path, target)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data.images import ImageDataset
from vitkit.data.samples import SampleArray


def test_class_indices_read_back_as_paths_and_ints():
    samples = [(Path("/data/cat/0.png"), 0), (Path("/data/dög/é 1.jpg"), 3), (Path("rel/x.png"), -1)]
    array = SampleArray(samples)
    assert list(array) == samples and array == samples and len(array) == 3
    assert array[-1] == samples[-1] and type(array[1][1]) is int
    assert array.targets.dtype == np.int64 and array.targets.tolist() == [0, 3, -1]
    with pytest.raises(IndexError):
        array[3]


def test_label_vectors_are_compact_and_regression_values_exact():
    labels = SampleArray([("a.png", (1.0, 0.0)), ("b.png", (0.0, 1.0))])
    assert labels.targets.dtype == np.float32 and labels[0] == (Path("a.png"), (1.0, 0.0))
    values = SampleArray([("a.png", (0.1, 2.5)), ("b.png", (3.3, -1.0))])
    assert values.targets.dtype == np.float64 and values[0][1] == (0.1, 2.5)  # no float32 rounding in the CSVs


def test_no_python_object_per_sample():
    array = SampleArray((f"/images/{i:07d}.jpg", i % 10) for i in range(10_000))
    held = [v for v in vars(array).values() if isinstance(v, np.ndarray)]
    assert len(held) == 3 and all(a.dtype != object for a in held)  # bytes, offsets, targets
    assert array.path(9_999) == "/images/0009999.jpg"


def test_image_dataset_reads_through_the_arrays(tmp_path):
    Image.new("RGB", (6, 4), "red").save(tmp_path / "a.png")
    dataset = ImageDataset([(tmp_path / "a.png", (0.5, 1.0))])
    image, target = dataset[0]
    assert image.size == (6, 4) and torch.equal(target, torch.tensor([0.5, 1.0]))
    assert dataset.samples[0] == (tmp_path / "a.png", (0.5, 1.0))
