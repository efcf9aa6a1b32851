"""A first try that never waits in silence: offline found at once, typos and hyphens answered in a line,
the README's calls that work on any run, means that never mix one class in, and shared heads without paths."""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import train_ClassifierHead
from deepfake import DeepfakeClassifier
from deepfake.__main__ import main as deepfake_main
from deepfake.cli.args import CliParser, train_parser
from deepfake.cli.commands import COMMANDS
from deepfake.cli.docs import SCRIPTS
from deepfake.data.test_sets import TestSample as Sample
from deepfake.evaluation.domains import domain_rows, headline_rows
from deepfake.evaluation.reports import coverage_notes
from deepfake.model.checkpoint import CheckpointRefused
from deepfake.model.hub import HubUnavailable, head_config_for_sharing, model_card, upload_head_folder
from deepfake.towers import weights
from deepfake.towers.loading import check_model, load_tower
from deepfake.towers.weights import WeightsError

from .conftest import TOWER

REPO = Path(__file__).resolve().parent.parent
PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
# Runs a command's main() in a fresh interpreter and prints how long main() itself took (imports apart).
TIMED_MAIN = ("import importlib, sys, time; m = importlib.import_module(sys.argv[1]); t = time.perf_counter(); "
              "code = m.main(sys.argv[2:]); print(f'main took {time.perf_counter() - t:.2f} s'); sys.exit(code)")


def closed_port() -> int:
    """A local port nothing listens on: a connection to it is refused at once, as with no network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_env(tmp_path: Path, offline: str) -> dict:
    """An environment with an empty hub cache and, for ``offline="env"``, HF_HUB_OFFLINE=1; for
    ``offline="network"``, a hub endpoint that refuses every connection (this machine has no network either)."""
    env = {k: v for k, v in os.environ.items() if k not in PROXIES and k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"), PYTHONPATH=str(REPO))
    if offline == "env":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    return env


def run_timed(module: str, argv: list[str], env: dict, cwd: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", TIMED_MAIN, module, *argv], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=300)
    wall = time.perf_counter() - start
    found = re.search(r"main took ([\d.]+) s", out.stdout)
    return out, wall, float(found.group(1)) if found else float("inf")


# --- offline, found at once -----------------------------------------------------------------


@pytest.mark.parametrize("offline", ["env", "network"])
def test_default_model_offline_exits_2_at_once_naming_what_works_offline(tmp_path, forensynths, offline):
    # The acceptance: train_ClassifierHead.py with the default model exits 2 within 5 s (main itself, the
    # imports apart; the whole command is bounded generously for a loaded machine), naming what works offline.
    argv = ["--dataset_dir", str(forensynths), "--output_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "c")]
    out, wall, took = run_timed("train_ClassifierHead", argv, hub_env(tmp_path, offline), tmp_path)
    assert out.returncode == 2, out.stderr
    assert "--model spectrum" in out.stderr and "deepfake demo" in out.stderr
    assert "not in the local hub cache" in out.stderr and "Retrying" not in out.stderr
    assert took < 5, f"main took {took:.1f} s"
    assert wall < 20, f"the command took {wall:.1f} s"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("offline", ["env", "network"])
def test_a_hub_checkpoint_offline_is_refused_at_once(tmp_path, offline):
    (tmp_path / "a.png").write_bytes(b"")
    out, _, took = run_timed("deepfake.cli.predict", ["a.png", "--checkpoint", "me/x"], hub_env(tmp_path, offline),
                             tmp_path)
    assert out.returncode == 2, out.stderr
    assert "me/x" in out.stderr and "not in the hub cache" in out.stderr and "Retrying" not in out.stderr
    assert took < 5, f"main took {took:.1f} s"


@pytest.fixture
def no_network(monkeypatch):
    """This process offline without HF_HUB_OFFLINE: the hub endpoint refuses every connection."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")


@pytest.mark.parametrize("offline", ["env", "network"])
def test_push_offline_exits_2_saying_how_to_share_later(trained_run, monkeypatch, caplog, request, offline):
    if offline == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        request.getfixturevalue("no_network")
    assert deepfake_main(["push", str(trained_run["run"]), "acme/head"]) == 2
    assert "acme/head: cannot upload, the Hugging Face hub cannot be reached" in caplog.text
    assert "--save_dir" in caplog.text


def test_push_to_hub_offline_raises_hub_unavailable_not_a_connection_error(trained_run, no_network):
    head = DeepfakeClassifier.from_pretrained(trained_run["run"], tower=False)
    with pytest.raises(HubUnavailable, match="cannot upload, the Hugging Face hub cannot be reached"):
        head.push_to_hub("acme/head")


def test_a_connection_lost_during_an_upload_is_hub_unavailable(tmp_path, monkeypatch):
    import huggingface_hub

    import deepfake.model.hub

    class ConnectError(Exception):  # the name httpx gives a refused connection
        pass

    class DroppingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, *args, **kwargs):
            raise ConnectError("[Errno 104] Connection reset by peer")

    monkeypatch.setattr(deepfake.model.hub, "hub_offline_reason", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", DroppingApi)
    with pytest.raises(HubUnavailable, match="Connection reset by peer"):
        upload_head_folder(tmp_path, "acme/head")


def test_the_hub_probe_does_not_wait_for_a_connection_that_hangs(monkeypatch):
    released = threading.Event()

    def hang(address, timeout=None):
        released.wait(60)  # a name lookup or connect that never returns on its own
        raise OSError("gave up")

    monkeypatch.setattr(weights.socket, "create_connection", hang)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    try:
        reason = weights.hub_offline_reason(timeout=0.2)
        assert not released.is_set()  # answered while the connection attempt still hung
        assert reason == "no answer from hub.invalid:443 within 0.2 s"
    finally:
        released.set()
        weights._probed.pop(("hub.invalid", 443), None)


# --- model names checked before any data is read ---------------------------------------------


def test_a_model_name_typo_is_refused_before_any_data_is_read(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        deepfake_main(["demo", "--model", "spectrun", "--out", str(tmp_path / "demo")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "spectrun: not a known tower name; did you mean spectrum?" in err
    assert "valid: LanguageBind/LanguageBind_Image" in err and "spectrum-crop256" in err
    assert not (tmp_path / "demo").exists()  # the demo's data set was never generated
    with pytest.raises(SystemExit):
        train_ClassifierHead.main(["--dataset_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "run"),
                                   "--model", "dinov2-large"])
    assert "did you mean facebook/dinov2-large?" in capsys.readouterr().err
    with pytest.raises(WeightsError, match="did you mean spectrum"):
        load_tower("Spectrum")  # the Python API says the same


def test_local_directories_and_hub_ids_remain_valid_model_names(tmp_path):
    for model in ("spectrum", TOWER, "org/name", "LanguageBind/LanguageBind_Image"):
        assert check_model(model) == model
        assert train_parser().parse_args(["--dataset_dir", "d", "--output_dir", "o", "--model", model]).model == model
    for bad, why in ((str(tmp_path / "missing"), "no such directory"), (__file__, "a file, not a checkpoint directory"),
                     ("a/b/c", "no such directory")):
        with pytest.raises(WeightsError, match=why):
            check_model(bad)


# --- hyphenated flags and two-line parse errors ----------------------------------------------


def _parsers() -> dict[str, CliParser]:
    modules = [*COMMANDS.values(), *SCRIPTS.values(), "deepfake.cli.figures"]
    return {m: importlib.import_module(m).build_parser() for m in modules}


def test_every_flag_of_every_parser_takes_its_hyphenated_spelling():
    for module, parser in _parsers().items():
        assert isinstance(parser, CliParser), module
        for flag in (f for f in parser._option_string_actions if f.startswith("--") and "_" in f[2:]):
            hyphened = "--" + flag[2:].replace("_", "-")
            assert parser._underscored([hyphened, f"{hyphened}=1", "--", hyphened]) == \
                [flag, f"{flag}=1", "--", hyphened], (module, flag)  # after "--", arguments are left alone
    plain = ["--dataset_dir", "d", "--output_dir", "o", "--num_epochs", "3", "--label_dirs", "real=a", "fake=b"]
    hyphened = ["--dataset-dir", "d", "--output-dir=o", "--num-epochs", "3", "--label-dirs", "real=a", "fake=b"]
    assert vars(train_parser().parse_args(hyphened)) == vars(train_parser().parse_args(plain))
    assert "--dataset-dir" not in train_parser().format_help()  # one spelling listed


def test_a_parse_error_says_its_cause_and_a_hint_not_the_usage(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_ClassifierHead.main(["--datset_dir", "d", "--output_dir", "o"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["train_ClassifierHead.py: error: the following arguments are required: --dataset_dir; "
                   "not a flag of train_ClassifierHead.py: --datset_dir (did you mean --dataset_dir?)",
                   "(`train_ClassifierHead.py --help` lists every flag)"]
    with pytest.raises(SystemExit):
        deepfake_main(["predict", "a.png", "--checkpoint", "run", "--treshold", "0.3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "deepfake predict: error: unrecognized arguments: --treshold 0.3 (did you mean --threshold?)"
    assert len(err) == 2 and "usage" not in err[1]


# --- the README's threshold="calibrated" on any run ------------------------------------------


def test_predict_calibrated_on_an_uncalibrated_run_uses_the_validation_threshold_and_says_so(trained_run, caplog):
    images = sorted(str(p) for p in (trained_run["data"] / "test").rglob("*.png"))[:6]
    clf = DeepfakeClassifier.from_pretrained(trained_run["run"])
    val = clf.config["val_threshold"]
    with caplog.at_level(logging.WARNING):
        predictions = clf.predict(images, threshold="calibrated")
    assert [p.label for p in predictions] == [p.label for p in clf.predict(images, threshold="val")]
    assert f"labels use the validation threshold, {val:.4g}" in caplog.text and "--calibrate_real" in caplog.text
    with pytest.raises(ValueError, match="no calibrated threshold; fit one .* --calibrate_real REAL_DIR"):
        clf.decision_threshold("calibrated")  # asked for the number itself: no silent substitute
    assert clf.decision_threshold("calibrated", fallback=True) == val


# --- means over two-class domains only --------------------------------------------------------


def _samples(spec: list[tuple[str, int, int, str]]) -> list[Sample]:
    out = []
    for generator, n_real, n_fake, family in spec:
        out += [Sample(f"{generator}/r{i}", 0, generator, "", family) for i in range(n_real)]
        out += [Sample(f"{generator}/f{i}", 1, generator, "", family) for i in range(n_fake)]
    return out


def test_one_class_domains_never_enter_a_mean():
    samples = _samples([("gan", 5, 5, "gans"), ("sd", 0, 5, "diffusion"), ("mj", 0, 5, "diffusion")])
    probs, ok = np.random.default_rng(0).random(len(samples)), np.ones(len(samples), bool)
    _, mean, family_means = domain_rows(samples, probs, ok, 0.5, 0.5)
    assert mean["domain"] == "mean (1 of 3)" and mean["covers"] == ["gan"] and mean["n_fake"] == 5
    diffusion = next(m for m in family_means if m["family"] == "diffusion")
    assert diffusion["domain"] == "mean diffusion (0 of 2)" and diffusion["fake_acc"] is None
    assert "mean diffusion (0 of 2): over no domain; left out (one class, metrics undefined): sd, mj" in \
        coverage_notes({"mean": mean, "family_means": family_means})
    fakes_only = _samples([("sd", 0, 5, ""), ("mj", 0, 4, "")])
    for mean in (domain_rows(fakes_only, probs[:9], ok[:9], 0.5, None)[1], headline_rows(fakes_only, probs[:9], ok[:9])["mean"]):
        assert mean["domain"] == "mean (0 of 2)" and mean["fake_acc"] is None and mean["not_covered"] == ["sd", "mj"]


# --- the model card and the shared config -----------------------------------------------------


def _card_config(**train_args) -> dict:
    return {"tower": {"model": "spectrum", "family": "spectrum", "revision": "1", "feature_dim": 128},
            "preprocess": {"mode": "tiles", "size": 256}, "head": {"kind": "mlp", "in_dim": 128},
            "train_args": {"blur_prob": 0.0, "blur_sigma": 3.0, "jpeg_prob": 0.0, "jpeg_quality": [30, 100],
                           "aug_views": 4, **train_args}}


def test_model_card_names_the_tower_plainly_and_lists_only_augmentation_in_effect():
    card = model_card(_card_config())
    assert "- tower: `spectrum` (spectrum family; weight-free, analysis version 1), feature dimension 128" in card
    assert "- augmentation: none" in card and "aug_views" not in card and "views" not in card
    card = model_card(_card_config(blur_prob=0.5))
    assert "- augmentation: Gaussian blur with probability 0.5, sigma up to 3.0 (4 augmented views cached per image)" \
        in card and "JPEG with probability" not in card
    hub = {"model": "org/tower", "family": "clip", "revision": "abc123", "feature_dim": 768}
    assert "(clip family; revision `abc123`)" in model_card({**_card_config(), "tower": hub})


ABSOLUTE = re.compile(r"(?:^|[\s\"'`(\[:=])(?:/[^\s\"'`/]+|~/|[A-Za-z]:\\)")


def test_a_shared_head_holds_no_absolute_path(trained_run, tmp_path):
    clf = DeepfakeClassifier.from_pretrained(trained_run["run"])
    assert clf.config["tower"]["model"].startswith("/")  # the run itself keeps where its tower lies
    for folder in (clf.save_pretrained(tmp_path / "saved"), tmp_path / "pushed"):
        if folder.name == "pushed":
            assert deepfake_main(["push", str(trained_run["run"]), "--save_dir", str(folder), "--quiet"]) == 0
        for name in ("config.json", "README.md"):
            text = (folder / name).read_text()
            assert not ABSOLUTE.search(text.replace("https://", "")), (name, ABSOLUTE.search(text))
        shared = json.loads((folder / "config.json").read_text())
        assert shared["tower"]["model"] == Path(TOWER).name and shared["tower"]["weights_sha256"]
    with pytest.raises(CheckpointRefused, match=r"trained on a local tower, 'lora0'.*model=DIR"):
        DeepfakeClassifier.from_pretrained(tmp_path / "saved")
    nested = head_config_for_sharing({"tower": {"model": "/home/me/towers/clip"}, "x": {"y": ["/srv/data/a.png"]}})
    assert nested == {"tower": {"model": "clip"}, "x": {"y": ["a.png"]}}


# --- a published head offline -----------------------------------------------------------------


def test_an_imported_published_head_offline_is_announced_at_import_and_predict_names_what_works_for_it(tmp_path):
    env = hub_env(tmp_path, "env")
    release = REPO / "tests" / "published-heads" / "ufd" / "fc_weights.pth"
    imported = subprocess.run([sys.executable, "-m", "deepfake", "import", "ufd", str(release), "--out", "ufd"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr
    assert "openai/clip-vit-large-patch14" in imported.stderr and "--tower DIR" in imported.stderr
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    scored = subprocess.run([sys.executable, "-m", "deepfake", "predict", "a.png", "--checkpoint", "ufd"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert scored.returncode == 2, scored.stderr
    assert "deepfake import ufd FILE --tower DIR --out RUN" in scored.stderr
    assert "--model" not in scored.stderr  # predict takes no --model: it is not offered
