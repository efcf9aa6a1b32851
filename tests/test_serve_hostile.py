"""``deepfake serve`` under hostile and heavy use, over real HTTP on 127.0.0.1.

The server runs as its own process (``python -m deepfake serve``), so its memory is measured
alone and a ``gs`` stub on its ``PATH`` would be found by Pillow as a real Ghostscript would.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from deepfake.__main__ import main as deepfake_main
from deepfake.config import ServeConfig
from deepfake.model.scoring import Prediction
from deepfake.serving.scheduler import BatchScorer, Job, QueueFull
from deepfake.serving.uploads import Upload, apply_pixel_budget

from .test_serve import multipart, post

MAX_QUEUE = 4
TIMEOUT_S = 3
# An EPS file named like a PNG: Pillow identifies files by content and would hand it to Ghostscript.
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
       b"{} loop\nshowpage\n%%EOF\n")


def ghostscript_stub(folder: Path) -> tuple[Path, Path]:
    """A ``gs`` on PATH that records every call (and fails, as a crashing Ghostscript would)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "gs-calls.log"
    stub = folder / "gs"
    stub.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n[ "$1" = "--version" ] && exit 0\nexit 1\n')
    stub.chmod(0o755)
    return folder, log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    return ghostscript_stub(tmp_path_factory.mktemp("gs-stub"))


@pytest.fixture(scope="module")
def hostile_server(trained_run, stub):
    """``deepfake serve`` in its own process: a 4-job queue, 3-second timeouts, a ``gs`` stub on PATH."""
    port = free_port()
    env = {**os.environ, "PATH": f"{stub[0]}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "deepfake", "serve", "--checkpoint", str(trained_run["run"]), "--port", str(port),
         "--max_queue", str(MAX_QUEUE), "--timeout", str(TIMEOUT_S), "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                pytest.fail(f"deepfake serve exited {process.returncode}: {process.stderr.read().decode()}")
            try:
                health(url)
                break
            except OSError:
                time.sleep(0.2)
        yield {"url": url, "pid": process.pid, "port": port, "run": trained_run, "gs_log": stub[1]}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _png(width: int, height: int) -> bytes:
    image = Image.new("RGB", (width, height), (90, 140, 200))
    image.paste(Image.linear_gradient("L").convert("RGB").resize((width // 2, height // 2)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def large_png() -> bytes:
    """An 8000x7999 PNG: 64 megapixels, within the server's per-image limit, a few hundred KB on the wire."""
    return _png(8000, 7999)


def _good(run: dict) -> tuple[str, bytes]:
    path = sorted((run["data"] / "test").rglob("*.png"))[0]
    return path.name, path.read_bytes()


def test_eps_named_png_never_reaches_ghostscript_and_fails_only_itself(hostile_server):
    status, answer = post(hostile_server["url"], [("evil.png", EPS), _good(hostile_server["run"])])
    assert status == 200, answer
    evil, good = answer["predictions"]
    assert evil["path"] == "evil.png" and evil["probability"] is None and evil["skipped"]
    assert good["probability"] is not None and good["label"] in ("real", "fake")
    assert not hostile_server["gs_log"].exists(), hostile_server["gs_log"].read_text()


def test_eps_named_png_never_reaches_ghostscript_in_deepfake_predict(trained_run, stub, tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    folder, log = ghostscript_stub(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow looks for gs again, and would find the stub
    (tmp_path / "evil.png").write_bytes(EPS)
    name, data = _good(trained_run)
    (tmp_path / name).write_bytes(data)
    out = tmp_path / "pred.json"
    assert deepfake_main(["predict", str(tmp_path / "evil.png"), str(tmp_path / name), "--checkpoint",
                          str(trained_run["run"]), "--output", str(out), "--num_workers", "0", "--quiet"]) == 0
    evil, good = json.loads(out.read_text())["predictions"]
    assert evil["probability"] is None and "not an image" in evil["skipped"]
    assert good["probability"] is not None
    assert not log.exists(), log.read_text()


def test_any_error_of_one_files_decoder_skips_that_file_only(tmp_path, monkeypatch):
    import subprocess as sp

    from PIL import PngImagePlugin

    from deepfake.data.image_io import ImageSkipped, load_image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.jpg")

    def crash(self):
        raise sp.CalledProcessError(1, ["gs"])  # what a crashing external decoder raised before

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", crash)
    with pytest.raises(ImageSkipped, match="unreadable: CalledProcessError"):
        load_image(tmp_path / "a.png")
    assert load_image(tmp_path / "b.jpg").size == (8, 8)


def test_forty_large_uploads_get_503_when_the_queue_is_full_and_memory_stays_bounded(hostile_server, large_png):
    url, pid = hostile_server["url"], hostile_server["pid"]
    peak = {"rss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], server_status(pid)["VmRSS"])
            time.sleep(0.02)

    body, content_type = multipart([("large.png", large_png)])

    def upload(_: int) -> tuple[int, str | None]:
        request = urllib.request.Request(url + "/predict", data=body, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Retry-After")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(upload, range(40)))
    finally:
        stop.set()
        sampler.join()
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert 0 < statuses.count(503) < 40 and statuses.count(200) >= MAX_QUEUE
    assert all(retry and int(retry) >= 1 for status, retry in answers if status == 503)
    high_water = server_status(pid)["VmHWM"]
    assert max(peak["rss"], high_water) < 2.5 * (1 << 30), (peak, high_water)
    # The queue drains: a small request afterwards is answered at once.
    start = time.monotonic()
    status, answer = post(url, [_good(hostile_server["run"])])
    assert status == 200 and answer["predictions"][0]["probability"] is not None
    assert time.monotonic() - start < 5


def _read_until_closed(sock: socket.socket, limit_s: float) -> bytes | None:
    """Everything the server sends until it closes the connection, or ``None`` if still open after ``limit_s``."""
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def test_stalled_bodies_and_headers_are_dropped_after_the_timeout_while_others_are_served(hostile_server):
    port = hostile_server["port"]
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"slow.png\"\r\n\r\n\x89PNG").encode()
    bodies = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    headers = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        for sock in bodies:
            sock.sendall(head)
        for sock in headers:
            sock.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        # The stalled clients hold no one up.
        status, answer = post(hostile_server["url"], [_good(hostile_server["run"])])
        assert status == 200 and answer["predictions"][0]["probability"] is not None
        start = time.monotonic()
        answers = [_read_until_closed(sock, TIMEOUT_S + 20) for sock in bodies + headers + silent]
        assert all(a is not None for a in answers), "a stalled connection was still open"
        assert all(a.startswith(b"HTTP/1.1 408") and b"request body not received" in a for a in answers[:40])
        assert all(a == b"" for a in answers[40:])  # no request ever began: closed without an answer
        assert time.monotonic() - start < TIMEOUT_S + 20
    finally:
        for sock in bodies + headers + silent:
            sock.close()


def test_a_request_whose_client_disconnects_while_queued_is_dropped_not_scored(hostile_server):
    url, port = hostile_server["url"], hostile_server["port"]
    before = health(url)
    big = threading.Thread(target=post, args=(url, [("large.png", _png(4000, 4000))]))
    big.start()
    try:
        deadline = time.monotonic() + 60
        while health(url)["pass_seconds"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the worker is busy with the large image
        body, content_type = multipart([_good(hostile_server["run"])])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            while health(url)["waiting"] == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert health(url)["waiting"] == 1 and health(url)["pass_seconds"] > 0
        while health(url)["dropped"] == before["dropped"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        big.join()
    after = health(url)
    assert after["dropped"] == before["dropped"] + 1
    assert after["images_scored"] == before["images_scored"] + 1  # the large image only


# --- the queue and the pixel budget, without HTTP ----------------------------------------------


class _Recorder:
    """Stands in for the tower: records each pass's files, holding the first until released."""

    def __init__(self):
        self.passes: list[list[str]] = []
        self.release = threading.Event()

    def __call__(self, paths: list[str]) -> list:
        self.passes.append([Path(p).name for p in paths])
        if len(self.passes) == 1:
            self.release.wait(30)
        return [Prediction(p, 0.5, "fake") for p in paths]


def _scorer(recorder: _Recorder, **limits) -> BatchScorer:
    scorer = BatchScorer(None, 0.5, ServeConfig(**limits))
    scorer._score = recorder
    return scorer


def _wait_for(condition, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition()


def test_a_pass_takes_the_oldest_job_then_the_smallest_that_fit_its_image_and_pixel_budget():
    recorder = _Recorder()
    scorer = _scorer(recorder, max_batch=4, max_pixels=100, max_request_pixels=100)
    try:
        first = scorer.submit(["busy"], 10)
        _wait_for(lambda: recorder.passes)  # the worker holds the first pass
        jobs = [scorer.submit(["big-old"], 90), scorer.submit(["big-new"], 90), scorer.submit(["small-a"], 5),
                scorer.submit(["small-b", "small-c"], 4), scorer.submit(["small-d", "small-e"], 1)]
        recorder.release.set()
        for job in (first, *jobs):
            job.future.result(timeout=30)
    finally:
        scorer.close()
    # The oldest waiting job first; then the smallest, within 4 images and 100 pixels; the newer large one next.
    assert recorder.passes == [["busy"], ["big-old", "small-d", "small-e", "small-a"], ["big-new", "small-b", "small-c"]]
    assert scorer.passes == 3 and scorer.images == 8


def test_a_pass_holds_one_large_job_and_answers_its_small_ones_before_decoding_it():
    recorder = _Recorder()
    scorer = _scorer(recorder)
    answered_first = []
    try:
        scorer.submit(["busy"], 1)
        _wait_for(lambda: recorder.passes)
        large = [scorer.submit([f"large{i}"], 20_000_000) for i in (1, 2)]  # the oldest: large1 rides this pass
        small = scorer.submit(["small"], 50_000)
        inner = recorder.__call__

        def check(paths):
            if Path(paths[0]).name == "large1":
                answered_first.append(small.future.done())
            return inner(paths)

        scorer._score = check
        recorder.release.set()
        for job in large:
            job.future.result(timeout=30)
    finally:
        scorer.close()
    assert recorder.passes == [["busy"], ["small"], ["large1"], ["large2"]] and scorer.passes == 3
    assert answered_first == [True]


def test_a_full_queue_refuses_with_retry_after_and_a_dropped_job_is_never_scored():
    recorder = _Recorder()
    scorer = _scorer(recorder, max_queue=2)
    try:
        scorer.submit(["busy"], 1)
        _wait_for(lambda: recorder.passes)
        gone, kept = scorer.submit(["gone"], 1), scorer.submit(["kept"], 1)
        with pytest.raises(QueueFull) as full:
            scorer.submit(["third"], 1)
        assert full.value.retry_after >= 1 and full.value.waiting == 2
        assert scorer.drop(gone) and gone.future.cancelled()
        recorder.release.set()
        assert [p.path for p in kept.future.result(timeout=30)] == ["kept"]
    finally:
        scorer.close()
    assert recorder.passes == [["busy"], ["kept"]]
    assert scorer.refused == 1 and scorer.dropped == 1


def test_a_failing_pass_fails_only_the_request_that_fails():
    scorer = BatchScorer(None, 0.5, ServeConfig())
    scorer._score = lambda paths: ([Prediction(p, 0.1, "real") for p in paths] if "poison" not in paths
                                   else 1 / 0)
    try:
        with scorer._ready:  # queue both before the worker looks, so they share a pass
            jobs = [Job(["good"], 1), Job(["poison"], 1)]
            scorer._waiting.extend(jobs)
            scorer._ready.notify()
        assert [p.path for p in jobs[0].future.result(timeout=30)] == ["good"]
        with pytest.raises(ZeroDivisionError):
            jobs[1].future.result(timeout=30)
    finally:
        scorer.close()


def test_the_request_pixel_budget_reads_sizes_from_headers_and_refuses_what_does_not_fit(tmp_path):
    def image(name: str, size: tuple[int, int]) -> Upload:
        Image.new("RGB", size).save(tmp_path / name)
        return Upload(name, str(tmp_path / name))

    (tmp_path / "evil.png").write_bytes(EPS)
    uploads = [image("a.png", (30, 30)), Upload("evil.png", str(tmp_path / "evil.png")), image("huge.png", (50, 50)),
               image("b.png", (30, 30)), image("c.png", (30, 30)), image("d.png", (10, 10))]
    apply_pixel_budget(uploads, ServeConfig(max_pixels=2000, max_request_pixels=2000))
    by_name = {u.name: u for u in uploads}
    assert by_name["a.png"].pixels == 900 and by_name["b.png"].pixels == 900 and not by_name["b.png"].skipped
    assert "over the request's pixel budget (30x30 would bring it to 2700 > max_request_pixels 2000)" in \
        by_name["c.png"].skipped
    assert by_name["d.png"].pixels == 100  # a small one still fits
    # No size from the header (no image this loader opens), or over the per-image limit: the loader refuses it.
    assert by_name["evil.png"].pixels == 0 and not by_name["evil.png"].skipped
    assert by_name["huge.png"].pixels == 0 and not by_name["huge.png"].skipped
