"""``deepfake serve`` over real HTTP on 127.0.0.1, and its page in a real headless Chromium."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake import DeepfakeClassifier
from deepfake.__main__ import main as deepfake_main
from deepfake.utils.fileio import atomic_write

MAX_UPLOAD_MB = 1
# The README's picture of the page is made by this test on request only (tests never write into the
# checkout): DEEPFAKE_SCREENSHOT=images/serve_page.png python -m pytest tests/test_serve.py -k page
SCREENSHOT_ENV = "DEEPFAKE_SCREENSHOT"


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url: str, files: list[tuple[str, bytes]]) -> tuple[int, dict]:
    body, content_type = multipart(files)
    request = urllib.request.Request(url + "/predict", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def server(trained_run):
    """The app of ``deepfake serve`` on an ephemeral port, in this process, with model loads counted."""
    import deepfake.deepfake_classifier as dc
    from deepfake.cli.serve import build_parser, build_server

    loads = {"from_pretrained": 0, "load_tower": 0}
    original = DeepfakeClassifier.from_pretrained.__func__
    original_tower = dc.load_tower

    def counted(cls, *args, **kwargs):
        loads["from_pretrained"] += 1
        return original(cls, *args, **kwargs)

    def counted_tower(*args, **kwargs):
        loads["load_tower"] += 1
        return original_tower(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DeepfakeClassifier, "from_pretrained", classmethod(counted))
        mp.setattr(dc, "load_tower", counted_tower)
        args = build_parser().parse_args(["--checkpoint", str(trained_run["run"]), "--port", "0", "--tiles", "4",
                                          "--max_upload_mb", str(MAX_UPLOAD_MB)])
        server = build_server(args)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        for _ in range(600):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "server did not start"
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        assert host == "127.0.0.1"  # the default binding
        assert loads == {"from_pretrained": 1, "load_tower": 1}
        yield {"url": f"http://{host}:{port}", "loads": loads, "run": trained_run}
        server.should_exit = True
        thread.join(timeout=30)


def test_serve_binds_localhost_by_default_and_warns_for_other_addresses(caplog, monkeypatch):
    import deepfake.cli.serve as serve

    assert serve.build_parser().parse_args(["--checkpoint", "x"]).host == "127.0.0.1"
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("192.168.1.5")

    def no_server(args):
        raise ValueError("stop before loading")

    monkeypatch.setattr(serve, "build_server", no_server)
    assert serve.main(["--checkpoint", "x", "--host", "0.0.0.0"]) == 2
    assert "it has no authentication" in caplog.text


def test_health_answers(server):
    with urllib.request.urlopen(server["url"] + "/health", timeout=30) as response:
        health = json.loads(response.read())
    assert health["status"] == "ok" and health["tiles"] == 4
    assert health["max_upload_bytes"] == MAX_UPLOAD_MB << 20


def test_api_scores_equal_deepfake_predict(server, tmp_path):
    paths = sorted(str(p) for p in (server["run"]["data"] / "test").rglob("*.png"))[:5]
    out = tmp_path / "pred.json"
    assert deepfake_main(["predict", *paths, "--checkpoint", str(server["run"]["run"]), "--output", str(out),
                          "--num_workers", "0", "--quiet", "--tiles", "4"]) == 0
    cli = json.loads(out.read_text())
    status, api = post(server["url"], [(Path(p).name, Path(p).read_bytes()) for p in paths])
    assert status == 200
    assert api["threshold"] == cli["threshold"]
    assert len(api["predictions"]) == len(paths)
    for mine, theirs, path in zip(api["predictions"], cli["predictions"], paths):
        assert mine["path"] == Path(path).name
        assert {k: v for k, v in mine.items() if k != "path"} == {k: v for k, v in theirs.items() if k != "path"}


def _hostile_files() -> dict[str, bytes]:
    good = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    jpeg = io.BytesIO()
    good.save(jpeg, format="JPEG")
    strip = io.BytesIO()
    Image.new("RGB", (1, 3_000_000)).save(strip, format="PNG")
    return {"notes.txt": b"this is a text file, not an image\n" * 20,
            "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
            "strip.png": strip.getvalue()}


@pytest.mark.parametrize("name,reason", [("notes.txt", "not an image Pillow can read"),
                                         ("truncated.jpg", "truncated or corrupt image data"),
                                         ("strip.png", "extreme aspect ratio (1x3000000")])
def test_hostile_upload_gets_the_loaders_reason_not_a_server_error(server, name, reason):
    status, answer = post(server["url"], [(name, _hostile_files()[name])])
    assert status == 200
    (prediction,) = answer["predictions"]
    assert prediction["probability"] is None and prediction["label"] is None
    assert reason in prediction["skipped"]


def test_hostile_uploads_in_one_request_are_skipped_one_by_one(server):
    good = sorted((server["run"]["data"] / "test").rglob("*.png"))[0]
    files = [(good.name, good.read_bytes()), *_hostile_files().items()]
    status, answer = post(server["url"], files)
    assert status == 200
    assert answer["predictions"][0]["probability"] is not None
    assert all(p["probability"] is None and p["skipped"] for p in answer["predictions"][1:])


def test_oversized_upload_is_refused_with_413(server):
    big = os.urandom((MAX_UPLOAD_MB << 20) + 1000)
    status, answer = post(server["url"], [("big.jpg", big)])
    assert status == 413 and "upload too large" in answer["detail"]
    # Without a Content-Length (chunked), the limit holds while the body streams in.
    body, content_type = multipart([("big.jpg", big)])
    host, port = server["url"].removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/predict", body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                 headers={"Content-Type": content_type}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and "upload too large" in json.loads(response.read())["detail"]
    conn.close()


def test_request_without_files_is_a_client_error(server):
    request = urllib.request.Request(server["url"] + "/predict", data=b"plain", method="POST",
                                     headers={"Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert 400 <= info.value.code < 500


def test_fifty_concurrent_requests_all_succeed_on_one_loaded_model(server):
    paths = sorted((server["run"]["data"] / "test").rglob("*.png"))
    jobs = [paths[i % len(paths)] for i in range(50)]
    loads_before = dict(server["loads"])  # 1 by the server (checked at start); in-process CLI tests add theirs
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda p: post(server["url"], [(p.name, p.read_bytes())]), jobs))
    assert [status for status, _ in answers] == [200] * 50
    by_path: dict[Path, set] = {}
    for path, (_, answer) in zip(jobs, answers):
        (prediction,) = answer["predictions"]
        assert prediction["probability"] is not None
        by_path.setdefault(path, set()).add(prediction["probability"])
    # The same file scores the same whatever it was batched with.
    assert all(len(v) == 1 for v in by_path.values())
    assert server["loads"] == loads_before  # no request loaded a model


# --- the page, in a real browser ------------------------------------------------------------


def _browser():
    """Headless Debian Chromium driven by its chromedriver, or a skip naming what is missing."""
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        reason = (f"no headless browser: chromium {'found' if chromium else 'missing'}, chromedriver "
                  f"{'found' if driver else 'missing'} (.ci/run installs Debian's chromium and chromium-driver)")
        print(reason)
        pytest.skip(reason)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        print("selenium is not installed (pip install -e .[dev])")
        pytest.skip("selenium is not installed (pip install -e .[dev])")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1180,760", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def _page_images(folder: Path) -> list[Path]:
    """Two photo-sized synthetic scenes: one camera-like, one re-synthesised by a generator's up-sampling."""
    from deepfake.data.synthetic import fake_image, real_image, save

    rng = np.random.default_rng(3)
    real, fake = folder / "camera_scene.png", folder / "upsampled_scene.png"
    save(real_image(rng, "leaves", 336, 448), real, None)
    save(fake_image(rng, "leaves", "tconv", 336, 448), fake, None)
    return [real, fake]


def test_page_in_headless_chromium_shows_the_apis_probabilities(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    images = _page_images(tmp_path)
    status, api = post(server["url"], [(p.name, p.read_bytes()) for p in images])
    assert status == 200
    expected = {p["path"]: p for p in api["predictions"]}
    browser = _browser()
    try:
        browser.get(server["url"] + "/")
        WebDriverWait(browser, 60).until(lambda b: "P(fake) >" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in images))
        WebDriverWait(browser, 120).until(
            lambda b: len(b.find_elements(By.CSS_SELECTOR, ".result[data-state=done]")) == 2)
        WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "canvas.heatmap")) == 2)
        cards = browser.find_elements(By.CSS_SELECTOR, ".result")
        assert len(cards) == 2
        for card in cards:
            name = card.get_attribute("data-name")
            assert float(card.get_attribute("data-probability")) == expected[name]["probability"]
            assert card.get_attribute("data-label") == expected[name]["label"]
            assert f"P(fake) {expected[name]['probability']:.4f}" in card.text
        png = browser.get_screenshot_as_png()
    finally:
        browser.quit()
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "serve_page.png")
    atomic_write(screenshot, lambda tmp: Path(tmp).write_bytes(png))
    assert Image.open(screenshot).size[0] > 0
