"""Whole released networks (Tiny-LaDeDa, NPR) as frozen towers, imported as runs, against the authors' outputs.

The reference is the shared fixture ``released-detectors`` (its README says how each tensor was
computed with the authors' own code): Tiny-LaDeDa's two release files byte for byte, a random
state dict in NPR's release layout, and their outputs on the five images of ``published-heads``.
Tiny-LaDeDa's weights are under a research-only licence and never enter this repository: the
tests read them from the shared fixture and skip where it is absent. Tolerances are the README's.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train_ClassifierHead
from deepfake import DeepfakeClassifier
from deepfake.__main__ import main as deepfake_main
from deepfake.data.preprocess import preprocess_image
from deepfake.evaluation.heatmaps import heatmap_size
from deepfake.features.extraction import ExtractionSettings, feature_cache
from deepfake.model.releases import find as find_release
from deepfake.towers.loading import load_tower
from deepfake.towers.released import paper_preprocess, read_network_state

from .conftest import make_forensynths, train_args

RELEASED = Path(__file__).parents[2] / "shared" / "fixtures" / "released-detectors"
IMAGES = sorted((Path(__file__).parent / "published-heads" / "images").glob("*.png"))  # the fixture's batch order
LADEDA = {"wildrf": RELEASED / "tiny-ladeda" / "WildRF_Tiny_LaDeDa.pth",
          "forensynth": RELEASED / "tiny-ladeda" / "ForenSynth_Tiny_LaDeDa.pth"}
NPR_FILE = RELEASED / "npr" / "random_npr.pth"

pytestmark = pytest.mark.skipif(not (RELEASED / "reference.safetensors").is_file(),
                                reason=f"the released-detectors fixture is not at {RELEASED} (the release files are "
                                       "never copied into this repository; Tiny-LaDeDa's licence is research-only)")


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(RELEASED / "reference.safetensors"))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the reference's largest magnitude (the README's rule for features)."""
    return float((a - b).abs().max() / b.abs().max())


def logit_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(1, |b|): the README's rule for image logits."""
    return float(((a - b).abs() / b.abs().clamp(min=1)).max())


def fc_of(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    state = read_network_state(path)
    key = "fc1" if "fc1.weight" in state else "fc"
    return state[f"{key}.weight"], state[f"{key}.bias"]


def batch(preprocess) -> torch.Tensor:
    return torch.stack([preprocess_image(Image.open(p), preprocess) for p in IMAGES])


def native_logit(path: Path, image: Path) -> torch.Tensor:
    tower = load_tower(str(path), preprocess_mode="native")
    weight, bias = fc_of(path)
    with torch.no_grad():
        return tower(preprocess_image(Image.open(image), tower.preprocess)[None]).embeds @ weight.T + bias


def test_fixture_images_are_the_fixture_batch_in_order():
    manifest = json.loads((RELEASED / "manifest.json").read_text())
    assert [p.name for p in IMAGES] == manifest["batch_order"]


def test_paper_transform_reproduces_the_authors_resize_to_256_within_1e6(ref):
    assert float((batch(paper_preprocess()) - ref["input256"]).abs().max()) <= 1e-6


@pytest.mark.parametrize("release", ["wildrf", "forensynth"])
def test_tiny_ladeda_reproduces_pooled_features_patch_logits_image_logits_and_probabilities(ref, release):
    tower = load_tower(str(LADEDA[release]), preprocess_mode="resize")
    weight, bias = fc_of(LADEDA[release])
    x = ref["input256"]
    with torch.no_grad():
        pooled = tower(x).embeds
        patches = torch.einsum("bdhw,od->bohw", tower.feature_map(x), weight) + bias[None, :, None, None]
    key = f"ladeda.{release}"
    assert tower.feature_dim == 8 and tower.patch_scores
    assert relative_error(pooled, ref[f"{key}.pooled"]) <= 1e-5
    assert patches.shape == (5, 1, 126, 126)
    assert relative_error(patches, ref[f"{key}.patch_logits"]) <= 1e-5
    logits = pooled @ weight.T + bias
    assert logit_error(logits, ref[f"{key}.logit"]) <= 1e-4
    assert float((logits.sigmoid() - ref[f"{key}.prob"]).abs().max()) <= 1e-5


@pytest.mark.parametrize("release", ["wildrf", "forensynth"])
def test_tiny_ladeda_at_native_size_reproduces_the_mean_of_the_authors_patch_logits(ref, release):
    for i, image in enumerate(IMAGES):
        assert logit_error(native_logit(LADEDA[release], image), ref[f"ladeda.{release}.native.{i}.logit"]) <= 1e-4


def test_npr_reproduces_pooled_features_logits_and_probabilities(ref):
    tower = load_tower(str(NPR_FILE), preprocess_mode="resize")
    weight, bias = fc_of(NPR_FILE)
    with torch.no_grad():
        pooled = tower(ref["input256"]).embeds
    assert tower.feature_dim == 512 and not tower.patch_scores
    assert relative_error(pooled, ref["npr.pooled"]) <= 1e-5
    logits = pooled @ weight.T + bias
    assert logit_error(logits, ref["npr.logit"]) <= 1e-4
    assert float((logits.sigmoid() - ref["npr.prob"]).abs().max()) <= 1e-5


def test_npr_at_native_size_reproduces_the_authors_logits(ref):
    for i in range(4):
        assert logit_error(native_logit(NPR_FILE, IMAGES[i]), ref[f"npr.native.{i}.logit"]) <= 1e-4


def test_npr_at_native_size_scores_an_odd_image_on_its_pixels_less_the_last_row_and_column(tmp_path):
    odd = Image.open(IMAGES[4]).convert("RGB")
    assert odd.size == (211, 301)  # where the authors' code fails
    even = tmp_path / "even.png"
    odd.crop((0, 0, 210, 300)).save(even)
    assert torch.equal(native_logit(NPR_FILE, IMAGES[4]), native_logit(NPR_FILE, even))


def test_cache_keys_tell_the_two_tiny_ladeda_releases_and_the_two_modes_apart(tmp_path):
    settings = ExtractionSettings()
    keys = {feature_cache(tmp_path, load_tower(str(LADEDA[r]), preprocess_mode=m), settings).key
            for r in LADEDA for m in ("resize", "native")}
    assert len(keys) == 4


def imported(release: str, file: Path, out: Path, *extra: str) -> Path:
    assert deepfake_main(["import", release, str(file), "--out", str(out), "--quiet", *extra]) == 0
    return out


def test_imported_tiny_ladeda_run_scores_images_as_the_authors_at_native_size_and_records_file_hash_licence(
        tmp_path, ref):
    run = imported("tiny-ladeda-wildrf", LADEDA["wildrf"], tmp_path / "run", "--preprocess", "native")
    config = json.loads((run / "best.json").read_text())
    assert config["tower"]["model"] == str(LADEDA["wildrf"].resolve()) and config["tower"]["family"] == "tiny-ladeda"
    assert config["tower"]["weights_sha256"] == find_release("tiny-ladeda-wildrf").sha256
    assert config["head"] == {"kind": "linear", "in_dim": 8, "num_classes": 1}
    source = config["published"]
    assert source["sha256_matches"] is True and source["licence"]["research_only"] is True
    assert "RESEARCH LICENSE" in source["licence"]["name"]
    assert (run / "LICENSE").read_bytes() == (RELEASED / "tiny-ladeda" / "LICENSE").read_bytes()
    assert not any(p.suffix == ".pth" for p in run.iterdir())  # the weights stay where they are
    clf = DeepfakeClassifier.from_pretrained(run)
    predictions = clf.predict([str(p) for p in IMAGES])
    expected = torch.cat([ref[f"ladeda.wildrf.native.{i}.logit"] for i in range(5)]).sigmoid()[:, 0]
    assert np.abs(np.array([p.probability for p in predictions]) - expected.double().numpy()).max() <= 1e-5


def test_an_imported_run_scores_with_the_papers_transform_by_default_as_the_authors(tmp_path, ref):
    run = imported("tiny-ladeda-wildrf", LADEDA["wildrf"], tmp_path / "run")
    assert json.loads((run / "best.json").read_text())["preprocess"] == paper_preprocess().to_dict()
    predictions = DeepfakeClassifier.from_pretrained(run).predict([str(p) for p in IMAGES])
    expected = ref["ladeda.wildrf.prob"][:, 0].double().numpy()
    assert np.abs(np.array([p.probability for p in predictions]) - expected).max() <= 1e-5


def test_imported_npr_run_predicts_from_the_command_line(tmp_path, capsys):
    run = imported("npr", NPR_FILE, tmp_path / "npr")
    assert deepfake_main(["predict", str(IMAGES[4]), "--checkpoint", str(run), "--quiet"]) == 0
    assert "odd_211x301.png" in capsys.readouterr().out


def test_import_of_a_file_with_the_release_layout_but_other_bytes_warns_naming_both_hashes(tmp_path, caplog):
    state = read_network_state(LADEDA["wildrf"])
    state["fc.bias"] = state["fc.bias"] + 1.0  # a fine-tune: same keys and shapes
    tuned = tmp_path / "tuned.pth"
    torch.save(state, tuned)
    with caplog.at_level(logging.WARNING):
        run = imported("tiny-ladeda-wildrf", tuned, tmp_path / "run")
    from deepfake.utils.hashing import file_sha256

    warning = " ".join(r.getMessage() for r in caplog.records if "sha256" in r.getMessage())
    assert file_sha256(tuned) in warning and find_release("tiny-ladeda-wildrf").sha256 in warning
    assert json.loads((run / "best.json").read_text())["published"]["sha256_matches"] is False


def test_import_refuses_another_networks_file_and_a_file_that_is_no_network(tmp_path):
    assert deepfake_main(["import", "npr", str(LADEDA["wildrf"]), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    junk = tmp_path / "junk.pth"
    torch.save({"weight": torch.zeros(3)}, junk)
    assert deepfake_main(["import", "tiny-ladeda-wildrf", str(junk), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "best.json").exists()


def test_protocol_evaluates_a_released_network_with_its_papers_transform(tmp_path):
    run = imported("tiny-ladeda-wildrf", LADEDA["wildrf"], tmp_path / "run")
    data = make_forensynths(tmp_path / "data", 1, 1, 2)
    out = tmp_path / "eval"
    assert deepfake_main(["test", "--checkpoint", str(run), "--dataset_dir", str(data / "test"), "--output_dir", str(out),
                          "--protocol", "cnndetection", "--cache_dir", str(tmp_path / "cache"), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["preprocess"] == paper_preprocess().to_dict()


def test_a_new_head_trains_on_tiny_ladeda_native_features(tmp_path):
    data = make_forensynths(tmp_path / "data", 4, 2, 2)
    args = train_args(data, tmp_path / "run", tmp_path / "cache", "--num_epochs", "2")
    args[args.index("--model") + 1] = str(LADEDA["wildrf"])
    assert train_ClassifierHead.main(args + ["--preprocess", "native"]) == 0
    config = json.loads((tmp_path / "run" / "best.json").read_text())
    assert config["tower"]["family"] == "tiny-ladeda" and config["preprocess"]["mode"] == "native"
    assert config["head"]["in_dim"] == 8


def test_predict_heatmap_writes_one_png_per_image_of_the_stated_size(tmp_path):
    run = imported("tiny-ladeda-wildrf", LADEDA["wildrf"], tmp_path / "run")
    images = tmp_path / "images"
    images.mkdir()
    for p in IMAGES[1:3]:
        shutil.copy(p, images / p.name)
    out = tmp_path / "heatmaps"
    assert deepfake_main(["predict", str(images), "--checkpoint", str(run), "--heatmap", str(out), "--quiet"]) == 0
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == [p.name for p in IMAGES[1:3]]
    for png, source in zip(written, IMAGES[1:3]):
        assert Image.open(png).size == heatmap_size(*Image.open(source).size)


def test_predict_heatmap_refuses_a_detector_without_patch_scores_naming_those_with(tmp_path, caplog):
    data = make_forensynths(tmp_path / "data", 3, 1, 1)
    run = tmp_path / "spectrum"
    assert train_ClassifierHead.main(train_args(data, run, tmp_path / "cache", "--model", "spectrum-crop256",
                                                "--num_epochs", "1")) == 0
    out = tmp_path / "heatmaps"
    code = deepfake_main(["predict", str(IMAGES[0]), "--checkpoint", str(run), "--heatmap", str(out)])
    assert code == 2 and not out.exists()
    assert "Tiny-LaDeDa" in caplog.text and "patch scores" in caplog.text


def test_serve_scores_uploads_of_different_sizes_with_an_imported_tiny_ladeda_run_as_the_authors(tmp_path, ref):
    import threading
    import time

    from deepfake.cli.serve import build_parser, build_server

    from .test_serve import post

    run = imported("tiny-ladeda-wildrf", LADEDA["wildrf"], tmp_path / "run", "--preprocess", "native")
    server = build_server(build_parser().parse_args(["--checkpoint", str(run), "--port", "0"]))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            time.sleep(0.05)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        status, answer = post(f"http://{host}:{port}", [(p.name, p.read_bytes()) for p in IMAGES[1:3]])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert status == 200
    got = [p["probability"] for p in (answer["predictions"] if isinstance(answer, dict) else answer)]
    expected = [float(ref[f"ladeda.wildrf.native.{i}.logit"].sigmoid()) for i in (1, 2)]
    assert np.abs(np.array(got) - np.array(expected)).max() <= 1e-5


@pytest.mark.parametrize("model", ["spectrum", "spectrum-crop256"])
def test_native_preprocessing_is_refused_for_towers_that_are_not_whole_released_networks(model):
    with pytest.raises(ValueError, match="fully convolutional released networks"):
        load_tower(model, preprocess_mode="native")
