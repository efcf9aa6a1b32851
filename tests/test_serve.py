"""``deepfake serve`` over real HTTP on 127.0.0.1, and its page in a real headless Chromium."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
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

from .conftest import TOWER

MAX_UPLOAD_MB = 1
MAX_PIXELS = 4_000_000  # per image and per request
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
                                          "--max_upload_mb", str(MAX_UPLOAD_MB), "--max_pixels", str(MAX_PIXELS),
                                          "--max_request_pixels", str(MAX_PIXELS)])
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

    def no_server(args, config=None):
        raise ValueError("stop before loading")

    monkeypatch.setattr(serve, "build_server", no_server)
    assert serve.main(["--checkpoint", "x", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "it has no authentication" in caplog.text


def test_health_answers(server):
    with urllib.request.urlopen(server["url"] + "/health", timeout=30) as response:
        health = json.loads(response.read())
    assert health["status"] == "ok" and health["tiles"] == 4
    assert health["max_upload_bytes"] == MAX_UPLOAD_MB << 20
    # Names, not paths: the run folder's name and the tower's.
    assert health["checkpoint"] == server["run"]["run"].name
    assert health["tower"] == Path(TOWER).name


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


def test_each_answer_names_the_threshold_of_its_label_and_whether_the_image_lies_in_the_training_distribution(
        server):
    with urllib.request.urlopen(server["url"] + "/health", timeout=30) as response:
        health = json.loads(response.read())
    assert health["ood"]["threshold"] > 0 and "mahalanobis" in health["ood"]["distance"]
    paths = sorted((server["run"]["data"] / "test").rglob("*.png"))[:3]
    noise = io.BytesIO()
    Image.fromarray(np.full((96, 96, 3), 255, np.uint8)).save(noise, format="PNG")  # a flat white frame
    status, api = post(server["url"], [(p.name, p.read_bytes()) for p in paths] + [("white.png", noise.getvalue())])
    assert status == 200
    for p in api["predictions"]:
        assert p["threshold"] == api["threshold"] == health["threshold"]
        assert p["label"] == ("fake" if p["probability"] > p["threshold"] else "real")
        assert p["ood"] == ("out" if p["ood_distance"] > health["ood"]["threshold"] else "in")
    assert api["predictions"][-1]["ood"] == "out"


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


def request(url: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, bytes]:
    """One raw HTTP request with exactly these headers (``Host`` included), and its status and body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in {**headers, "Content-Length": str(len(body or b""))}.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_only_the_bound_host_names_are_answered(server):
    port = server["url"].rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert request(server["url"], "GET", "/health", {"Host": host})[0] == 200, host
    # A page whose name was pointed at this machine (DNS rebinding) sends its own name.
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example"):
        status, body = request(server["url"], "GET", "/health", {"Host": host})
        assert status == 400 and b"does not answer to Host" in body, (host, body)
    good = sorted((server["run"]["data"] / "test").rglob("*.png"))[0]
    body, content_type = multipart([(good.name, good.read_bytes())])
    status, _ = request(server["url"], "POST", "/predict", {"Host": "attacker.example", "Content-Type": content_type},
                        body)
    assert status == 400


def test_a_post_from_another_origin_is_refused_and_same_origin_or_no_origin_is_served(server):
    good = sorted((server["run"]["data"] / "test").rglob("*.png"))[0]
    body, content_type = multipart([(good.name, good.read_bytes())])
    host = server["url"].removeprefix("http://")
    before = json.loads(urllib.request.urlopen(server["url"] + "/health", timeout=30).read())["images_scored"]
    status, answer = request(server["url"], "POST", "/predict",
                             {"Host": host, "Origin": "http://evil.example", "Content-Type": content_type}, body)
    assert status == 403 and b"cross-origin" in answer
    after = json.loads(urllib.request.urlopen(server["url"] + "/health", timeout=30).read())["images_scored"]
    assert after == before  # refused before anything was scored
    same = request(server["url"], "POST", "/predict", {"Host": host, "Origin": server["url"], "Content-Type": content_type},
                   body)
    assert same[0] == 200 and json.loads(same[1])["predictions"][0]["probability"] is not None
    assert request(server["url"], "POST", "/predict", {"Host": host, "Content-Type": content_type}, body)[0] == 200
    # Reading is not refused: a browser keeps another origin from reading the answer anyway (no CORS headers).
    assert request(server["url"], "GET", "/health", {"Host": host, "Origin": "http://evil.example"})[0] == 200


ABSOLUTE_PATH = re.compile(r"""(?:^|[\s"'(=:,])(/[^\s"'/]+){2,}""")


def test_no_answer_contains_a_local_path(server, tmp_path):
    good = sorted((server["run"]["data"] / "test").rglob("*.png"))[0]
    host = server["url"].removeprefix("http://")
    bodies = [urllib.request.urlopen(server["url"] + "/health", timeout=30).read()]
    for files in ([(good.name, good.read_bytes())], list(_hostile_files().items()),
                  [("/home/someone/photo.png", good.read_bytes())], [("../../x.jpg", b"")]):
        body, content_type = multipart(files)
        bodies.append(request(server["url"], "POST", "/predict", {"Host": host, "Content-Type": content_type}, body)[1])
    bodies.append(request(server["url"], "POST", "/predict", {"Host": host, "Content-Type": "text/plain"}, b"x")[1])
    bodies.append(request(server["url"], "GET", "/health", {"Host": "attacker.example"})[1])
    bodies.append(request(server["url"], "POST", "/predict", {"Host": host, "Origin": "http://evil.example",
                                                             "Content-Type": "text/plain"}, b"x")[1])
    local = [str(server["run"]["run"]), str(server["run"]["data"]), TOWER, tempfile.gettempdir(), str(Path.home())]
    for body in bodies:
        text = body.decode()
        assert not ABSOLUTE_PATH.search(text), text
        assert not any(path in text for path in local), text
    assert json.loads(bodies[3])["predictions"][0]["path"] == "photo.png"


def test_the_planted_path_is_caught_by_the_path_check():
    assert ABSOLUTE_PATH.search('{"checkpoint": "/tmp/pytest-0/run/best.safetensors"}')
    assert ABSOLUTE_PATH.search("unreadable: [Errno 2] No such file: '/tmp/deepfake-upload-x/0000.png'")
    assert not ABSOLUTE_PATH.search('{"detail": "use POST /predict (--max_upload_mb) 1/2"}')


def test_files_past_the_requests_pixel_budget_are_skipped_with_the_reason(server):
    def png(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.linear_gradient("L").resize((width, height)).convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()

    files = [("a.png", png(1000, 1500)), ("b.png", png(1000, 1500)), ("c.png", png(1000, 1500)), ("d.png", png(64, 64))]
    status, answer = post(server["url"], files)
    assert status == 200
    a, b, c, d = answer["predictions"]
    assert a["probability"] is not None and b["probability"] is not None
    assert c["probability"] is None and "over the request's pixel budget" in c["skipped"]
    assert f"max_request_pixels {MAX_PIXELS}" in c["skipped"]
    assert d["probability"] is not None  # a small file after it still fits


def test_every_serve_flag_default_is_the_configs_and_a_command_line_becomes_the_config():
    import dataclasses

    from deepfake.cli.serve import build_parser, serve_config
    from deepfake.config import ServeConfig

    parser = build_parser()
    defaults = {a.dest: a.default for a in parser._actions}
    for f in dataclasses.fields(ServeConfig):
        default = defaults[f.name]
        assert (tuple(default) if isinstance(default, list) else default) == getattr(ServeConfig(), f.name), f.name
    config = serve_config(parser.parse_args(["--checkpoint", "x", "--max_queue", "4", "--allow_host", "a.lan",
                                             "--allow_host", "b.lan", "--timeout", "2.5"]))
    assert (config.max_queue, config.allow_host, config.timeout) == (4, ("a.lan", "b.lan"), 2.5)


@pytest.mark.parametrize("flags, named", [
    (["--max_batch", "0"], "--max_batch"), (["--max_queue", "0"], "--max_queue"), (["--timeout", "0"], "--timeout"),
    (["--max_upload_mb", "-1"], "--max_upload_mb"), (["--max_files", "0"], "--max_files"),
    (["--port", "70000"], "--port"), (["--tiles", "-1"], "--tiles"), (["--max_connections", "0"], "--max_connections"),
    (["--max_request_pixels", "1000"], "--max_request_pixels"), (["--max_pixels", "0"], "--max_pixels"),
])
def test_a_bad_serve_flag_exits_2_before_the_model_loads(flags, named, monkeypatch, caplog):
    import deepfake.cli.serve as serve

    def no_server(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(serve, "build_server", no_server)
    assert serve.main(["--checkpoint", "x", "--port", "0", *flags]) == 2
    assert named in caplog.text


def test_a_port_in_use_exits_2_before_the_model_loads(monkeypatch, caplog):
    import socket

    import deepfake.cli.serve as serve

    monkeypatch.setattr(serve, "build_server", lambda *a, **k: pytest.fail("the model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert serve.main(["--checkpoint", "x", "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in caplog.text


def test_deepfake_serve_max_batch_0_exits_2_at_start_up(trained_run):
    result = subprocess.run([sys.executable, "-m", "deepfake", "serve", "--checkpoint", str(trained_run["run"]),
                             "--port", "0", "--max_batch", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--max_batch must be a whole number >= 1, got 0" in result.stderr


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
            assert card.get_attribute("data-ood") == expected[name]["ood"]
            assert f"labelled at P(fake) > {expected[name]['threshold']:.3f}" in card.text
        png = browser.get_screenshot_as_png()
    finally:
        browser.quit()
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "serve_page.png")
    atomic_write(screenshot, lambda tmp: Path(tmp).write_bytes(png))
    assert Image.open(screenshot).size[0] > 0


def test_page_shows_cards_in_selection_order_a_skip_reason_instead_of_a_broken_image_and_tells_same_names_apart(
        server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    scenes = _page_images(tmp_path)
    first, second = tmp_path / "a" / "1.jpg", tmp_path / "b" / "1.jpg"
    for scene, target in zip(scenes, (first, second)):
        target.parent.mkdir()
        Image.open(scene).save(target, format="JPEG", quality=90)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is a text file, not an image\n" * 20)
    selection = [first, broken, second]
    expected = [post(server["url"], [(p.name, p.read_bytes())])[1]["predictions"][0] for p in selection]
    browser = _browser()
    try:
        browser.get(server["url"] + "/")
        WebDriverWait(browser, 60).until(lambda b: "P(fake) >" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in selection))
        WebDriverWait(browser, 120).until(
            lambda b: len(b.find_elements(By.CSS_SELECTOR, ".result:not([data-state=pending])")) == 3)
        cards = browser.find_elements(By.CSS_SELECTOR, ".result")
        assert [c.get_attribute("data-index") for c in cards] == ["1", "2", "3"]
        assert [c.get_attribute("data-name") for c in cards] == ["1.jpg", "broken.png", "1.jpg"]
        one, skipped, two = cards
        for card, answer in ((one, expected[0]), (two, expected[2])):
            assert float(card.get_attribute("data-probability")) == answer["probability"]
        assert one.text != two.text and "#1" in one.text and "#3" in two.text
        # The skipped file: its reason in words, and no image element to show as broken.
        assert skipped.get_attribute("data-state") == "skipped"
        assert f"skipped: {expected[1]['skipped']}" in skipped.text
        assert skipped.find_elements(By.CSS_SELECTOR, "img") == []
        assert skipped.find_elements(By.CSS_SELECTOR, ".placeholder")
    finally:
        browser.quit()


# --- behind a reverse proxy --------------------------------------------------------------------------------------

NGINX_CONF = """
{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_max_body_size 20m;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            # As a TLS-terminating proxy in front of the server: the browser's scheme and name, forwarded.
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _nginx(tmp: Path, upstream_url: str):
    """nginx (Debian's package) on 127.0.0.1 as a reverse proxy to ``upstream_url``; yields its URL."""
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    port = _free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user="user root;\n" if os.geteuid() == 0 else "", tmp=tmp, port=port,
                                      upstream=upstream_url.rsplit(":", 1)[1]))
    proc = subprocess.Popen([nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proc.poll() is None, f"nginx stopped: {proc.stderr.read().decode()}"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _upload(url: str, headers: dict[str, str], image: Path) -> tuple[int, bytes]:
    body, content_type = multipart([(image.name, image.read_bytes())])
    return request(url, "POST", "/predict", {**headers, "Content-Type": content_type}, body)


@pytest.fixture(scope="module")
def proxied_server(trained_run):
    """``deepfake serve --forwarded_allow_ips 127.0.0.1 --allow_host detector.example`` on an ephemeral port."""
    from deepfake.cli.serve import build_parser, build_server

    args = build_parser().parse_args(["--checkpoint", str(trained_run["run"]), "--port", "0", "--forwarded_allow_ips",
                                      "127.0.0.1", "--allow_host", "detector.example"])
    server = build_server(args)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started:
            break
        time.sleep(0.05)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    yield {"url": f"http://{host}:{port}", "run": trained_run}
    server.should_exit = True
    thread.join(timeout=30)


def test_a_page_upload_through_an_https_reverse_proxy_is_served_when_the_proxy_is_trusted(proxied_server, tmp_path):
    """nginx in front, forwarding the browser's https scheme and name: the page's Origin is that origin."""
    image = sorted((proxied_server["run"]["data"] / "test").rglob("*.png"))[0]
    browser = {"Host": "detector.example", "Origin": "https://detector.example"}
    with _nginx(tmp_path, proxied_server["url"]) as proxy:
        status, body = _upload(proxy, browser, image)
        assert status == 200 and json.loads(body)["predictions"][0]["probability"] is not None
        # Another page's POST through the same proxy is still refused.
        assert _upload(proxy, {**browser, "Origin": "https://evil.example"}, image)[0] == 403


def test_forwarded_headers_from_an_untrusted_peer_are_not_believed(server, tmp_path):
    """The default server trusts no proxy: behind one its page's uploads get 403 (until --forwarded_allow_ips or
    --allow_origin), and a client that writes X-Forwarded-* itself gains nothing."""
    image = sorted((server["run"]["data"] / "test").rglob("*.png"))[0]
    host = server["url"].removeprefix("http://")
    forged = {"Host": host, "Origin": "https://detector.example", "X-Forwarded-Proto": "https",
              "X-Forwarded-Host": "detector.example"}
    status, body = _upload(server["url"], forged, image)
    assert status == 403 and b"--forwarded_allow_ips" in body
    with _nginx(tmp_path, server["url"]) as proxy:
        status, body = _upload(proxy, {"Host": host, "Origin": "https://detector.example"}, image)
        assert status == 403 and b"cross-origin" in body


def test_allow_origin_and_forwarded_allow_ips_are_checked_when_the_config_is_made():
    from deepfake.config import ServeConfig

    assert ServeConfig(allow_origin=("https://Detector.example/",)).allow_origin == ("https://detector.example",)
    for bad in ("detector.example", "https://detector.example/path"):
        with pytest.raises(ValueError, match="--allow_origin"):
            ServeConfig(allow_origin=(bad,))
    with pytest.raises(ValueError, match="--forwarded_allow_ips"):
        ServeConfig(forwarded_allow_ips=("proxy.example",))
