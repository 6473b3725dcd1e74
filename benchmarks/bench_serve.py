"""vitkit serve under load: requests/s and p50/p95 latency with 8 concurrent clients, dynamic batching against
batch 1, on this machine, loopback only.

A quickstart ViT (32 px) is trained for one epoch on generated shapes (the model's quality does not matter here),
then served twice by the real ``vitkit serve`` process: ``--max_batch_size 1`` and ``--max_batch_size 8``, one
worker each. 8 client threads post the shapes' images (multipart) until ``--requests`` answers or ``--seconds`` have
passed, after a warm-up. Not a test: numbers, printed and saved as JSON.

    .venv/bin/python benchmarks/bench_serve.py [--requests 400] [--seconds 40] [--out benchmarks/results/serve.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from vitkit.synthetic import make_shapes_folder

VITKIT = str(Path(sys.executable).with_name("vitkit"))
CLIENTS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, images: list[bytes], requests: int, seconds: float) -> dict:
    """``CLIENTS`` threads posting images until ``requests`` answers or ``seconds``; throughput and latencies."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(offset: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = offset
            while time.monotonic() < deadline:
                with lock:
                    if len(latencies) + errors[0] >= requests:
                        return
                start = time.perf_counter()
                ok = http.post(f"{url}/predict", files={"image": images[i % len(images)]}).status_code == 200
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - start)
                    else:
                        errors[0] += 1
                i += CLIENTS

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    quantiles = statistics.quantiles(latencies, n=20)
    return {"requests": len(latencies), "errors": errors[0], "seconds": elapsed, "requests_s": len(latencies) / elapsed,
            "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * quantiles[18]}  # fmt: skip


def serve(ckpt: Path, max_batch_size: int, images: list[bytes], args: argparse.Namespace, cwd: Path) -> dict:
    port = free_port()
    command = [VITKIT, "serve", "--ckpt_path", str(ckpt), "--port", str(port), "--max_batch_size",
               str(max_batch_size), "--batch_timeout", "0.01"]  # fmt: skip
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(1)
        load(url, images, 40, 20)  # warm-up
        return {"max_batch_size": max_batch_size, **load(url, images, args.requests, args.seconds)}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--out", default="benchmarks/results/serve.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shapes = make_shapes_folder(root / "shapes", per_class=12, sizes=(24, 64), seed=1)
        env = {**os.environ, "WANDB_MODE": "offline"}
        subprocess.run([VITKIT, "fit", "--config", "quickstart", "--data.root", str(shapes), "--trainer.max_epochs",
                        "1", "--trainer.logger", "false", "--data.init_args.num_workers", "0",
                        "--trainer.default_root_dir", str(root / "runs")], check=True, env=env, cwd=root,
                       capture_output=True)  # fmt: skip
        ckpt = root / "runs" / "version_0" / "checkpoints" / "last.ckpt"
        images = [p.read_bytes() for p in sorted(shapes.rglob("*.*"))]
        rows = [serve(ckpt, size, images, args, root) for size in (1, 8)]
    for row in rows:
        print(f"max_batch_size {row['max_batch_size']}: {row['requests_s']:.1f} requests/s, p50 {row['p50_ms']:.0f} ms,"
              f" p95 {row['p95_ms']:.0f} ms ({row['requests']} requests, {row['errors']} errors, "
              f"{row['seconds']:.1f} s)")  # fmt: skip
    print(f"batching speed-up: {rows[1]['requests_s'] / rows[0]['requests_s']:.2f}x requests/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
