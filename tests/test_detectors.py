"""Released detectors by name: the registry, the download into the cache, its checks, offline, import.

Every download comes from a local HTTP server on 127.0.0.1 started here, serving the release files
of tests/published-heads/ (UFD's probe, RINE's 2-class head) under the paths the records name, with
``DEEPFAKE_RELEASES_MIRROR`` pointing at it; the server counts the requests it answers.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepfake import DeepfakeClassifier
from deepfake.__main__ import main as deepfake_main
from deepfake.cli import detectors as detectors_cli
from deepfake.model import detectors as store
from deepfake.model.hub import model_card
from deepfake.model.releases import GITHUB, blob_hasher, detectors, find
from deepfake.towers import weights as tower_weights

from .conftest import make_forensynths

PUBLISHED = Path(__file__).parent / "published-heads"
FILES = {"ufd": PUBLISHED / "ufd" / "fc_weights.pth", "rine-2class": PUBLISHED / "rine" / "model_2class_trainable.pth"}
LICENCES = {"ufd": PUBLISHED / "ufd" / "LICENSE", "rine-2class": PUBLISHED / "rine" / "LICENSE"}
REF = load_file(str(PUBLISHED / "reference.safetensors"))
IMAGE = PUBLISHED / "images" / "img0_256x256.png"
NAMES = {"ufd", "rine-1class", "rine-2class", "rine-4class", "rine-ldm", "tiny-ladeda-wildrf",
         "tiny-ladeda-forensynth", "npr"}
PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class ReleaseServer:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1 and counts the requests per path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                body = server.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, name: str, data: bytes | None = None) -> None:
        """Serve the release ``name`` (its fixture file, or ``data``) and its licence under the record's paths."""
        record = find(name)
        self.files[record.url[len(GITHUB):]] = FILES[name].read_bytes() if data is None else data
        self.files[record.licence_url[len(GITHUB):]] = LICENCES[name].read_bytes()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    for name in (*PROXIES, "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEEPFAKE_CACHE", str(tmp_path / "cache"))
    released = ReleaseServer()
    monkeypatch.setenv(store.MIRROR_ENV, released.url)
    yield released
    released.close()


def _cache_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_the_registry_holds_the_eight_releases_each_with_a_pinned_url_hash_licence_and_protocol():
    assert set(detectors()) == NAMES
    for record in detectors().values():
        assert record.commit in record.url and len(record.commit) == 40 and len(record.git_blob) == 40
        assert record.licence.name and record.trained_on and record.protocol and record.reproduce
        assert record.kind in ("head", "network") and (record.release if record.kind == "head" else record.family)
    assert find("tiny-ladeda-wildrf").licence.research_only and not find("ufd").licence.research_only


@pytest.mark.parametrize("name", ["ufd", "rine-2class"])
def test_a_records_git_blob_id_and_sha256_are_those_of_the_released_file(name):
    data = FILES[name].read_bytes()
    blob = blob_hasher(len(data))
    blob.update(data)
    assert blob.hexdigest() == find(name).git_blob  # what git's tree at the pinned commit names
    assert hashlib.sha256(data).hexdigest() == find(name).sha256 and len(data) == find(name).size
    if shutil.which("git"):
        hashed = subprocess.run(["git", "hash-object", str(FILES[name])], capture_output=True, text=True, check=True)
        assert hashed.stdout.strip() == find(name).git_blob


@pytest.mark.parametrize("name", ["ufd", "rine-2class"])
def test_a_name_downloads_checks_and_imports_from_an_empty_cache_once_then_downloads_nothing(server, tmp_path, name):
    server.serve(name)
    clf = DeepfakeClassifier.from_pretrained(name, tower=False)
    features = REF["ufd.features"] if name == "ufd" else REF["rine2.features"].float()
    expected = REF["ufd.probability"] if name == "ufd" else REF["rine2.probability"]
    assert abs(clf.probability_from_features(features) - expected[:, 0].double().numpy()).max() <= 1e-5
    assert len(server.requests) == 2  # the file and its licence text
    run = store.cached_run_dir(name)
    assert Path(clf.config["checkpoint"]).parent == run
    assert (run / "LICENSE").read_bytes() == LICENCES[name].read_bytes()
    source = json.loads((run / "best.json").read_text())["published"]
    assert source["detector"] == name and source["sha256_matches"] is True and source["url"] == find(name).url
    assert source["licence"]["name"] == find(name).licence.name and source["licence"]["research_only"] is False
    again = DeepfakeClassifier.from_pretrained(name, tower=False)
    assert len(server.requests) == 2 and again.config["checkpoint"] == clf.config["checkpoint"]


def test_a_corrupted_download_exits_2_naming_both_hashes_and_leaves_nothing_in_the_cache(server, tmp_path, caplog):
    bad = bytearray(FILES["ufd"].read_bytes())
    bad[-100] ^= 0xFF
    server.serve("ufd", bytes(bad))
    assert deepfake_main(["predict", str(IMAGE), "--checkpoint", "ufd", "--quiet"]) == 2
    assert find("ufd").sha256 in caplog.text and hashlib.sha256(bytes(bad)).hexdigest() in caplog.text
    assert _cache_files(tmp_path) == []


def test_a_wrong_file_for_a_release_without_a_recorded_sha256_is_refused_by_its_git_blob(server, tmp_path):
    record = find("rine-4class")  # its file was not read here: the tree's blob id checks it
    assert record.sha256 is None
    server.files[record.url[len(GITHUB):]] = FILES["rine-2class"].read_bytes()
    with pytest.raises(store.DetectorUnavailable, match=f"git blob {record.git_blob}"):
        DeepfakeClassifier.from_pretrained("rine-4class", tower=False)
    assert _cache_files(tmp_path) == []


def test_offline_exits_2_naming_the_url_the_hash_and_the_import_command_without_probing(server, monkeypatch, caplog):
    server.serve("ufd")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_probe(*args):
        raise AssertionError("HF_HUB_OFFLINE answers at once: nothing is probed")

    monkeypatch.setattr(tower_weights, "_probe", no_probe)
    assert deepfake_main(["predict", str(IMAGE), "--checkpoint", "ufd", "--quiet"]) == 2
    assert server.requests == []
    url = server.url + find("ufd").url[len(GITHUB):]
    for words in (url, find("ufd").sha256, "`deepfake import ufd FILE`", "HF_HUB_OFFLINE"):
        assert words in caplog.text


def test_serve_by_name_offline_exits_2_before_listening_naming_the_import_command(server, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert deepfake_main(["serve", "--checkpoint", "rine-ldm", "--port", "0", "--quiet"]) == 2
    assert "`deepfake import rine-ldm FILE`" in caplog.text and server.requests == []


def test_a_failed_download_exits_2_naming_the_url_and_the_import_command(server, tmp_path, caplog):
    assert deepfake_main(["predict", str(IMAGE), "--checkpoint", "rine-2class", "--quiet"]) == 2  # nothing served: 404
    assert "Not Found" in caplog.text and "`deepfake import rine-2class FILE`" in caplog.text
    assert _cache_files(tmp_path) == []


def test_test_with_an_unreachable_mirror_is_refused_by_the_probe_with_exit_2(server, tmp_path, monkeypatch, caplog):
    data = make_forensynths(tmp_path / "data", n_train=1, n_val=1, n_test=2)
    monkeypatch.setattr(tower_weights, "_probe", lambda host, port, timeout: f"no connection to {host}:{port}")
    argv = ["test", "--checkpoint", "rine-4class", "--dataset_dir", str(data / "test"), "--output_dir", str(tmp_path / "out")]
    assert deepfake_main([*argv, "--quiet"]) == 2
    assert "no connection to 127.0.0.1" in caplog.text and "`deepfake import rine-4class FILE`" in caplog.text
    assert f"git blob {find('rine-4class').git_blob}" in caplog.text  # the hash that checks a file of unread sha256
    assert server.requests == []


def test_deepfake_detectors_lists_the_eight_records_and_says_which_are_cached(server, capsys):
    assert deepfake_main(["import", "ufd", str(FILES["ufd"]), "--quiet"]) == 0  # into the cache
    capsys.readouterr()
    assert detectors_cli.main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == NAMES and len(rows) == 8
    assert {r["name"] for r in rows if r["cached"]} == {"ufd"}
    assert detectors_cli.main([]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 + 8 and table[0].split()[:2] == ["name", "year"]
    assert "research only" in next(line for line in table if line.startswith("tiny-ladeda-wildrf"))


def test_a_file_imported_into_the_cache_serves_the_name_with_no_network(server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert deepfake_main(["import", "rine", str(FILES["rine-2class"]), "--quiet"]) == 0  # rine-2class, from the name
    clf = DeepfakeClassifier.from_pretrained("rine-2class", tower=False)
    assert server.requests == [] and Path(clf.config["checkpoint"]).parent == store.cached_run_dir("rine-2class")


def _fine_tune(tmp_path: Path) -> Path:
    state = torch.load(FILES["ufd"], map_location="cpu", weights_only=True)
    path = tmp_path / "mine" / "fc_weights.pth"
    path.parent.mkdir()
    torch.save({k: v + 0.01 for k, v in state.items()}, path)
    return path


def test_a_fine_tune_of_a_release_imports_with_a_warning_naming_both_hashes_but_never_into_the_cache(
        server, tmp_path, caplog):
    mine = _fine_tune(tmp_path)
    mine_sha256 = hashlib.sha256(mine.read_bytes()).hexdigest()
    assert deepfake_main(["import", "ufd", str(mine), "--out", str(tmp_path / "run")]) == 0
    assert mine_sha256 in caplog.text and find("ufd").sha256 in caplog.text
    assert json.loads((tmp_path / "run" / "best.json").read_text())["published"]["sha256_matches"] is False
    caplog.clear()
    assert deepfake_main(["import", "ufd", str(mine)]) == 2
    assert "--out RUN" in caplog.text and _cache_files(tmp_path) == []


def test_import_overwrite_removes_the_earlier_runs_licence_epochs_and_summary(tmp_path):
    run = tmp_path / "run"
    assert deepfake_main(["import", "rine", str(FILES["rine-2class"]), "--out", str(run), "--quiet"]) == 0
    assert (run / "LICENSE").is_file()
    for name in ("epoch_001.safetensors", "epoch_001.json", "run.json", "resume_state.safetensors"):
        shutil.copyfile(run / ("best.json" if name.endswith(".json") else "best.safetensors"), run / name)
    (run / "notes.txt").write_text("mine")
    alone = tmp_path / "alone" / "fc_weights.pth"  # no LICENSE beside it
    alone.parent.mkdir()
    shutil.copyfile(FILES["ufd"], alone)
    assert deepfake_main(["import", "ufd", str(alone), "--out", str(run), "--overwrite", "--quiet"]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["best.json", "best.safetensors", "notes.txt"]
    assert json.loads((run / "best.json").read_text())["published"]["detector"] == "ufd"


def test_a_local_folder_named_like_a_release_wins_with_a_warning(server, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert deepfake_main(["import", "ufd", str(FILES["ufd"]), "--out", "ufd", "--quiet"]) == 0
    clf = DeepfakeClassifier.from_pretrained("ufd", tower=False)
    assert Path(clf.config["checkpoint"]).resolve().parent == tmp_path / "ufd" and server.requests == []
    assert "a local path of that name exists and is used" in caplog.text


def test_the_model_card_of_a_research_only_release_calls_its_licence_that():
    config = {"tower": {"model": "tiny-ladeda"}, "published": {
        "title": "Tiny-LaDeDa (WildRF)", "licence": {"name": "Yissum SOFTWARE RESEARCH LICENSE", "research_only": True,
                                                     "text": find("tiny-ladeda-wildrf").licence_url}}}
    card = model_card(config)
    assert "research use only" in card and "license: other" in card


def test_predict_with_tiny_ladeda_by_name_downloads_checks_scores_and_then_downloads_nothing(server, tmp_path, capsys):
    shared = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "released-detectors" / "tiny-ladeda"
    if not (shared / "WildRF_Tiny_LaDeDa.pth").is_file():
        pytest.skip(f"{shared}: the Tiny-LaDeDa release (research-only licence) is not in this tree")
    record = find("tiny-ladeda-wildrf")
    server.files[record.url[len(GITHUB):]] = (shared / "WildRF_Tiny_LaDeDa.pth").read_bytes()
    server.files[record.licence_url[len(GITHUB):]] = (shared / "LICENSE").read_bytes()
    argv = ["predict", str(IMAGE), "--checkpoint", "tiny-ladeda-wildrf", "--num_workers", "0", "--quiet"]
    assert deepfake_main(argv) == 0
    first = len(server.requests)
    assert deepfake_main(argv) == 0
    assert len(server.requests) == first == 2 and "scored 1" in capsys.readouterr().out


def test_test_by_name_writes_its_results_here_not_into_the_cache(tmp_path, monkeypatch):
    from deepfake.evaluation.reports import default_output_dir

    monkeypatch.chdir(tmp_path)
    assert default_output_dir("rine-4class", "/data/ufd") == Path("eval_rine-4class_ufd")
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    assert default_output_dir("runs/mine", "/data/ufd") == Path("runs/mine/eval_ufd")


def test_several_callers_asking_for_a_name_at_once_download_it_once_under_the_lock(server):
    server.serve("ufd")
    runs: list[Path] = []
    workers = [threading.Thread(target=lambda: runs.append(store.named_run("ufd"))) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert runs == [store.cached_run_dir("ufd")] * 4 and len(server.requests) == 2
