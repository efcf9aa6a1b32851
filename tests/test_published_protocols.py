"""--protocol ufd|cnndetection|aigcdetect: the published repositories' crop, blur, sampling and headline, checked
against torchvision's own crops (tests/published-heads/, made by that fixture's make_fixture.py), scipy, and
UniversalFakeDetect's validate.py rules; the UFD preset on both published layouts and on a partial download."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from scipy.ndimage import gaussian_filter

import test_ClassifierHead
from deepfake.data.benchmarks import load_benchmark, resolve_benchmark
from deepfake.data.perturbations import Perturbation, gaussian_blur, gaussian_blur_uint8
from deepfake.data.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocess, preprocess_image
from deepfake.data.protocols import (
    PROTOCOL_NAMES,
    ProtocolImage,
    equal_class_sample,
    get_protocol,
    protocol_preprocess,
    resize_short_side_pil,
)
from deepfake.data.test_sets import TestSample as Item  # (an alias: pytest would try to collect Test*)
from deepfake.evaluation.reports import LEGEND

from .conftest import write_images

FIXTURE = Path(__file__).parent / "published-heads"
IMAGES = sorted((FIXTURE / "images").glob("*.png"))
# The published folder names (UFD's dataset_paths.py, CNNDetection's test set), typed here, not read from the preset.
PROGAN_CATS = ["airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
GAN_ERA = {"progan": PROGAN_CATS, "cyclegan": ["apple", "horse", "orange", "summer", "winter", "zebra"],
           "biggan": [""], "stylegan": ["bedroom", "car", "cat"], "gaugan": [""], "stargan": [""], "deepfake": [""],
           "seeingdark": [""], "san": [""], "crn": [""], "imle": [""]}
DIFFUSION = {"guided": "imagenet", "ldm_200": "laion", "ldm_200_cfg": "laion", "ldm_100": "laion",
             "glide_100_27": "laion", "glide_50_27": "laion", "glide_100_10": "laion", "dalle": "laion"}
UFD_DOMAINS = [("sitd" if name == "seeingdark" else name) for name in GAN_ERA] + list(DIFFUSION)  # UFD's keys


def torchvision_normalize(crop: np.ndarray) -> torch.Tensor:
    """ToTensor() then Normalize(CLIP mean, std) as torchvision computes them (float32 /255, then sub_, div_)."""
    x = torch.from_numpy(crop.copy()).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    return x.sub_(torch.as_tensor(OPENAI_CLIP_MEAN).view(-1, 1, 1)).div_(torch.as_tensor(OPENAI_CLIP_STD).view(-1, 1, 1))


# --- the crop -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [p.name for p in IMAGES])
def test_protocol_crop_equals_torchvision_centercrop_224_bit_for_bit(name):
    """Each of the 5 fixture images through the ufd protocol's preprocessing equals torchvision's CenterCrop(224)
    output (crops224/, zero padding included) after ToTensor and Normalize, float for float."""
    image = Image.open(FIXTURE / "images" / name).convert("RGB")
    crop = np.asarray(Image.open(FIXTURE / "crops224" / name).convert("RGB"))
    for protocol in PROTOCOL_NAMES[:2]:  # ufd and cnndetection crop alike
        spec = protocol_preprocess(Preprocess(), get_protocol(protocol))
        assert (spec.mode, spec.size) == ("crop", 224)
        assert torch.equal(preprocess_image(image, spec), torchvision_normalize(crop))


def test_odd_image_pins_the_uneven_padding_and_the_half_to_even_offset():
    """211x301 -> CenterCrop(224): 6 zero columns left, 7 right; rows from round(38.5) = 38 (half to even), not 39."""
    image = np.asarray(Image.open(FIXTURE / "images" / "odd_211x301.png").convert("RGB"))
    crop = np.asarray(Image.open(FIXTURE / "crops224" / "odd_211x301.png").convert("RGB"))
    assert image.min() >= 1  # a zero in a crop can only be padding
    assert (crop[:, :6] == 0).all() and (crop[:, 217:] == 0).all() and (crop[:, 6:217] > 0).all()
    assert np.array_equal(crop[:, 6:217], image[38:38 + 224])
    ours = preprocess_image(Image.fromarray(image), Preprocess(mode="crop"))
    assert torch.equal(ours, torchvision_normalize(crop))


def test_crop_equals_the_fixtures_torchvision_tensors_at_56():
    """The crop mode at 56 equals reference.safetensors' tiny.pixel_values (torchvision CenterCrop(56), ToTensor,
    Normalize of the 4 images in the manifest's order) and odd.tiny.pixel_values, exactly."""
    reference = load_file(FIXTURE / "reference.safetensors")
    order = json.loads((FIXTURE / "manifest.json").read_text())["images"]["order"]
    spec = Preprocess(mode="crop", size=56)
    ours = torch.stack([preprocess_image(Image.open(FIXTURE / p).convert("RGB"), spec) for p in order])
    assert torch.equal(ours, reference["tiny.pixel_values"])
    odd = preprocess_image(Image.open(FIXTURE / "images" / "odd_211x301.png").convert("RGB"), spec)
    assert torch.equal(odd[None], reference["odd.tiny.pixel_values"])


def test_aigcdetect_resizes_the_short_side_to_256_with_torchvisions_size_rule_then_crops():
    """AIGCDetectBenchmark's custom_resize is torchvision Resize(256) on a PIL image: long side int(256 * long /
    short), Pillow bilinear, an image already that size untouched; its preprocessing then crops 224."""
    image = Image.open(FIXTURE / "images" / "img1_320x240.png").convert("RGB")
    resized = resize_short_side_pil(image, 256)
    assert resized.size == (341, 256)  # int(256 * 320 / 240) = 341
    assert np.array_equal(np.asarray(resized), np.asarray(image.resize((341, 256), Image.BILINEAR)))
    assert resize_short_side_pil(Image.new("RGB", (200, 300)), 256).size == (256, 384)
    square = Image.new("RGB", (256, 256))
    assert resize_short_side_pil(square, 256) is square
    protocol = get_protocol("aigcdetect")
    step = ProtocolImage(Perturbation(), protocol.resize_short)
    assert step(image).size == (341, 256) and not step.is_identity
    assert protocol_preprocess(Preprocess(), protocol).mode == "crop"


def test_protocol_reads_images_as_stored_and_keys_its_features_apart(tmp_path):
    """Under a protocol images are read without EXIF rotation (as Image.open(p).convert("RGB")), and its features
    get their own cache key; without one, the records (and so the existing caches) are unchanged."""
    from deepfake.data.alignment import Alignment
    from deepfake.deepfake_dataset import DeepfakeDataset, Sample
    from deepfake.evaluation.run import _image_step

    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path, exif=exif.tobytes())
    sample = [Sample(str(path), 0, "x")]
    assert DeepfakeDataset(sample, Preprocess(mode="crop")).read(0).size == (30, 40)
    assert DeepfakeDataset(sample, Preprocess(mode="crop"), exif_transpose=False).read(0).size == (40, 30)
    crop = protocol_preprocess(Preprocess(), get_protocol("ufd"))
    assert _image_step(None, Preprocess(), Alignment(), Perturbation()) == (None, {})
    step, extra = _image_step(get_protocol("ufd"), crop, Alignment(), Perturbation(gaussian_sigma=1))
    assert step.perturb.blur == "uint8" and extra["perturbation"]["blur"] == "uint8"
    assert extra["protocol"] == {"name": "ufd", "preprocess": crop.to_dict(), "resize_short": None,
                                 "exif_transpose": False}
    _, extra = _image_step(get_protocol("aigcdetect"), crop, Alignment(), Perturbation())
    assert extra["protocol"]["resize_short"] == 256


# --- the blur -------------------------------------------------------------------------------------------------


def ufd_gaussian_blur(image: Image.Image, sigma: float) -> np.ndarray:
    """UFD's validate.py / CNNDetection's data/datasets.py gaussian_blur: scipy per channel, written into the uint8 array."""
    img = np.array(image)
    for c in range(3):
        gaussian_filter(img[:, :, c], output=img[:, :, c], sigma=sigma)
    return img


def odd_images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    smooth = np.kron(rng.normal(128, 60, (12, 9, 3)), np.ones((5, 7, 1)))[:59, :61].clip(0, 255).astype(np.uint8)
    saturated = np.full((45, 31, 3), 255, np.uint8)
    saturated[::4] = rng.integers(0, 256, saturated[::4].shape)  # flat 255 regions: a sum an ulp under 255 drops to 254
    tiny = rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)  # the kernel is far wider than the image
    photo = np.asarray(Image.open(FIXTURE / "images" / "odd_211x301.png").convert("RGB"))
    return [noise, smooth, saturated, tiny, photo]


@pytest.mark.parametrize("sigma", [1, 2, 3])
def test_protocol_blur_equals_scipy_gaussian_filter_into_the_uint8_array(sigma):
    """The protocol's blur equals UFD's and CNNDetection's gaussian_blur (scipy.ndimage.gaussian_filter per channel,
    in place, output into the uint8 array) bit for bit, on odd-sized images, for sigma 1, 2 and 3."""
    for array in odd_images():
        expected = ufd_gaussian_blur(Image.fromarray(array), sigma)
        ours = gaussian_blur_uint8(Image.fromarray(array), sigma)
        assert np.array_equal(np.asarray(ours), expected), array.shape
        through = Perturbation(gaussian_sigma=sigma, blur="uint8")(Image.fromarray(array))
        assert np.array_equal(np.asarray(through), expected)


def test_the_default_float_blur_is_not_the_published_one_and_keeps_its_records():
    """The default blur (float, rounded once) differs from the published uint8 blur on most pixels, which is why
    --protocol switches; the default's records are unchanged (no 'blur' key), the protocol's name it."""
    array = odd_images()[4]
    published = ufd_gaussian_blur(Image.fromarray(array), 2)
    default = np.asarray(gaussian_blur(Image.fromarray(array), 2)).astype(int)
    assert np.mean(default != published) > 0.5 and np.abs(default - published).max() >= 1
    assert Perturbation(gaussian_sigma=2).to_dict() == {"jpeg_quality": None, "gaussian_sigma": 2, "resize_scale": None}
    assert Perturbation(gaussian_sigma=2, blur="uint8").to_dict()["blur"] == "uint8"
    assert "blur" not in Perturbation(jpeg_quality=75, blur="uint8").to_dict()  # nothing blurred: same features
    with pytest.raises(ValueError, match="unknown blur"):
        Perturbation(blur="mirror")


# --- UFD's sampling -------------------------------------------------------------------------------------------


def samples_of(domain: str, n_real: int, n_fake: int, reals: list[str] | None = None) -> list[Item]:
    real_paths = reals if reals is not None else [f"{domain}/0_real/{i:05d}.png" for i in range(n_real)]
    return ([Item(p, 0, domain) for p in real_paths]
            + [Item(f"{domain}/1_fake/{i:05d}.png", 1, domain) for i in range(n_fake)])


def ufd_read_path(real_list: list[str], fake_list: list[str], max_sample: int) -> tuple[list[str], list[str]]:
    """validate.py's read_path after set_seed() (random.seed(0)), on lists in the given order."""
    random.seed(0)
    if max_sample > len(real_list) or max_sample > len(fake_list):
        max_sample = 100
    real_list, fake_list = list(real_list), list(fake_list)
    random.shuffle(real_list)
    random.shuffle(fake_list)
    return real_list[:max_sample], fake_list[:max_sample]


def test_ufd_sampling_on_unequal_classes():
    """1000 of each class where both have 1000; 100 of each when either class has fewer (1500 vs 800); equal
    counts always (150 vs 40: UFD would stop on its assert, here both are cut to 40, with a note); a one-class
    domain keeps what it has up to the count; the draw is validate.py's for seed 0 and sorted lists."""
    laion = [f"laion/0_real/{i:05d}.png" for i in range(1200)]
    samples = (samples_of("big", 1500, 1200) + samples_of("short", 1500, 800) + samples_of("tiny", 150, 40)
               + samples_of("ldm", 0, 1100, laion) + samples_of("glide", 0, 1300, laion) + samples_of("lonely", 0, 30))
    kept, counts, notes = equal_class_sample(samples, 1000, 100, seed=0)
    used = {d: {k: v["used"] for k, v in c.items()} for d, c in counts.items()}
    assert used == {"big": {"real": 1000, "fake": 1000}, "short": {"real": 100, "fake": 100},
                    "tiny": {"real": 40, "fake": 40}, "ldm": {"real": 1000, "fake": 1000},
                    "glide": {"real": 1000, "fake": 1000}, "lonely": {"fake": 30}}
    assert counts["short"]["fake"]["found"] == 800
    assert any(n.startswith("short:") and "100 of each" in n for n in notes)
    assert any(n.startswith("tiny:") and "equal-count assert" in n and "cut to 40" in n for n in notes)
    assert not any(n.startswith("big:") for n in notes)
    # Shared reals are drawn alike for every domain (validate.py re-seeds per domain): scored once.
    draw = {d: {s.path for s in kept if s.generator == d and s.label == 0} for d in ("ldm", "glide")}
    assert draw["ldm"] == draw["glide"]
    # The draw is validate.py's read_path for random.seed(0) on the same (sorted) lists.
    for domain, n_real, n_fake in (("big", 1500, 1200), ("short", 1500, 800)):
        group = samples_of(domain, n_real, n_fake)
        reals, fakes = ufd_read_path([s.path for s in group if s.label == 0], [s.path for s in group if s.label == 1],
                                     1000)
        assert {s.path for s in kept if s.generator == domain} == set(reals) | set(fakes)
    # Order of the benchmark kept; another seed draws other images.
    assert [s.generator for s in kept] == sorted([s.generator for s in kept], key=[
        "big", "short", "tiny", "ldm", "glide", "lonely"].index)
    other, _, _ = equal_class_sample(samples, 1000, 100, seed=1)
    assert {s.path for s in other} != {s.path for s in kept}


# --- the UFD preset: both layouts, a partial download, end to end ----------------------------------------------


def make_gan_era(test_root: Path) -> None:
    rng = np.random.default_rng(0)
    for name, categories in GAN_ERA.items():
        for category in categories:
            write_images(test_root / name / category / "0_real", 1, False, rng)
            write_images(test_root / name / category / "1_fake", 1, True, rng)


def make_diffusion(diffusion: Path, domains=tuple(DIFFUSION), reals=("laion", "imagenet")) -> None:
    for name in domains:
        write_images(diffusion / name / "1_fake", 3, True, np.random.default_rng(len(name)))
    for name in reals:
        write_images(diffusion / name / "0_real", 4 if name == "laion" else 2, False, np.random.default_rng(1))


@pytest.fixture
def ufd_readme_layout(tmp_path) -> Path:
    """UFD's README: datasets/test/{progan,...} and diffusion_datasets/ at the repository root, beside datasets/."""
    repo = tmp_path / "UniversalFakeDetect"
    make_gan_era(repo / "datasets" / "test")
    make_diffusion(repo / "diffusion_datasets")
    return repo


@pytest.fixture
def rine_layout(tmp_path) -> Path:
    """RINE's README: data/test/{progan,..., diffusion_datasets/{guided,...}}."""
    test = tmp_path / "rine" / "data" / "test"
    make_gan_era(test)
    make_diffusion(test / "diffusion_datasets")
    return test


def test_ufd_preset_finds_all_19_domains_in_both_published_layouts(ufd_readme_layout, rine_layout):
    """The UFD README layout read from datasets/test (the command its README suggests) or from the repository
    root, and RINE's data/test: all 19 domains, none missing, guided paired with imagenet and the rest with laion."""
    bench = load_benchmark("ufd")
    for root in (ufd_readme_layout / "datasets" / "test", ufd_readme_layout, rine_layout):
        resolved = resolve_benchmark(bench, root)
        assert resolved.missing == [] and sorted(resolved.present) == sorted(UFD_DOMAINS), root
        reals = {s.generator: Path(s.path).parent.parent.name for s in resolved.samples if s.label == 0}
        assert all(reals[name] == pair for name, pair in DIFFUSION.items())


def run_test(run: dict, data_root: Path, out: Path, *extra: str) -> int:
    return test_ClassifierHead.main(["--checkpoint", str(run["run"]), "--benchmark", "ufd", "--data_root", str(data_root),
                                     "--output_dir", str(out), "--cache_dir", str(run["cache"]), "--num_workers", "0",
                                     "--no_plots", "--quiet", *extra])


def test_protocol_ufd_evaluates_all_19_domains_from_datasets_test_with_the_headline_first(
        trained_run, ufd_readme_layout, tmp_path, capsys):
    """`test --benchmark ufd --data_root datasets/test --protocol ufd` on UFD's README layout: 19 domains, none
    missing, the crop preprocessing and the protocol recorded, the accuracy at 0.5 and AP printed before the table."""
    out = tmp_path / "eval"
    assert run_test(trained_run, ufd_readme_layout / "datasets" / "test", out, "--protocol", "ufd") == 0
    results = json.loads((out / "results.json").read_text())
    level = results["levels"][0]
    assert sorted(r["domain"] for r in level["rows"] if r["kind"] == "domain") == sorted(UFD_DOMAINS)
    assert results["missing"] == [] and results["protocol"]["name"] == "ufd"
    assert results["preprocess"]["mode"] == "crop" and results["preprocess"]["size"] == 224
    assert results["max_sample"] == 1000 and any("fallback" in n for n in results["sampling_notes"])
    headline = {r["domain"]: r for r in level["headline"]["rows"]}
    assert set(headline) == set(UFD_DOMAINS) and all(r["threshold"] == 0.5 for r in headline.values())
    # Every domain of this miniature has fewer than 100 images a class: equal counts, as validate.py asserts.
    assert all(r["n_real"] == r["n_fake"] for r in headline.values())
    printed = capsys.readouterr().out
    assert printed.index("published headline, --protocol ufd") < printed.index("max_acc")


def test_protocol_ufd_on_four_diffusion_domains_evaluates_them_and_lists_the_rest_missing(trained_run, tmp_path):
    """A download holding only dalle, glide_100_27, ldm_200 and guided (with laion/ and imagenet/ reals): those four
    are evaluated, and the 4 other diffusion domains (whose shared laion reals are present) and the 11 GAN-era
    domains are listed as missing instead of being refused as one-class domains."""
    data = tmp_path / "ufd"
    four = ("dalle", "glide_100_27", "ldm_200", "guided")
    make_diffusion(data / "diffusion_datasets", four)
    resolved = resolve_benchmark(load_benchmark("ufd"), data)
    assert sorted(resolved.present) == sorted(four)
    absent = sorted(set(DIFFUSION) - set(four))
    assert all(any(m.startswith(f"{name}: not found") for m in resolved.missing) for name in absent)
    assert len(resolved.missing) == 15 and not any("laion" in m for m in resolved.missing)
    out = tmp_path / "eval"
    assert run_test(trained_run, data, out, "--protocol", "ufd") == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["domain"] for r in results["levels"][0]["rows"]] == ["guided", "ldm_200", "glide_100_27", "dalle"]
    assert len(results["missing"]) == 15


def test_the_legend_no_longer_calls_ufd_acc_comparable_with_the_paper():
    """UFD's repository writes AP and the accuracy at 0.5 only; the legend says so and points at those."""
    assert "comparable with its paper" not in LEGEND
    assert "ap.txt" in LEGEND and "acc0.txt" in LEGEND
    docs = Path(__file__).resolve().parent.parent / "docs"
    for page in ("evaluation.md", "data-and-benchmarks.md"):
        assert "comparable with its paper" not in (docs / page).read_text(encoding="utf-8")


# --- RINE's protocol: its 20 sets, every image ---------------------------------------------------------------------

# RINE's src/utils.py get_generators(): its test sets, typed here (UFD's names, seeingdark for UFD's sitd).
RINE_GENERATORS = ["progan", "stylegan", "stylegan2", "biggan", "cyclegan", "stargan", "gaugan", "deepfake",
                   "seeingdark", "san", "crn", "imle", "guided", "ldm_200", "ldm_200_cfg", "ldm_100", "glide_100_27",
                   "glide_50_27", "glide_100_10", "dalle"]


def test_protocol_rine_on_the_rine_preset_evaluates_every_image_of_its_20_sets_stylegan2_included(
        trained_run, rine_layout, tmp_path, capsys):
    """RINE's validation.py: CenterCrop(224) without resizing on every image (no sampling) of 20 sets, UFD's 19
    and stylegan2 (every category folder); accuracy at 0.5 and AP per set. --benchmark ufd --protocol ufd is not
    that: it samples and has no stylegan2."""
    rng = np.random.default_rng(3)
    for category in ("car", "cat", "church", "horse"):  # CNNDetection's stylegan2 folders
        write_images(rine_layout / "stylegan2" / category / "0_real", 2, False, rng)
        write_images(rine_layout / "stylegan2" / category / "1_fake", 1, True, rng)
    expected = [("sitd" if g == "seeingdark" else g) for g in RINE_GENERATORS]
    resolved = resolve_benchmark(load_benchmark("rine"), rine_layout.parent.parent)  # RINE's repository root
    assert resolved.missing == [] and sorted(resolved.present) == sorted(expected)
    found = {g: sum(s.generator == g for s in resolved.samples) for g in expected}
    out = tmp_path / "eval"
    assert test_ClassifierHead.main(["--checkpoint", str(trained_run["run"]), "--benchmark", "rine", "--data_root",
                                     str(rine_layout), "--protocol", "rine", "--output_dir", str(out), "--cache_dir",
                                     str(trained_run["cache"]), "--num_workers", "0", "--no_plots", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["name"] == "rine" and results["preprocess"]["mode"] == "crop"
    assert results["preprocess"]["size"] == 224 and not results.get("sampling_notes")
    headline = {r["domain"]: r for r in results["levels"][0]["headline"]["rows"]}
    assert set(headline) == set(expected) and all(r["threshold"] == 0.5 for r in headline.values())
    # Every image: stylegan2's unequal classes (8 reals, 4 fakes) and laion's 4 reals beside 3 fakes are all kept.
    assert {g: r["n_real"] + r["n_fake"] for g, r in headline.items()} == found
    assert (headline["stylegan2"]["n_real"], headline["stylegan2"]["n_fake"]) == (8, 4)
    assert "published headline, --protocol rine" in capsys.readouterr().out
