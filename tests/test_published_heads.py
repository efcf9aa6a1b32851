"""Published heads (UniversalFakeDetect's probe, RINE's head) imported as runs, and the ln_2 tap RINE reads.

The reference numbers come from tests/published-heads/ (a copy of the shared fixture; its README
says how each was computed with the authors' own code): the released files byte for byte, their
outputs on stand-in features, and a tiny random CLIP tower with its ``encode_image`` and ``ln_2``
CLS outputs. Tolerance: 1e-5 everywhere.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import test_ClassifierHead
import train_ClassifierHead
from deepfake import DeepfakeClassifier
from deepfake.__main__ import main as deepfake_main
from deepfake.cli import import_head, push
from deepfake.data.image_io import load_image
from deepfake.data.preprocess import Preprocess, preprocess_image
from deepfake.features.batch import FeatureBatch
from deepfake.features.cache import FeatureCache, layer_tensor, read_header
from deepfake.features.extraction import ExtractionSettings, parse_feature_layers, prepare_tower
from deepfake.model.heads import head_from_config
from deepfake.model.losses import classification_loss
from deepfake.model.published import RELEASES, VIT_L14, TargetTower
from deepfake.model.releases import find
from deepfake.model.scoring import logits_to_probability
from deepfake.towers.fast_clip import FusedCLIPAttention
from deepfake.towers.loading import load_tower

from .conftest import FIXTURE, TOWER, make_forensynths, train_args

PUBLISHED = Path(__file__).parent / "published-heads"
UFD_FILE = PUBLISHED / "ufd" / "fc_weights.pth"
RINE_FILE = PUBLISHED / "rine" / "model_2class_trainable.pth"
TINY_CLIP = PUBLISHED / "openai-tiny" / "hf"
REF = load_file(str(PUBLISHED / "reference.safetensors"))
IMAGES = sorted((PUBLISHED / "images").glob("img*.png"))  # the order of every reference image tensor
CPU = torch.device("cpu")
TOL = 1e-5


def imported(release: str, file: Path, out: Path, *extra: str) -> Path:
    assert deepfake_main(["import", release, str(file), "--out", str(out), "--quiet", *extra]) == 0
    return out


def test_imported_ufd_head_gives_ufds_probabilities_and_records_tower_crop_tap_source_and_licence(tmp_path):
    run = imported("ufd", UFD_FILE, tmp_path / "ufd")
    clf = DeepfakeClassifier.from_pretrained(run, tower=False)
    probability = clf.probability_from_features(REF["ufd.features"])
    assert abs(probability - REF["ufd.probability"][:, 0].double().numpy()).max() <= TOL
    # The probe's weights are the file's, bit for bit, under the linear head's names.
    released = torch.load(UFD_FILE, map_location="cpu", weights_only=True)
    state = load_file(str(run / "best.safetensors"))
    assert set(state) == {"fc.weight", "fc.bias"}
    assert torch.equal(state["fc.weight"], released["weight"]) and torch.equal(state["fc.bias"], released["bias"])
    config = json.loads((run / "best.json").read_text())
    assert config["tower"]["model"] == "openai/clip-vit-large-patch14" and config["tower"]["family"] == "clip"
    assert config["tower"]["feature"] == "projected"  # encode_image: the projected CLS embedding
    assert config["preprocess"] == Preprocess(mode="crop", size=224).to_dict()
    assert config["head"] == {"kind": "linear", "in_dim": 768, "num_classes": 1}
    assert config["features"]["layers"] == [] and "tap" not in config["features"]
    source = config["published"]
    assert source["release"] == "ufd" and source["file"] == "pretrained_weights/fc_weights.pth"
    assert source["sha256"] == find("ufd").sha256 and source["sha256_matches"] is True and source["detector"] == "ufd"
    assert source["licence"]["name"] == "MIT" and source["licence"]["copy"] == "LICENSE"
    assert (run / "LICENSE").read_bytes() == (PUBLISHED / "ufd" / "LICENSE").read_bytes()


def test_imported_rine_2class_head_gives_rines_probabilities_and_embeddings_key_for_key(tmp_path):
    run = imported("rine", RINE_FILE, tmp_path / "rine")  # the variant comes from the file's name
    clf = DeepfakeClassifier.from_pretrained(run, tower=False)
    features = REF["rine2.features"].float()
    probability = clf.probability_from_features(features)
    assert abs(probability - REF["rine2.probability"][:, 0].double().numpy()).max() <= TOL
    with torch.no_grad():
        logit, embedding = clf.head.forward_with_embedding(FeatureBatch(torch.zeros(len(features), 0), features))
    assert (logit - REF["rine2.logits"]).abs().max().item() <= TOL
    assert (embedding - REF["rine2.embedding"]).abs().max().item() <= TOL
    config = json.loads((run / "best.json").read_text())
    assert config["head"]["kind"] == "rine" and (config["head"]["nproj"], config["head"]["proj_dim"]) == (4, 128)
    assert config["head"]["blocks"] == list(range(1, 25)) and config["head"]["tap"] == "ln2"
    assert config["features"]["tap"] == "ln2" and config["features"]["layers"] == list(range(1, 25))
    assert config["preprocess"] == Preprocess(mode="crop", size=224).to_dict()
    source = config["published"]
    assert source["variant"] == "2class" and source["file"] == "ckpt/model_2class_trainable.pth"
    assert source["sha256_matches"] is True and source["licence"]["name"] == "Apache-2.0"
    # Key for key: the head's state dict is the released file's.
    released = torch.load(RINE_FILE, map_location="cpu", weights_only=True)
    state = load_file(str(run / "best.safetensors"))
    assert set(state) == set(released) and all(torch.equal(state[k], released[k]) for k in released)


@pytest.mark.parametrize("variant", ["1class", "2class", "4class", "ldm"])
def test_the_rine_head_of_every_released_variant_has_the_release_keys_and_shapes(variant):
    record = RELEASES["rine"]
    sizes = record.variants[variant]
    head = head_from_config(record.head(sizes, VIT_L14))
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == record.shapes(sizes, VIT_L14)
    linears = [k for k in shapes if k.startswith("proj1.") and k.endswith(".weight")]
    assert linears == [f"proj1.{1 + 3 * i}.weight" for i in range(sizes["nproj"])]


def test_rine_head_parameter_count_matches_the_formula_and_its_config_rebuilds_it():
    hidden, blocks, proj, nproj = 20, [1, 2, 3], 8, 3
    head = head_from_config({"kind": "rine", "hidden_size": hidden, "blocks": blocks, "proj_dim": proj, "nproj": nproj})
    linear = (proj + 1) * proj
    expected = len(blocks) * proj + (hidden + 1) * proj + (2 * nproj - 1) * linear + 2 * linear + proj + 1
    assert sum(p.numel() for p in head.parameters()) == expected
    batch = FeatureBatch(torch.zeros(5, 0), torch.randn(5, len(blocks), hidden))
    assert head.eval()(batch).shape == (5, 1)
    again = head_from_config(head.config())
    assert again.config() == head.config() and again.load_state_dict(head.state_dict(), strict=True) is not None
    with pytest.raises(ValueError, match=r"expects tokens of shape \[B, 3, 20\]"):
        head(FeatureBatch(torch.zeros(5, 0), torch.randn(5, 2, hidden)))


def test_one_logit_heads_score_with_sigmoid_and_train_with_binary_cross_entropy():
    logits = torch.tensor([[2.0], [-1.0]])
    assert torch.allclose(logits_to_probability(logits), torch.sigmoid(logits[:, 0]))
    two = torch.tensor([[0.5, 1.5], [1.0, -1.0]])
    assert torch.equal(logits_to_probability(two), torch.softmax(two, dim=1)[:, 1])
    target = torch.tensor([1, 0])
    assert torch.allclose(classification_loss(logits, target),
                          torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.float()))
    assert torch.equal(classification_loss(two, target), torch.nn.functional.cross_entropy(two, target))


def test_tiny_clip_towers_ln2_tap_and_embedding_are_rines_and_ufds_not_the_block_output_plain_fused_deferred():
    pixels = REF["tiny.pixel_values"]
    plain = load_tower(str(TINY_CLIP))
    fused = prepare_tower(load_tower(str(TINY_CLIP)), "fp32", CPU)
    assert all(isinstance(layer.self_attn, FusedCLIPAttention) for layer in fused.model.vision_model.encoder.layers)
    deferred = prepare_tower(load_tower(str(TINY_CLIP), defer=True), "fp32", CPU)
    assert "ln2" in deferred.taps  # known from the config, before the tower is built
    for tower in (plain, fused, deferred):
        with torch.inference_mode():
            ln2 = tower(pixels, layers="ln2")
            blocks = tower(pixels, layers=True)
        assert ln2.tap == "ln2" and ln2.layers.shape == REF["tiny.ln2_cls"].shape
        assert (ln2.layers - REF["tiny.ln2_cls"]).abs().max().item() <= TOL
        assert (ln2.embeds - REF["tiny.encode_image"]).abs().max().item() <= TOL
        # Block outputs (rows 1..4 after the embedding row) are another tensor: RINE does not read them.
        assert (blocks.layers[:, 1:] - REF["tiny.block_cls"]).abs().max().item() <= TOL
        assert (blocks.layers[:, 1:] - REF["tiny.ln2_cls"]).abs().max().item() > 1.0


def test_the_ln2_tap_of_languagebind_is_each_blocks_layer_norm2_output_plain_and_fused():
    pixels = load_file(str(FIXTURE / "reference.safetensors"))["pixel_values"]
    tower = load_tower(TOWER)
    model = tower.model.vision_model
    with torch.no_grad():
        # Independently of the hooks: block i's input, its attention residual, then its layer_norm2.
        inputs = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        expected = torch.stack([layer.layer_norm2(x + layer.self_attn(layer.layer_norm1(x))[0])[:, 0]
                                for layer, x in zip(model.encoder.layers, inputs)], dim=1)
    fused = prepare_tower(load_tower(TOWER), "fp32", CPU)
    for candidate in (tower, fused):
        with torch.inference_mode():
            got = candidate(pixels, layers="ln2").layers
        assert (got - expected).abs().max().item() <= TOL


def test_ln2_taps_have_their_own_cache_key_tensor_names_and_block_numbers_and_are_never_read_as_block_outputs(
        tmp_path):
    block, ln2 = ExtractionSettings(layers=(1, 2)), ExtractionSettings(layers=(1, 2), tap="ln2")
    assert block.cache_info() != ln2.cache_info()
    assert ExtractionSettings().cache_info() == ExtractionSettings(tap="ln2").cache_info()  # no blocks: no tap
    assert (layer_tensor(1), layer_tensor(1, "ln2")) == ("layer.001", "ln2.001")
    assert parse_feature_layers("all", 3, "ln2") == [1, 2, 3] and parse_feature_layers("all", 3) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"blocks 1..3 \(the ln2 tap"):
        parse_feature_layers("0,1", 3, "ln2")
    image = tmp_path / "a.png"
    image.write_bytes(b"stand-in")
    for tap in ("block", "ln2"):
        cache = FeatureCache(tmp_path / tap, {"features": ExtractionSettings(layers=(1, 2), tap=tap).cache_info()})
        written = cache.write_shard([str(image)], torch.zeros(1, 4), {1: torch.ones(1, 3), 2: torch.ones(1, 3)}, [],
                                    tap=tap)
        other = "ln2" if tap == "block" else "block"
        assert set(read_header(written).tensors) == {"embeds", layer_tensor(1, tap), layer_tensor(2, tap)}
        assert cache.resolve([str(image)], [0], (1, 2), tap=tap).unknown() == []
        assert cache.resolve([str(image)], [0], (1, 2), tap=other).unknown() == [0]


def _evil_pickle(target: Path, as_zip: bool) -> bytes:
    class Evil:
        def __reduce__(self):
            return (open, (str(target), "w"))  # unpickling this would create ``target``

    if not as_zip:
        return pickle.dumps({"weight": Evil()}, protocol=2)
    path = target.with_name("evil.pth")
    torch.save({"weight": Evil()}, path)
    return path.read_bytes()


@pytest.mark.parametrize("case", ["ufd_given_rine", "rine_given_ufd", "rine_wrong_variant", "truncated",
                                  "code_in_zip", "code_in_plain_pickle", "unknown_variant_name"])
def test_import_refuses_a_wrong_file_exiting_2_naming_the_problem_and_running_nothing(tmp_path, case, caplog):
    marker = tmp_path / "created-by-unpickling"
    bad = tmp_path / "bad.pth"
    release, extra = "rine", ["--variant", "2class"]
    if case == "ufd_given_rine":
        bad, release, extra, expected = RINE_FILE, "ufd", [], "its keys and shapes are those of `deepfake import rine"
    elif case == "rine_given_ufd":
        bad, expected = UFD_FILE, "not RINE's 2class head: missing keys alpha"
    elif case == "rine_wrong_variant":
        bad, extra, expected = RINE_FILE, ["--variant", "4class"], "shapes differ: alpha [1, 24, 128]"
    elif case == "truncated":
        data = RINE_FILE.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        expected = "not a readable PyTorch checkpoint"
    elif case.startswith("code_in"):
        bad.write_bytes(_evil_pickle(marker, as_zip=case == "code_in_zip"))
        expected = "nothing from it was run"
    else:
        bad.write_bytes(RINE_FILE.read_bytes())
        extra, expected = [], "cannot tell the rine variant from the file name; pass --variant"
    out = tmp_path / "run"
    assert import_head.main([release, str(bad), "--out", str(out), *extra]) == 2
    assert expected in caplog.text
    assert not marker.exists() and not out.exists()


def test_import_refuses_to_write_into_a_folder_that_holds_a_run_unless_told(tmp_path, caplog):
    run = imported("ufd", UFD_FILE, tmp_path / "run")
    assert import_head.main(["ufd", str(UFD_FILE), "--out", str(run)]) == 2
    assert "pass --overwrite" in caplog.text
    assert import_head.main(["ufd", str(UFD_FILE), "--out", str(run), "--overwrite", "--quiet"]) == 0


@pytest.mark.parametrize("release", ["ufd", "rine"])
def test_a_released_file_on_a_tower_of_another_width_blames_the_tower_not_the_file(release, tmp_path, caplog):
    released = UFD_FILE if release == "ufd" else RINE_FILE
    out = tmp_path / "run"
    assert import_head.main([release, str(released), "--out", str(out), "--tower", str(TINY_CLIP)]) == 2
    assert "head as released, for CLIP ViT-L/14" in caplog.text and "pass --tower a local copy of" in caplog.text
    assert "not UniversalFakeDetect's head" not in caplog.text and "not RINE's" not in caplog.text
    assert not out.exists()


def _tiny_release(release: str, path: Path) -> dict[str, torch.Tensor]:
    """A file in a release's format sized for the tiny CLIP tower (16-d embedding, 4 blocks of 24)."""
    record = RELEASES[release]
    dims = TargetTower.of(load_tower(str(TINY_CLIP), defer=True)).shape
    sizes = record.variants["2class" if release == "rine" else ""]
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) * 0.3 for k, s in record.shapes(sizes, dims).items()}
    torch.save(state, path)
    return state


def _predicted(run: Path, paths: list[Path], out: Path) -> list[float]:
    argv = ["predict", *map(str, paths), "--checkpoint", str(run), "--output", str(out), "--precision", "fp32",
            "--num_workers", "0", "--quiet"]
    assert deepfake_main(argv) == 0
    with open(out, newline="") as handle:
        by_path = {row["path"]: float(row["probability"]) for row in csv.DictReader(handle)}
    return [by_path[str(p)] for p in paths]


def test_a_ufd_file_imported_on_a_local_clip_tower_predicts_tests_and_shares_like_any_run(tmp_path):
    state = _tiny_release("ufd", tmp_path / "fc_weights.pth")
    run = imported("ufd", tmp_path / "fc_weights.pth", tmp_path / "run", "--tower", str(TINY_CLIP))
    config = json.loads((run / "best.json").read_text())
    assert config["preprocess"] == Preprocess(mode="crop", size=56).to_dict()  # the tower's size, no resize
    assert config["tower"]["weights_sha256"] and config["published"]["sha256_matches"] is False
    # The crop of each image goes through the tower (embedding rounded to fp16 like every cached
    # feature), then UFD's probe: the reference embedding of the same crops, through the same probe.
    embeds = REF["tiny.encode_image"].half().float()
    expected = torch.sigmoid(embeds @ state["weight"][0] + state["bias"][0])
    assert max(abs(p - e) for p, e in zip(_predicted(run, IMAGES, tmp_path / "p.csv"), expected.tolist())) <= TOL
    data = make_forensynths(tmp_path / "data", n_train=1, n_val=1, n_test=2)
    assert test_ClassifierHead.main(["--checkpoint", str(run), "--dataset_dir", str(data / "test"), "--output_dir",
                                     str(tmp_path / "eval"), "--cache_dir", str(tmp_path / "cache"), "--precision",
                                     "fp32", "--num_workers", "0", "--no_plots", "--quiet"]) == 0
    assert (tmp_path / "eval" / "results.json").is_file()
    assert push.main([str(run), "--save_dir", str(tmp_path / "shared"), "--quiet"]) == 0
    card = (tmp_path / "shared" / "README.md").read_text()
    assert "license: mit" in card and "## Source and licence" in card and "UniversalFakeDetect" in card
    shared = json.loads((tmp_path / "shared" / "config.json").read_text())
    assert shared["published"]["path"] == "fc_weights.pth"  # the file's name, not where it lay here


def test_a_rine_file_imported_on_a_local_clip_tower_scores_images_through_the_ln2_tap(tmp_path):
    state = _tiny_release("rine", tmp_path / "model_2class_trainable.pth")
    run = imported("rine", tmp_path / "model_2class_trainable.pth", tmp_path / "run", "--tower", str(TINY_CLIP))
    head = head_from_config(json.loads((run / "best.json").read_text())["head"]).eval()
    head.load_state_dict(state)
    with torch.no_grad():
        taps = REF["tiny.ln2_cls"].half().float()  # rounded as cached features are
        expected = torch.sigmoid(head(FeatureBatch(torch.zeros(len(taps), 0), taps))[:, 0])
    assert max(abs(p - e) for p, e in zip(_predicted(run, IMAGES, tmp_path / "p.csv"), expected.tolist())) <= TOL


def test_a_rine_head_trained_from_the_command_line_tests_and_predicts_with_one_scoring_path(tmp_path):
    data = make_forensynths(tmp_path / "data", n_train=6, n_val=2, n_test=2)
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert train_ClassifierHead.main(train_args(data, run, cache, "--head", "rine", "--nproj", "2",
                                                "--proj_dim", "16")) == 0
    config = json.loads((run / "best.json").read_text())
    # Trained here, it carries its training features' out-of-distribution statistics (of the final embedding).
    assert config["head"].pop("ood")["dim"] == 32
    assert config["head"] == {"kind": "rine", "hidden_size": 64, "blocks": [1, 2, 3], "proj_dim": 16, "nproj": 2,
                              "dropout": 0.5, "num_classes": 1, "tap": "ln2"}
    assert config["features"]["tap"] == "ln2" and config["train_args"]["nproj"] == 2
    assert sum(config["block_importance"]["importance"]) == pytest.approx(1.0, abs=1e-6)
    # The ln_2 taps are cached under their own names, never as block outputs.
    shards = [read_header(p) for p in cache.rglob("shard-*.safetensors")]
    assert shards and all(set(h.tensors) == {"embeds", "ln2.001", "ln2.002", "ln2.003"} for h in shards)
    out = tmp_path / "eval"
    assert test_ClassifierHead.main(["--checkpoint", str(run), "--dataset_dir", str(data / "test"), "--output_dir",
                                     str(out), "--cache_dir", str(cache), "--num_workers", "0", "--quiet"]) == 0
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    paths = [Path(r["path"]) for r in rows]
    assert _predicted(run, paths, tmp_path / "p.csv") == [float(r["probability"]) for r in rows]
    # The head alone scores the tower's ln_2 taps (rounded as cached) to the same numbers.
    with_tower = DeepfakeClassifier.from_pretrained(run, precision="fp32")
    pixels = torch.stack([preprocess_image(load_image(p), with_tower.preprocess) for p in paths])
    with torch.inference_mode():
        taps = with_tower.tower(pixels, layers="ln2").layers.half().float()
    alone = DeepfakeClassifier.from_pretrained(run, tower=False).probability_from_features(taps)
    assert max(abs(a - float(r["probability"])) for a, r in zip(alone, rows)) <= TOL
