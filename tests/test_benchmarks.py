"""Benchmark presets on miniatures of each benchmark's published folder structure (names as published)."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import test_ClassifierHead
from deepfake.data.benchmarks import available_presets, load_benchmark, parse_benchmark, resolve_benchmark
from deepfake.data.layouts import LayoutError
from deepfake.data.test_sets import check_pairing, discover_test_set
from deepfake.evaluation.domains import domain_rows

from .conftest import write_images

# The published folder names, typed here from the benchmarks' own releases (not read from the presets).
PROGAN_CATS = ["airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
CNN_CATS = {"progan": PROGAN_CATS, "stylegan": ["bedroom", "car", "cat"], "stylegan2": ["car", "cat", "church", "horse"],
            "cyclegan": ["apple", "horse", "orange", "summer", "winter", "zebra"]}
CNN_FLAT = ["biggan", "gaugan", "stargan", "deepfake", "crn", "imle", "seeingdark", "san", "whichfaceisreal"]
UFD_DIFFUSION = {"guided": "imagenet", "ldm_200": "laion", "ldm_200_cfg": "laion", "ldm_100": "laion",
                 "glide_100_27": "laion", "glide_50_27": "laion", "glide_100_10": "laion", "dalle": "laion"}
# GenImage's README draws the generators' folders directly (ADM/val/ai), under these names.
GENIMAGE_README = {"ADM": "ADM", "BigGAN": "BigGAN", "glide": "GLIDE", "Midjourney": "Midjourney",
                   "stable_diffusion_v_1_4": "Stable Diffusion V1.4", "stable_diffusion_v_1_5": "Stable Diffusion V1.5",
                   "VQDM": "VQDM", "wukong": "Wukong"}
GENIMAGE = {"ADM": "imagenet_ai_0508_adm", "BigGAN": "imagenet_ai_0419_biggan", "glide": "imagenet_glide",
            "Midjourney": "imagenet_midjourney", "stable_diffusion_v_1_4": "imagenet_ai_0419_sdv4",
            "stable_diffusion_v_1_5": "imagenet_ai_0424_sdv5", "VQDM": "imagenet_ai_0419_vqdm",
            "wukong": "imagenet_ai_0424_wukong"}
AIGC = ["progan", "stylegan", "biggan", "cyclegan", "stargan", "gaugan", "stylegan2", "whichfaceisreal", "ADM", "Glide",
        "Midjourney", "stable_diffusion_v_1_4", "stable_diffusion_v_1_5", "VQDM", "wukong", "DALLE2", "sd_xl"]
AIGC_DOMAIN = {"sd_xl": "sdxl"}  # the folder sd_xl/ (SDXL, added to the test set on 2024-03-08) is domain sdxl
SYNTHBUSTER = ["dalle2", "dalle3", "firefly", "glide", "midjourney-v5", "stable-diffusion-1-3", "stable-diffusion-1-4",
               "stable-diffusion-2", "stable-diffusion-xl"]


def touch(folder: Path, n: int, ext: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 40 % 255, 0, 0)).save(folder / f"{i:03d}{ext}")


def cnn_generator(root: Path, name: str, n_real: int = 1, n_fake: int = 1) -> None:
    for sub in CNN_CATS.get(name, [""]):
        touch(root / name / sub / "0_real", n_real)
        touch(root / name / sub / "1_fake", n_fake)


def counts(samples) -> dict:
    c: dict = {}
    for s in samples:
        c.setdefault(s.generator, Counter())[("real", "fake")[s.label]] += 1
    return {g: dict(v) for g, v in c.items()}


def test_presets_are_the_published_benchmarks():
    assert available_presets() == ["aigcdetect", "chameleon", "forensynths", "genimage", "rine", "synthbuster", "ufd",
                                   "wildrf"]
    for name in available_presets():
        bench = load_benchmark(name)
        assert bench.source.startswith("https://") and bench.title and bench.data_root
    # The repositories as GitHub names them (the WildRF link used to name one that does not exist).
    assert load_benchmark("wildrf").source == "https://github.com/barcavia/RealTime-DeepfakeDetection-in-the-RealWorld"
    assert load_benchmark("ufd").source == "https://github.com/WisconsinAIVision/UniversalFakeDetect"
    assert len(load_benchmark("aigcdetect").domains) == 17
    assert load_benchmark("rine").source == "https://github.com/mever-team/rine" and len(load_benchmark("rine").domains) == 20


def test_the_docs_link_each_preset_to_the_repository_the_preset_names():
    """Every GitHub repository the benchmark table links is one a preset names as its source (or CNNDetection's)."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "data-and-benchmarks.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", text))
    sources = {load_benchmark(n).source for n in available_presets()} | {"https://github.com/PeterWang512/CNNDetection"}
    assert linked and linked <= sources, linked - sources


def test_forensynths_miniature(tmp_path):
    for name in list(CNN_CATS) + CNN_FLAT:
        cnn_generator(tmp_path, name)
    resolved = resolve_benchmark(load_benchmark("forensynths"), tmp_path)
    assert resolved.missing == []
    assert sorted(resolved.present) == sorted(list(CNN_CATS) + CNN_FLAT)
    c = counts(resolved.samples)
    assert c["progan"] == {"real": 20, "fake": 20} and c["cyclegan"] == {"real": 6, "fake": 6}
    assert c["biggan"] == {"real": 1, "fake": 1}
    cats = {s.category for s in resolved.samples if s.generator == "stylegan2"}
    assert cats == {"car", "cat", "church", "horse"}
    families = {s.generator: s.family for s in resolved.samples}
    assert families["progan"] == "GAN" and families["san"] == "low-level vision" and families["crn"] == "perceptual loss"


def make_ufd(root: Path, with_gans: bool = True) -> None:
    if with_gans:
        for name in ["progan", "cyclegan", "biggan", "stylegan", "gaugan", "stargan", "deepfake", "seeingdark", "san",
                     "crn", "imle"]:
            cnn_generator(root, name)
    diffusion = root / "diffusion_datasets"
    for name in UFD_DIFFUSION:
        write_images(diffusion / name / "1_fake", 3, True, np.random.default_rng(len(name)))
    write_images(diffusion / "laion" / "0_real", 4, False, np.random.default_rng(1))
    write_images(diffusion / "imagenet" / "0_real", 2, False, np.random.default_rng(2))


def test_ufd_miniature_pairs_guided_with_imagenet_and_the_rest_with_laion(tmp_path):
    make_ufd(tmp_path)
    resolved = resolve_benchmark(load_benchmark("ufd"), tmp_path)
    assert resolved.missing == [] and len(resolved.present) == 19
    for name, reals in UFD_DIFFUSION.items():
        real_dirs = {Path(s.path).parent.parent.name for s in resolved.samples if s.generator == name and s.label == 0}
        assert real_dirs == {reals}
        assert counts(resolved.samples)[name] == {"real": 4 if reals == "laion" else 2, "fake": 3}
    assert {s.generator for s in resolved.samples if s.family == "GAN"} == \
        {"progan", "cyclegan", "biggan", "stylegan", "gaugan", "stargan"}
    assert "sitd" in resolved.present  # UFD's key for seeingdark/


def test_ufd_diffusion_half_alone_is_evaluated_and_the_rest_listed_missing(tmp_path):
    make_ufd(tmp_path, with_gans=False)
    for root in (tmp_path, tmp_path / "diffusion_datasets"):  # the folder that holds it, or the folder itself
        resolved = resolve_benchmark(load_benchmark("ufd"), root)
        assert sorted(resolved.present) == sorted(UFD_DIFFUSION)
        assert len(resolved.missing) == 11 and any(m.startswith("progan: not found") for m in resolved.missing)


def test_ufd_diffusion_folders_without_a_preset_are_refused_listing_unpaired_domains(tmp_path):
    make_ufd(tmp_path, with_gans=False)
    with pytest.raises(LayoutError) as err:
        discover_test_set(tmp_path / "diffusion_datasets")
    message = str(err.value)
    for name in list(UFD_DIFFUSION) + ["laion", "imagenet"]:
        assert name in message
    assert "--benchmark ufd" in message and "--allow_one_class" in message


def test_genimage_readme_layout_is_read_like_the_downloads(tmp_path):
    """GenImage's README draws Wukong/val/ai, Stable Diffusion V1.4/val/nature, GLIDE/...: all 8 found, val only."""
    for folder in GENIMAGE_README.values():
        for split, n in (("train", 3), ("val", 2)):
            touch(tmp_path / folder / split / "ai", n)
            touch(tmp_path / folder / split / "nature", n)
    resolved = resolve_benchmark(load_benchmark("genimage"), tmp_path)
    assert resolved.missing == [] and sorted(resolved.present) == sorted(GENIMAGE)
    assert all(c == {"real": 2, "fake": 2} for c in counts(resolved.samples).values())
    assert all("/val/" in s.path for s in resolved.samples)
    assert {Path(s.path).parents[2].name for s in resolved.samples if s.generator == "stable_diffusion_v_1_4"} == \
        {"Stable Diffusion V1.4"}
    # One generator missing from both layouts is named with its download folder and the other layout counted.
    shutil.rmtree(tmp_path / "Wukong")
    resolved = resolve_benchmark(load_benchmark("genimage"), tmp_path)
    assert [m for m in resolved.missing if m.startswith("wukong")] == [
        f"wukong: not found ({tmp_path / 'wukong/imagenet_ai_0424_wukong/val/nature'} (or 1 other layout(s)), "
        f"{tmp_path / 'wukong/imagenet_ai_0424_wukong/val/ai'} (or 1 other layout(s)))"]


def test_genimage_miniature_uses_the_val_split_and_its_real_nesting(tmp_path):
    for name, sub in GENIMAGE.items():
        for split, n in (("train", 3), ("val", 2)):
            touch(tmp_path / name / sub / split / "ai", n)
            touch(tmp_path / name / sub / split / "nature", n)
    resolved = resolve_benchmark(load_benchmark("genimage"), tmp_path)
    assert resolved.missing == [] and sorted(resolved.present) == sorted(GENIMAGE)
    assert all(c == {"real": 2, "fake": 2} for c in counts(resolved.samples).values())
    assert all("/val/" in s.path for s in resolved.samples)
    families = {s.generator: s.family for s in resolved.samples}
    assert families["Midjourney"] == "commercial" and families["BigGAN"] == "GAN" and families["ADM"] == "diffusion"


def test_aigcdetect_chameleon_wildrf_miniatures(tmp_path):
    aigc = tmp_path / "aigc" / "test"
    for name in AIGC:
        cnn_generator(aigc, name)
    resolved = resolve_benchmark(load_benchmark("aigcdetect"), aigc)
    assert resolved.missing == [] and sorted(resolved.present) == sorted(AIGC_DOMAIN.get(n, n) for n in AIGC)
    assert counts(resolved.samples)["stylegan"] == {"real": 3, "fake": 3}
    assert counts(resolved.samples)["sdxl"] == {"real": 1, "fake": 1}
    # A copy from before SDXL was added: the 16 others evaluated, sdxl listed as missing.
    shutil.rmtree(aigc / "sd_xl")
    resolved = resolve_benchmark(load_benchmark("aigcdetect"), aigc)
    assert len(resolved.present) == 16 and len(resolved.missing) == 1 and resolved.missing[0].startswith("sdxl: not found")

    chameleon = tmp_path / "Chameleon"
    touch(chameleon / "test" / "0_real", 3)
    touch(chameleon / "test" / "1_fake", 2)
    for root in (chameleon, chameleon / "test"):
        assert counts(resolve_benchmark(load_benchmark("chameleon"), root).samples) == {"chameleon": {"real": 3, "fake": 2}}

    wildrf = tmp_path / "WildRF"
    for platform in ("reddit", "twitter", "facebook"):
        touch(wildrf / "test" / platform / "0_real", 2)
        touch(wildrf / "test" / platform / "1_fake", 1)
    touch(wildrf / "train" / "reddit" / "0_real", 5)
    resolved = resolve_benchmark(load_benchmark("wildrf"), wildrf)
    assert counts(resolved.samples) == {p: {"real": 2, "fake": 1} for p in ("reddit", "twitter", "facebook")}


def test_synthbuster_pairs_every_generator_with_raise_from_real_root(tmp_path):
    for name in SYNTHBUSTER:
        touch(tmp_path / "synthbuster" / name, 2)
    touch(tmp_path / "RAISE_1k", 5, ext=".tif")
    bench = load_benchmark("synthbuster")
    resolved = resolve_benchmark(bench, tmp_path / "synthbuster", tmp_path / "RAISE_1k")
    assert resolved.missing == []
    assert counts(resolved.samples) == {n: {"real": 5, "fake": 2} for n in SYNTHBUSTER}
    alone = resolve_benchmark(bench, tmp_path / "synthbuster")
    assert all("--real_root" in m for m in alone.missing)
    with pytest.raises(LayoutError, match="one class and no pairing"):
        check_pairing(alone.samples, "synthbuster", allow_one_class=False)


def test_family_means_and_overall_mean_from_a_preset(tmp_path):
    for name, sub in GENIMAGE.items():
        touch(tmp_path / name / sub / "val" / "ai", 4)
        touch(tmp_path / name / sub / "val" / "nature", 4)
    samples = resolve_benchmark(load_benchmark("genimage"), tmp_path).samples
    rng = np.random.default_rng(0)
    labels = np.array([s.label for s in samples])
    probs = np.clip(labels * 0.4 + rng.random(len(samples)) * 0.6, 0, 1)
    rows, mean, family_means = domain_rows(samples, probs, np.ones(len(samples), bool), 0.5, None)
    assert [f["family"] for f in family_means] == ["diffusion", "GAN", "commercial"]
    for fm in family_means:
        members = [r for r in rows if r["family"] == fm["family"] and r["kind"] == "domain"]
        assert fm["covers"] == [r["domain"] for r in members]
        assert fm["ap"] == pytest.approx(np.mean([r["ap"] for r in members]))
        assert fm["n_real"] == 4 * len(members)
    assert mean["ap"] == pytest.approx(np.mean([r["ap"] for r in rows]))
    assert len(mean["covers"]) == 8 and mean["not_covered"] == []


def test_benchmark_file_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(LayoutError, match="bench.json: domain 'x': needs both 'fake' and 'real'"):
        parse_benchmark({"domains": [{"name": "x", "fake": ["a"]}]}, "bench.json")
    with pytest.raises(LayoutError, match=r"use \{category\} but no .categories."):
        parse_benchmark({"domains": [{"name": "x", "fake": ["{category}/f"], "real": ["r"]}]}, "bench.json")
    with pytest.raises(LayoutError, match="without '..'"):
        parse_benchmark({"domains": [{"name": "x", "fake": ["../f"], "real": ["r"]}]}, "bench.json")
    with pytest.raises(LayoutError, match="presets: aigcdetect"):
        load_benchmark("no-such-benchmark")


def test_ufd_diffusion_miniature_evaluates_end_to_end_with_family_means(trained_run, tmp_path):
    data = tmp_path / "ufd"
    make_ufd(data, with_gans=False)
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(trained_run["run"]), "--benchmark", "ufd", "--data_root", str(data),
            "--output_dir", str(out), "--cache_dir", str(trained_run["cache"]), "--num_workers", "0", "--quiet"]
    assert test_ClassifierHead.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    level = results["levels"][0]
    domains = [r["domain"] for r in level["rows"] if r["kind"] == "domain"]
    assert domains == list(UFD_DIFFUSION)  # the published order
    assert {r["domain"]: (r["n_real"], r["n_fake"]) for r in level["rows"]}["guided"] == (2, 3)
    assert [f["family"] for f in level["family_means"]] == ["diffusion", "autoregressive"]
    diffusion = [r for r in level["rows"] if r["family"] == "diffusion"]
    assert level["family_means"][0]["ap"] == pytest.approx(np.mean([r["ap"] for r in diffusion]))
    assert len(results["missing"]) == 11 and results["benchmark"]["name"] == "ufd"
    # LAION reals are shared by seven domains but scored once: equal probabilities in every domain.
    import csv
    scores = list(csv.DictReader(open(out / "scores.csv")))
    laion = {}
    for row in scores:
        if "/laion/" in row["path"]:
            laion.setdefault(row["path"], set()).add(row["probability"])
    assert len(laion) == 4 and all(len(v) == 1 for v in laion.values())
    assert test_ClassifierHead.main([a if a != "ufd" else "ufd" for a in argv[:2]] + [
        "--dataset_dir", str(data / "diffusion_datasets"), "--output_dir", str(tmp_path / "refused"),
        "--cache_dir", str(trained_run["cache"]), "--num_workers", "0", "--quiet"]) == 2


def test_audit_command_reads_a_preset_and_counts_shared_reals_once(tmp_path, capsys):
    import deepfake.__main__ as cli

    make_ufd(tmp_path, with_gans=False)
    out = tmp_path / "audit.json"
    assert cli.main(["audit", str(tmp_path), "--benchmark", "ufd", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["domains"]) == list(UFD_DIFFUSION)
    assert report["domains"]["guided"]["real"]["n"] == 2 and report["domains"]["dalle"]["real"]["n"] == 4
    assert report["pooled"]["real"]["n"] == 6  # 4 LAION + 2 ImageNet reals, each once
    assert "guided/real: 2 images" in capsys.readouterr().out
