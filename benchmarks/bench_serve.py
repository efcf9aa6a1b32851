"""``deepfake serve`` under load: queued micro-batches, and well-behaved clients among hostile ones.

    python benchmarks/bench_serve.py [--requests 48] [--max_batch 16]
    python benchmarks/bench_serve.py --hostile [--good 8] [--flood 4] [--slow 32] [--seconds 30]

A ViT-B/16-sized tower with random weights (hidden 768, 12 layers) and a head trained for
one epoch on 16 images.

Default: the same app is started twice on 127.0.0.1, once with ``--max_batch 1`` (every
request its own tower pass, as a model-per-request server would run) and once with
``--max_batch N``; each gets the same concurrent burst of single-image POST /predict
requests. Prints, last: the ratio of the two wall times.

``--hostile``: ``deepfake serve`` runs as its own process with its default limits (and
``--timeout 10``). ``--good`` clients each post one 256x256 image at a time (honouring 503 +
Retry-After, as a well-behaved client does), for ``--seconds`` alone, then for ``--seconds``
while hostile clients hammer the same server: decompression bombs (a 20000x20000 PNG), EPS files named ``.png``,
a flood of 8000x7999 PNGs (64 megapixels each, inside the per-image limit) from
``--flood`` clients at once, and ``--slow`` connections that trickle their bodies a byte a
second. Prints the good clients' p50/p99 latency and failures (no P(fake) after retries) in
both phases and their ratio, what the hostile ones got, and the server's peak RSS. Everything is bounded in count and
time and stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_train import make_images, make_tower  # noqa: E402

import train_ClassifierHead  # noqa: E402
from deepfake.config import ServeConfig  # noqa: E402
from deepfake.serving.server import build_server  # noqa: E402

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n{} loop\nshowpage\n%%EOF\n"


def form(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n\r\n'.encode()
            + data + f"\r\n--{boundary}--\r\n".encode())
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, name: str, data: bytes, timeout: float = 600) -> tuple[int, dict, str | None]:
    """(status, JSON answer, Retry-After) of one POST /predict."""
    body, content_type = form(name, data)
    request = urllib.request.Request(url + "/predict", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), exc.headers.get("Retry-After")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# --- micro-batching ---------------------------------------------------------------------------


def burst(run: Path, images: list[Path], max_batch: int) -> tuple[float, dict]:
    server = build_server(str(run), ServeConfig(port=0, max_batch=max_batch))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    url = f"http://{host}:{port}"
    post(url, images[0].name, images[0].read_bytes())  # warm-up: first-call allocations are not the steady state
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        answers = list(pool.map(lambda p: post(url, p.name, p.read_bytes()), images))
    seconds = time.perf_counter() - start
    assert all(status == 200 and a["predictions"][0]["probability"] is not None for status, a, _ in answers)
    with urllib.request.urlopen(url + "/health") as response:
        health = json.loads(response.read())
    server.should_exit = True
    thread.join(timeout=60)
    return seconds, health


def batching(run: Path, files: list[Path], requests: int, max_batch: int) -> None:
    images = [files[i % len(files)] for i in range(requests)]
    one, _ = burst(run, images, 1)
    batched, health = burst(run, images, max_batch)
    print(f"{requests} concurrent requests, one image each, ViT-B/16-sized tower")
    print(f"one image per pass (--max_batch 1):   {one:7.1f} s  {requests / one:6.2f} img/s")
    print(f"queued micro-batches (--max_batch {max_batch}): {batched:7.1f} s  {requests / batched:6.2f} img/s"
          f"  ({health['scoring_passes'] - 1} passes)")
    print(f"speed-up of micro-batching: {one / batched:.2f}x")


# --- good clients among hostile ones ------------------------------------------------------------


class Hammer:
    """The good and the hostile clients of one run, and what each got."""

    def __init__(self, url: str, port: int, until: float, good_images: list[bytes]):
        self.url, self.port, self.until = url, port, until
        self.good_images = good_images
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.retried = 0
        self.hostile: Counter = Counter()
        self.lock = threading.Lock()

    def good(self, index: int) -> None:
        rng = np.random.default_rng(index)
        while time.monotonic() < self.until:
            data = self.good_images[int(rng.integers(len(self.good_images)))]
            start = time.monotonic()
            for _ in range(10):
                try:
                    status, answer, retry = post(self.url, f"good{index}.png", data, timeout=300)
                except OSError as exc:
                    status, answer, retry = 0, {"detail": str(exc)}, None
                if status != 503:
                    break
                with self.lock:
                    self.retried += 1
                time.sleep(float(retry or 1))
            with self.lock:
                if status == 200 and answer["predictions"][0]["probability"] is not None:
                    self.latencies.append(time.monotonic() - start)
                else:
                    self.failures.append(f"{status}: {answer}")

    def repeat(self, kind: str, name: str, data: bytes) -> None:
        while time.monotonic() < self.until:
            try:
                status, answer, _ = post(self.url, name, data, timeout=300)
                skipped = status == 200 and answer["predictions"][0]["probability"] is None
                outcome = f"{status} skipped" if skipped else str(status)
            except OSError as exc:
                outcome = type(exc).__name__
            with self.lock:
                self.hostile[f"{kind} {outcome}"] += 1

    def slow(self) -> None:
        head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: multipart/form-data; "
                f"boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n").encode()
        while time.monotonic() < self.until:
            outcome = "slow body still open at the end"
            with socket.create_connection(("127.0.0.1", self.port)) as sock:
                sock.settimeout(1.0)
                try:
                    sock.sendall(head)
                    while time.monotonic() < self.until:
                        sock.sendall(b"x")
                        try:
                            sock.recv(4096)  # the server's answer (408) or its closing
                            outcome = "slow body dropped by the server"
                            break
                        except TimeoutError:
                            continue
                except OSError:
                    outcome = "slow body dropped by the server"
            with self.lock:
                self.hostile[outcome] += 1


def start_server(run: Path, port: int, extra: list[str]) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "deepfake", "serve", "--checkpoint", str(run), "--port", str(port),
                                "--quiet", *extra])
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"deepfake serve exited {process.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
            return process
        except OSError:
            time.sleep(0.2)
    raise SystemExit("deepfake serve did not start")


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def hostile_payloads() -> dict[str, tuple[str, bytes]]:
    flood = Image.new("RGB", (8000, 7999), (90, 140, 200))
    flood.paste(Image.linear_gradient("L").convert("RGB").resize((4000, 4000)))
    return {"bomb": ("bomb.png", png_bytes(Image.new("1", (20000, 20000)))), "eps": ("evil.png", EPS),
            "flood": ("large.png", png_bytes(flood))}


def phase(url: str, port: int, files: list[Path], args: argparse.Namespace, payloads: dict | None) -> Hammer:
    """The good clients for ``--seconds``, with the hostile ones hammering too when ``payloads`` are given."""
    hammer = Hammer(url, port, time.monotonic() + args.seconds, [p.read_bytes() for p in files])
    jobs = [(hammer.good, (i,)) for i in range(args.good)]
    if payloads:
        jobs += [(hammer.repeat, ("flood",) + payloads["flood"]) for _ in range(args.flood)]
        jobs += [(hammer.repeat, (kind,) + payloads[kind]) for kind in ("bomb", "eps") for _ in range(2)]
        jobs += [(hammer.slow, ()) for _ in range(args.slow)]
    threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return hammer


def hostile(run: Path, files: list[Path], args: argparse.Namespace) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    payloads = hostile_payloads()
    process = start_server(run, port, ["--timeout", "10"])
    url = f"http://127.0.0.1:{port}"
    try:
        rss_idle = peak_rss(process.pid)
        quiet = phase(url, port, files, args, None)
        rss_quiet = peak_rss(process.pid)
        loud = phase(url, port, files, args, payloads)
        with urllib.request.urlopen(url + "/health") as response:
            health = json.loads(response.read())
        peak = peak_rss(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    report(quiet, loud, health, args, (rss_idle, rss_quiet, peak), len(payloads["flood"][1]))


def latency(hammer: Hammer) -> str:
    lat = np.array(hammer.latencies) if hammer.latencies else np.full(1, np.nan)
    return (f"{len(hammer.latencies):4d} answered, p50 {np.percentile(lat, 50):6.2f} s, p99 {np.percentile(lat, 99):6.2f} s, "
            f"{hammer.retried} retried after 503, {len(hammer.failures)} failures")


def report(quiet: Hammer, loud: Hammer, health: dict, args: argparse.Namespace, rss: tuple[int, int, int],
           flood_bytes: int) -> None:
    gib = [r / 2**30 for r in rss]
    print(f"deepfake serve with its default limits (--timeout 10) on 127.0.0.1, ViT-B/16-sized tower; "
          f"{args.good} good clients posting one 256x256 PNG at a time, {args.seconds:g} s alone, then {args.seconds:g} s "
          f"among hostile clients:")
    print(f"  {args.flood} flooding 8000x7999 PNGs ({flood_bytes // 1024} KB, 64 MP each), 2 posting 20000x20000 PNG "
          f"bombs, 2 posting EPS named .png, {args.slow} slow bodies (1 byte/s)")
    for outcome, count in sorted(loud.hostile.items()):
        print(f"    {outcome:40s} {count:6d}")
    print(f"good clients alone:          {latency(quiet)}")
    print(f"good clients among hostile:  {latency(loud)}")
    print(f"server: {health['scoring_passes']} scoring passes, {health['images_scored']} images scored, "
          f"{health['refused_busy']} answered 503 (queue full)")
    print(f"server RSS: idle {gib[0]:.2f} GiB, peak {gib[1]:.2f} GiB with the good clients alone, "
          f"peak {gib[2]:.2f} GiB with the hostile ones")
    for failure in (quiet.failures + loud.failures)[:5]:
        print(f"  failure: {failure[:200]}")
    p50 = [np.percentile(h.latencies, 50) if h.latencies else np.nan for h in (quiet, loud)]
    print(f"good clients' failures: {len(quiet.failures) + len(loud.failures)}; "
          f"p50 latency among hostile clients / alone: {p50[1] / p50[0]:.1f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--max_batch", type=int, default=16)
    p.add_argument("--hostile", action="store_true", help="good clients among hostile ones (see above)")
    p.add_argument("--good", type=int, default=8, help="well-behaved clients (--hostile)")
    p.add_argument("--flood", type=int, default=4, help="clients posting 8000x7999 PNGs (--hostile)")
    p.add_argument("--slow", type=int, default=32, help="slow-body connections (--hostile)")
    p.add_argument("--seconds", type=float, default=30, help="how long each phase runs (--hostile)")
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
        if args.hostile:
            hostile(tmp / "run", files, args)
        else:
            batching(tmp / "run", files, args.requests, args.max_batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
