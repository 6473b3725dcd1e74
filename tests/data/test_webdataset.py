"""WebDatasetDataModule and `vitkit shard`: shards round-trip, every sample once per epoch over processes and
workers, class names and sizes from the sidecar files, bad samples named by key."""

from __future__ import annotations

import http.server
import io
import json
import logging
import socket
import tarfile
import threading
from collections import Counter
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vitkit import ClassFolderDataModule, DataError, ManifestDataModule, WebDatasetDataModule
from vitkit.data.shard import shard_main, write_shards
from vitkit.synthetic import make_multilabel_manifest

pytest.importorskip("webdataset")
SMALL = {"data_config": {"input_size": (3, 16, 16)}}


def members(shard: Path) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def keys_of(loader) -> list[str]:
    return [key for batch in loader for key in batch[2]]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, shapes_root) -> Path:
    """shapes_root (96 images): 76 train images in 8 shards (7 of 10, one of 6) and 20 val images in 2."""
    out = tmp_path_factory.mktemp("shards")
    data = ClassFolderDataModule(shapes_root, val_fraction=0.2, seed=0)
    write_shards(data, out, maxcount=10)
    return out


def test_shards_round_trip_the_folder_images_bytes_and_labels(shards, shapes_root):
    data = ClassFolderDataModule(shapes_root, val_fraction=0.2, seed=0)
    assert (shards / "classes.txt").read_text().split() == data.class_names
    sizes = json.loads((shards / "sizes.json").read_text())
    train_shards = sorted(shards.glob("train-*.tar"))
    assert [sizes[s.name] for s in train_shards] == [10] * 7 + [6] and sum(sizes.values()) == 96
    stored: dict[str, tuple[bytes, int]] = {}
    for shard in train_shards:
        entries = members(shard)
        for name in [n for n in entries if n.endswith(".cls")]:
            key = name[: -len(".cls")]
            image = next(v for n, v in entries.items() if n.startswith(key + ".") and not n.endswith(".cls"))
            stored[key] = (image, int(entries[name]))
    expected = {str(p.relative_to(shapes_root).with_suffix("")): (p.read_bytes(), t) for p, t in data.samples("train")}
    assert stored == expected  # every train image once, unchanged bytes, its class index
    classes = Counter(t for _, t in stored.values())
    first = Counter(int(v) for n, v in members(train_shards[0]).items() if n.endswith(".cls"))
    assert len(first) >= 3 and len(classes) == 4  # training samples are shuffled across shards


def test_val_shards_read_back_in_order_with_labels(shards, shapes_root):
    folder = ClassFolderDataModule(shapes_root, val_fraction=0.2, seed=0)
    data = WebDatasetDataModule(None, str(shards / "val-{000000..000001}.tar"), batch_size=5, num_workers=0, **SMALL)
    data.setup("validate")
    loader = data.val_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 4 and batches[0][0].shape == (5, 3, 16, 16)  # 2 shards of 10
    targets = torch.cat([b[1] for b in batches]).tolist()
    assert targets == [t for _, t in folder.samples("val")]
    assert keys_of(batches) == [str(p.relative_to(shapes_root).with_suffix("")) for p, _ in folder.samples("val")]


def test_each_sample_once_per_epoch_over_two_processes_and_two_workers(shards, monkeypatch):
    """Each process (webdataset reads RANK/WORLD_SIZE) and worker reads its own shards: the union over processes
    of an epoch is every train sample exactly once, in equal numbers of batches, in a new order every epoch."""
    pattern = str(shards / "train-{000000..000007}.tar")
    epochs: list[dict[int, list[str]]] = [{}, {}]
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        data = WebDatasetDataModule(pattern, None, batch_size=4, num_workers=2, shuffle_buffer=8, **SMALL)
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank, lightning_module=None)
        data.setup("fit")
        loader = data.train_dataloader()
        for epoch in epochs:
            epoch[rank] = keys_of(loader)
            assert len(epoch[rank]) == len(loader) * 4
    sizes = json.loads((shards / "sizes.json").read_text())
    # slots (rank, worker) hold shards {0,4}, {2,6}, {1,5}, {3,7}: 20, 20, 20 and 16 samples -> 4 batches each
    assert len(epochs[0][0]) == len(epochs[0][1]) == 2 * 4 * 4 and sizes["train-000007.tar"] == 6
    for epoch in epochs:
        seen = epoch[0] + epoch[1]
        assert len(seen) == len(set(seen)) == 64  # no sample twice in an epoch
    assert epochs[0][0] != epochs[1][0]  # reshuffled


def test_evaluation_with_fewer_shards_than_processes_splits_by_sample(shards, monkeypatch):
    """One val shard, two processes: both read it and keep alternate samples, so neither is left without data."""
    seen = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        data = WebDatasetDataModule(None, str(shards / "val-000000.tar"), batch_size=3, num_workers=2, **SMALL)
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank, lightning_module=None)
        data.setup("validate")
        loader = data.val_dataloader()
        batches = list(loader)
        assert len(loader) == len(batches) == 2  # 5 samples for each process: batches of 3 and 2
        seen[rank] = keys_of(batches)
    assert len(seen[0]) == len(seen[1]) == 5 and not set(seen[0]) & set(seen[1])


def test_even_shards_give_every_sample_exactly_once(tmp_path, shapes_root):
    data = ClassFolderDataModule(shapes_root, val_fraction=0.25, seed=0)  # 72 train images
    write_shards(data, tmp_path, maxcount=9)  # 8 shards of 9
    stream = WebDatasetDataModule(str(tmp_path / "train-{000000..000007}.tar"), None, batch_size=3, num_workers=2,
                                  **SMALL)  # fmt: skip
    stream.setup("fit")
    seen = keys_of(stream.train_dataloader())
    assert sorted(seen) == sorted(str(p.relative_to(shapes_root).with_suffix("")) for p, _ in data.samples("train"))


def test_fewer_shards_than_workers_reads_with_fewer_workers(shards, caplog):
    data = WebDatasetDataModule(str(shards / "val-000000.tar"), None, num_workers=2, batch_size=4, **SMALL)
    with caplog.at_level(logging.INFO):
        data.setup("fit")
        loader = data.train_dataloader()
    assert loader.num_workers == 1 and len(loader) == 10 // 4
    assert "1 train shard(s) for 1 process(es): reading with 1 DataLoader worker(s)" in caplog.text


def test_fewer_shards_than_processes_is_a_clear_error(shards, monkeypatch):
    data = WebDatasetDataModule(str(shards / "val-000000.tar"), None, num_workers=2, **SMALL)
    monkeypatch.setattr(data, "_world", lambda: (2, 0))
    with pytest.raises(DataError, match=r"1 train shards cannot feed 2 process\(es\): write at least 2 shards"):
        data.setup("fit")


def test_unknown_sizes_ask_for_samples_per_epoch(tmp_path):
    data = WebDatasetDataModule(str(tmp_path / "gone-{0..1}.tar"), None, class_names=["a", "b"], num_workers=0)
    with pytest.raises(DataError, match="samples_per_epoch"):
        data.setup("fit")
    data = WebDatasetDataModule(str(tmp_path / "gone-{0..1}.tar"), None, class_names=["a", "b"], num_workers=0,
                                samples_per_epoch=64, batch_size=8)  # fmt: skip
    data.setup("fit")
    assert len(data.train_dataloader()) == 8


def test_class_names_come_from_the_argument_else_classes_txt(shards, tmp_path):
    assert WebDatasetDataModule(str(shards / "train-000000.tar"), None).class_names == [
        "circle", "cross", "square", "triangle"]  # fmt: skip
    assert WebDatasetDataModule(str(shards / "train-000000.tar"), None, class_names=["x", "y"]).num_outputs == 2
    with pytest.raises(DataError, match=r"classes\.txt"):
        WebDatasetDataModule(str(tmp_path / "t-000000.tar"), None).class_names
    assert WebDatasetDataModule(None, str(tmp_path / "t.tar")).class_names is None  # predict from a checkpoint


def bad_shard(folder: Path) -> Path:
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.new("RGB", (12, 12), "red").save(good, "PNG")
    (folder / "classes.txt").write_text("a\nb\n")
    with wds.TarWriter(str(folder / "s-0.tar")) as tar:
        tar.write({"__key__": "good0", "png": good.getvalue(), "cls": "0"})
        tar.write({"__key__": "cut", "png": good.getvalue()[:30], "cls": "1"})
        tar.write({"__key__": "nolabel", "png": good.getvalue()})
        tar.write({"__key__": "good1", "png": good.getvalue(), "cls": "1"})
    return folder / "s-0.tar"


def test_bad_samples_stop_with_their_key_or_are_skipped_and_logged(tmp_path, caplog):
    shard = str(bad_shard(tmp_path))
    data = WebDatasetDataModule(None, shard, num_workers=0, batch_size=2, **SMALL)
    data.setup("validate")
    with pytest.raises(DataError, match=r"sample cut of .*s-0.tar cannot be read: .*on_bad_image skip"):
        list(data.val_dataloader())
    data = WebDatasetDataModule(None, shard, num_workers=0, batch_size=2, on_bad_image="skip", **SMALL)
    data.setup("validate")
    with caplog.at_level(logging.WARNING, logger="vitkit.data"):
        assert keys_of(data.val_dataloader()) == ["good0", "good1"]
    assert "skipped sample cut" in caplog.text and "skipped sample nolabel" in caplog.text
    assert "no label in the sample" in caplog.text


def test_predict_reads_unlabelled_samples(tmp_path):
    shard = str(bad_shard(tmp_path))
    data = WebDatasetDataModule(None, None, test=shard, num_workers=0, batch_size=4, on_bad_image="skip", **SMALL)
    data.setup("predict")
    batch = next(iter(data.predict_dataloader()))
    assert batch[2] == ["good0", "nolabel", "good1"] and batch[1].tolist() == [0, -1, 1]


def test_manifest_shards_carry_label_vectors_and_stats(tmp_path):
    csv = make_multilabel_manifest(tmp_path / "ml", n=24, size=16)
    manifest = ManifestDataModule(csv, label_column="labels", val_fraction=0.25)
    args = ["--data", "vitkit.ManifestDataModule", "--data.csv", str(csv), "--data.label_column", "labels",
            "--data.val_fraction", "0.25", "--output", str(tmp_path / "out"), "--maxcount", "100"]  # fmt: skip
    assert shard_main(args) == 0
    data = WebDatasetDataModule(str(tmp_path / "out/train-000000.tar"), str(tmp_path / "out/val-000000.tar"),
                                num_workers=0, batch_size=6, **SMALL)  # fmt: skip
    assert data.class_names == manifest.class_names and data.label_stats == manifest.label_stats
    data.setup("validate")
    targets = torch.cat([b[1] for b in data.val_dataloader()])
    assert targets.dtype == torch.float32 and targets.tolist() == [list(t) for _, t in manifest.samples("val")]


def test_shard_command_converts_other_formats_and_prints_the_patterns(tmp_path, capsys):
    for cls in ("a", "b"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 8), (90 * i, 20, 20)).save(tmp_path / "src" / cls / f"img.{i}.bmp")
    assert shard_main(["--data.root", str(tmp_path / "src"), "--output", str(tmp_path / "o"), "--maxcount", "2"]) == 0
    out = capsys.readouterr().out
    assert "train: 4 images in 2 shard(s)" in out and "--data.train" in out
    names = members(tmp_path / "o" / "train-000000.tar")
    assert all(n.endswith((".png", ".cls")) for n in names) and not any("." in n.split(".")[0][-2:] for n in names)
    assert {n.rsplit(".", 1)[0] for n in names} <= {f"{c}/img_{i}" for c in "ab" for i in range(3)}


def test_missing_package_names_the_extra(monkeypatch):
    import importlib

    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: (_ for _ in ()).throw(ImportError(name))
                        if name == "webdataset" else real(name, *a))  # fmt: skip
    with pytest.raises(DataError, match=r"pip install 'vitkit\[webdataset\]'"):
        WebDatasetDataModule("x.tar", None)


@pytest.fixture
def http_folder(tmp_path):
    """An HTTP server on loopback serving ``tmp_path`` (files not there answer 404, those under ``private/`` 403)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            return self.send_error(403) if self.path.startswith("/private/") else super().do_GET()

        def log_message(self, *args):
            pass

    handler = partial(Handler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()


def test_remote_sidecar_files_are_read_and_a_missing_one_is_absent(http_folder, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "classes.txt").write_text("cat\ndog\n")
    assert WebDatasetDataModule(f"{http_folder}/a/t-000000.tar", None).class_names == ["cat", "dog"]
    assert WebDatasetDataModule(f"{http_folder}/a/t-000000.tar", None).label_stats is None  # 404: not written
    with pytest.raises(DataError, match=r"no class names .* put classes\.txt"):
        WebDatasetDataModule(f"{http_folder}/b/t-000000.tar", None).class_names
    with pytest.raises(
        DataError, match=r"^cannot read .*/private/classes\.txt \(a sidecar file of the shards\): HTTP 403"
    ):
        WebDatasetDataModule(f"{http_folder}/private/t-000000.tar", None).class_names


def test_a_remote_sidecar_that_cannot_be_fetched_is_named_as_such(tmp_path):
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/shards/classes.txt"
    with pytest.raises(DataError) as err:
        WebDatasetDataModule(f"http://127.0.0.1:{port}/shards/train-{{000000..000003}}.tar", None).class_names
    message = str(err.value)
    assert message.startswith(f"cannot read {url} (a sidecar file of the shards): ") and "\n" not in message
    assert "refused" in message.lower() and "network" in message
