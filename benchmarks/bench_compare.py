"""`deepfake compare ufd rine-2class rine-4class` against the three `deepfake test` runs one after another.

    python benchmarks/bench_compare.py [--n_test 3] [--precision fp32] [--device cpu]

Tower: CLIP ViT-L/14 as UniversalFakeDetect and RINE use it (hidden 1024, 24 blocks, quick_gelu,
projection 768, 224 px) with random weights, saved as a local folder: it costs the compute of the
real one. Heads: the released files in tests/published-heads (UFD's probe, RINE's 2class head),
imported onto it; rine-4class is a head of the released 4class shapes (2 projections of 1024) with
random weights. Test set: the synthetic benchmark (two generators, ``--n_test`` images per
generator, category and class; 256-320 px so that the 224 crop is a crop).

Measured side by side in one run, each command a fresh process, as a user runs it:
- tests, one cache each: each detector alone from an empty cache (each loads the tower and runs it on
  every image, as running the released detectors one after another does);
- with ``--shared_cache``, tests sharing one cache: rine-4class finds the features rine-2class cached
  (same key), UFD does not;
- compare: the three detectors, one tower load and one pass, from an empty cache.
Prints the times, the ratios, and whether every detector's scores are equal in compare and in its test.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "tests" / "published-heads"
DETECTORS = ("ufd", "rine-2class", "rine-4class")
# OpenAI CLIP ViT-L/14's vision tower (its config.json), as both releases were trained on.
VIT_L14 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
           "patch_size": 14, "image_size": 224, "projection_dim": 768, "hidden_act": "quick_gelu"}
PROCESSOR = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 224},
             "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "resample": 3, "do_normalize": True,
             "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}


def save_random_tower(directory: Path) -> Path:
    """CLIP ViT-L/14's vision tower with random weights, saved as transformers saves it."""
    import transformers as tf

    torch.manual_seed(0)
    model = tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(**VIT_L14)).eval()
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(PROCESSOR))
    return directory


def run(argv: list[str], env: dict) -> float:
    """Wall time of one `deepfake` command in a fresh process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deepfake", *argv], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def import_heads(tmp: Path, tower: Path, env: dict) -> dict[str, Path]:
    """Run folders of the three heads on the random tower."""
    from deepfake.model.published import RELEASES
    from deepfake.model.published import VIT_L14 as SHAPE

    record = RELEASES["rine"]
    generator = torch.Generator().manual_seed(4)
    four = tmp / "model_4class_trainable.pth"
    torch.save({k: torch.randn(s, generator=generator) * 0.02
                for k, s in record.shapes(record.variants["4class"], SHAPE).items()}, four)
    files = {"ufd": ("ufd", PUBLISHED / "ufd" / "fc_weights.pth"),
             "rine-2class": ("rine", PUBLISHED / "rine" / "model_2class_trainable.pth"), "rine-4class": ("rine", four)}
    runs = {}
    for name, (release, path) in files.items():
        runs[name] = tmp / "runs" / name
        run(["import", release, str(path), "--out", str(runs[name]), "--tower", str(tower), "--quiet"], env)
    return runs


def scores(path: Path, column: str) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["path"]: float(row[column]) for row in csv.DictReader(handle)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_test", type=int, default=3, help="images per generator, category and class (2 x 2 x 2 x N)")
    p.add_argument("--precision", default=None, help="passed to every command (default: each detector's own)")
    p.add_argument("--device", default=None)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--shared_cache", action="store_true",
                   help="also time the three tests sharing one cache (rine-4class then reuses rine-2class's features)")
    args = p.parse_args(argv)
    flags = ["--num_workers", "0", "--batch_size", str(args.batch_size), "--quiet"]
    flags += ["--precision", args.precision] if args.precision else []
    flags += ["--device", args.device] if args.device else []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        env = {**os.environ, "DEEPFAKE_CACHE": str(tmp / "memo")}
        tower = save_random_tower(tmp / "clip-vit-l14")
        runs = import_heads(tmp, tower, env)
        with open(tower / "model.safetensors", "rb") as handle:  # in the page cache for every command alike
            while handle.read(1 << 24):
                pass
        subprocess.run([sys.executable, "-m", "deepfake.cli.synthetic", "--out", str(tmp / "data"), "--n_train", "0",
                        "--n_val", "0", "--n_test", str(args.n_test), "--test_families", "tconv,nearest",
                        "--min_size", "256", "--max_size", "320"], check=True, stdout=subprocess.DEVNULL)
        test_set = ["--dataset_dir", str(tmp / "data" / "test")]
        n_images = len(list((tmp / "data" / "test").rglob("*.*g")))

        def test(detector: str, cache: Path) -> float:
            return run(["test", "--checkpoint", str(runs[detector]), *test_set, "--output_dir",
                        str(tmp / f"test-{cache.name}-{detector}"), "--cache_dir", str(cache), "--no_plots", *flags], env)

        alone = {d: test(d, tmp / f"cache-{d}") for d in DETECTORS}
        shared = {d: test(d, tmp / "cache-shared") for d in DETECTORS} if args.shared_cache else {}
        compared = run(["compare", *(str(runs[d]) for d in DETECTORS), *test_set, "--output_dir", str(tmp / "compare"),
                        "--cache_dir", str(tmp / "cache-compare"), *flags], env)
        results = json.loads((tmp / "compare" / "results.json").read_text())
        equal = all(scores(tmp / f"test-cache-{d}-{d}" / "scores.csv", "probability")
                    == scores(tmp / "compare" / "scores.csv", d) for d in DETECTORS)
    print(f"{n_images} images, CLIP ViT-L/14 (random weights), {torch.get_num_threads()} threads, "
          f"precision {args.precision or 'each detector own'}; compare's passes: "
          + "; ".join(", ".join(p["detectors"]) + f" ({p['precision']})" for p in results["passes"]))
    for label, times in (("tests, one cache each", alone), ("tests, one shared cache", shared)):
        if not times:
            continue
        print(f"{label:26s} " + "  ".join(f"{d} {t:6.1f}s" for d, t in times.items()) + f"  total {sum(times.values()):6.1f}s")
    print(f"{'compare':26s} {compared:6.1f}s")
    print(f"scores equal in compare and in each test: {equal}")
    print(f"ratio compare / tests (one cache each):   {compared / sum(alone.values()):.2f}")
    if shared:
        print(f"ratio compare / tests (one shared cache): {compared / sum(shared.values()):.2f}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
