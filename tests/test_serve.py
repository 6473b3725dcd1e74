"""vitkit serve, for real: the server runs as a process on a loopback port; every request is bounded in time."""

from __future__ import annotations

import base64
import csv
import io
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import REPO, VITKIT, vitkit
from vitkit.tasks import MultiLabel, Regression

pytest.importorskip("litserve")
httpx = pytest.importorskip("httpx")

TIMEOUT = 60  # seconds per request: a CPU shared with other work is slow, a hung server is not


def test_answers_are_labels_over_their_thresholds_or_values_in_their_units():
    from vitkit.serve import describe

    labels = MultiLabel()
    labels.bind(3, ["cat", "dog", "owl"])
    labels.thresholds.copy_(torch.tensor([0.5, 0.9, 0.2]))
    answer = describe(labels, torch.tensor([0.6, 0.8, 0.3]))
    assert answer["labels"] == ["cat", "owl"] and answer["scores"]["dog"] == pytest.approx(0.8)
    values = Regression()
    values.bind(2, ["age", "height"], {"mean": [40.0, 170.0], "std": [10.0, 5.0]})
    assert describe(values, torch.tensor([41.5, 180.0])) == {
        "task": "regression",
        "values": {"age": 41.5, "height": 180.0},
    }


def test_a_decompression_bomb_is_refused_as_too_large():
    from vitkit.serve_gate import BadRequest, checked_image

    buffer = io.BytesIO()
    Image.new("1", (14000, 14000)).save(buffer, format="PNG")  # 196 megapixels: PIL refuses to even open it
    with pytest.raises(BadRequest, match="megapixel") as err:
        checked_image(buffer.getvalue())
    assert err.value.status == 413


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_checkpoint, tmp_path_factory):
    """``vitkit serve`` on a free loopback port, batching up to 4 requests; its base URL."""
    port = free_port()
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    command = [VITKIT, "serve", "--ckpt_path", str(trained_checkpoint), "--port", str(port), "--max_batch_size", "4"]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               cwd=tmp_path_factory.mktemp("serve-cwd"))  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            assert process.poll() is None, Path(log.name).read_text()
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start in 180 s:\n" + Path(log.name).read_text()
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def image_file(shapes_root: Path) -> Path:
    return sorted((shapes_root / "square").iterdir())[0]


@pytest.mark.slow
def test_predict_gives_the_calibrated_scores_vitkit_predict_gives(server, trained_checkpoint, shapes_root, tmp_path):
    path = image_file(shapes_root)
    answer = httpx.post(f"{server}/predict", files={"image": path.read_bytes()}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["task"] == "classification" and len(body["top_k"]) == 4
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / path.name).write_bytes(path.read_bytes())
    vitkit("predict", "--ckpt_path", trained_checkpoint, "--data.predict_root", tmp_path / "one",
           "--output", tmp_path / "p.csv")  # fmt: skip
    (row,) = csv.DictReader((tmp_path / "p.csv").open())
    for rank, item in enumerate(body["top_k"], start=1):
        assert item["label"] == row[f"top{rank}"] and abs(item["score"] - float(row[f"top{rank}_score"])) < 2e-6


@pytest.mark.slow
def test_base64_json_and_multipart_give_the_same_answer(server, shapes_root):
    data = image_file(shapes_root).read_bytes()
    form = httpx.post(f"{server}/predict", files={"image": data}, timeout=TIMEOUT).json()
    encoded = httpx.post(f"{server}/predict", json={"image": base64.b64encode(data).decode()}, timeout=TIMEOUT)
    assert encoded.status_code == 200 and encoded.json() == form


@pytest.mark.slow
def test_explain_adds_an_attention_overlay(server, shapes_root):
    data = image_file(shapes_root).read_bytes()
    body = httpx.post(f"{server}/predict?explain=1", files={"image": data}, timeout=TIMEOUT).json()
    overlay = Image.open(io.BytesIO(base64.b64decode(body["attention_png"])))
    assert overlay.format == "PNG" and min(overlay.size) >= 32
    assert "attention_png" not in httpx.post(f"{server}/predict", files={"image": data}, timeout=TIMEOUT).json()


def jpeg_bytes(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def fifty_megapixels() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (7072, 7072)).save(buffer, format="PNG")  # a few hundred KB of zeros, 50 million pixels
    return buffer.getvalue()


BAD = {
    "not an image": (lambda: {"files": {"image": b"%PDF-1.4 not an image"}}, 400, "not an image"),
    "empty body": (lambda: {"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty"),
    "50 megapixels": (lambda: {"files": {"image": fifty_megapixels()}}, 413, "megapixels"),
    "wrong content type": (lambda: {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "type"),
    "truncated jpeg": (lambda: {"files": {"image": jpeg_bytes((300, 200))[:-400]}}, 400, "decoded"),
    "bad json": (lambda: {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "JSON"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_4xx_with_one_line_and_the_server_keeps_serving(server, shapes_root, case):
    make, status, reason = BAD[case]
    answer = httpx.post(f"{server}/predict", timeout=TIMEOUT, **make())
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert reason in detail and "\n" not in detail
    good = httpx.post(f"{server}/predict", files={"image": image_file(shapes_root).read_bytes()}, timeout=TIMEOUT)
    assert good.status_code == 200


@pytest.mark.slow
def test_concurrent_clients_are_all_answered(server, shapes_root):
    images = [p.read_bytes() for p in sorted((shapes_root / "circle").iterdir())[:16]]

    def ask(data: bytes) -> int:
        return httpx.post(f"{server}/predict", files={"image": data}, timeout=TIMEOUT).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(ask, images)) == [200] * 16


@pytest.mark.slow
def test_the_page_is_served_with_its_upload_form(server):
    page = httpx.get(f"{server}/", timeout=TIMEOUT)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "/predict" in page.text


class Browser:
    """Headless chromium driven over the DevTools protocol (one page)."""

    def __init__(self, profile: Path) -> None:
        import shutil

        from websockets.sync.client import connect

        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.skip("no chromium to drive the page")
        self.process = subprocess.Popen([binary, "--headless=new", "--no-sandbox", "--disable-gpu",
                                         "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        for line in self.process.stderr:
            if "DevTools listening on" in line or time.monotonic() > deadline:
                break
        port = int(line.split("ws://127.0.0.1:")[1].split("/")[0])
        (page,) = [t for t in httpx.get(f"http://127.0.0.1:{port}/json", timeout=10).json() if t["type"] == "page"]
        self.socket, self.next_id = connect(page["webSocketDebuggerUrl"], max_size=None), 0

    def call(self, method: str, **params: object) -> dict:
        import json

        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=TIMEOUT))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str) -> object:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, seconds: float = TIMEOUT) -> object:
        deadline = time.monotonic() + seconds
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.2)
        return value

    def upload(self, url: str, path: Path) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('image')")
        self.evaluate("document.getElementById('result').textContent = ''; delete document.body.dataset.done")
        node = self.call("DOM.querySelector", nodeId=self.call("DOM.getDocument")["root"]["nodeId"], selector="#image")
        self.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node["nodeId"])
        self.evaluate("document.getElementById('submit').click()")

    def close(self) -> None:
        self.socket.close()
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.mark.slow
def test_the_page_in_a_headless_browser_shows_the_prediction_and_the_attention_map(server, shapes_root, tmp_path):
    pytest.importorskip("websockets")
    browser = Browser(tmp_path / "profile")
    try:
        browser.upload(f"{server}/", image_file(shapes_root))
        browser.wait_for("document.body.dataset.done === '1'")
        text = browser.evaluate("document.getElementById('result').textContent")
        assert all(name in text for name in ("circle", "cross", "square", "triangle")), text
        assert browser.wait_for("document.getElementById('attention').complete && "
                                "document.getElementById('attention').naturalWidth") >= 32  # fmt: skip
        (tmp_path / "notes.txt").write_text("not an image")
        browser.upload(f"{server}/", tmp_path / "notes.txt")
        error = browser.wait_for("document.getElementById('result').className === 'error' && "
                                 "document.getElementById('result').textContent")  # fmt: skip
        assert "not an image" in error
    finally:
        browser.close()
