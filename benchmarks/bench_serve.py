"""``deepfake serve`` under concurrent load: queued micro-batches vs one image per tower pass.

    python benchmarks/bench_serve.py [--requests 48] [--max_batch 16]

A ViT-B/16-sized tower with random weights (hidden 768, 12 layers) and a head trained for
one epoch on 16 images; the same app is started twice on 127.0.0.1, once with
``--max_batch 1`` (every request its own tower pass, as a model-per-request server would
run) and once with ``--max_batch N``; each gets the same concurrent burst of single-image
POST /predict requests. Prints, last: the ratio of the two wall times.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_train import make_images, make_tower  # noqa: E402

import train_ClassifierHead  # noqa: E402
from deepfake.serving.server import build_server  # noqa: E402


def post(url: str, path: Path) -> dict:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n\r\n'.encode()
            + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def burst(run: Path, images: list[Path], max_batch: int) -> tuple[float, dict]:
    server = build_server(str(run), port=0, max_batch=max_batch)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    url = f"http://{host}:{port}"
    post(url + "/predict", images[0])  # warm-up: first-call allocations are not the server's steady state
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        answers = list(pool.map(lambda p: post(url + "/predict", p), images))
    seconds = time.perf_counter() - start
    assert all(a["predictions"][0]["probability"] is not None for a in answers)
    with urllib.request.urlopen(url + "/health") as response:
        health = json.loads(response.read())
    server.should_exit = True
    thread.join(timeout=60)
    return seconds, health


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--max_batch", type=int, default=16)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_tower(tmp / "tower")
        make_images(tmp / "data", 16)
        assert train_ClassifierHead.main([
            "--dataset_dir", str(tmp / "data"), "--output_dir", str(tmp / "run"), "--model", str(tmp / "tower"),
            "--cache_dir", str(tmp / "cache"), "--num_epochs", "1", "--num_workers", "0", "--quiet",
        ]) == 0
        files = sorted((tmp / "data").rglob("*.png"))
        images = [files[i % len(files)] for i in range(args.requests)]
        one, _ = burst(tmp / "run", images, 1)
        batched, health = burst(tmp / "run", images, args.max_batch)
    print(f"{args.requests} concurrent requests, one image each, ViT-B/16-sized tower")
    print(f"one image per pass (--max_batch 1):   {one:7.1f} s  {args.requests / one:6.2f} img/s")
    print(f"queued micro-batches (--max_batch {args.max_batch}): {batched:7.1f} s  {args.requests / batched:6.2f} img/s"
          f"  ({health['scoring_passes'] - 1} passes)")
    print(f"speed-up of micro-batching: {one / batched:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
