"""Shared test helpers: the LanguageBind fixture, synthetic labelled images, a trained run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import test_ClassifierHead
import train_ClassifierHead

FIXTURE = Path(__file__).parent / "languagebind-tiny"
TOWER = str(FIXTURE / "lora0")
CATEGORIES = ("car", "cat", "chair", "horse")


def labelled_image(rng: np.random.Generator, fake: bool, size: int = 64) -> Image.Image:
    """Reals: smooth noise. Fakes: the same with a bright 2-pixel checkerboard, which any tower sees."""
    base = rng.normal(120, 30, (size // 4, size // 4, 3))
    image = np.kron(base, np.ones((4, 4, 1)))
    if fake:
        image[::2, ::2] += 70
        image[1::2, 1::2] -= 40
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def write_images(folder: Path, n: int, fake: bool, rng: np.random.Generator, ext: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        labelled_image(rng, fake).save(folder / f"{i:03d}{ext}")


def make_forensynths(root: Path, n_train: int = 10, n_val: int = 3, n_test: int = 4, seed: int = 0) -> Path:
    """DATASET/{train,val,test}/{category}/{0_real,1_fake} with four categories."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for category in CATEGORIES:
            for label in ("0_real", "1_fake"):
                write_images(root / split / category / label, n, label == "1_fake", rng)
    return root


def train_args(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--dataset_dir", str(data), "--output_dir", str(out), "--model", TOWER, "--cache_dir", str(cache),
            "--num_epochs", "6", "--learning_rate", "3e-3", "--batch_size", "16", "--num_workers", "0",
            "--precision", "fp32", "--quiet", *extra]


@pytest.fixture(scope="session")
def forensynths(tmp_path_factory) -> Path:
    return make_forensynths(tmp_path_factory.mktemp("forensynths"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, forensynths) -> dict:
    """One training run shared by the evaluation and prediction tests."""
    base = tmp_path_factory.mktemp("run")
    out, cache = base / "run", base / "cache"
    assert train_ClassifierHead.main(train_args(forensynths, out, cache)) == 0
    return {"data": forensynths, "run": out, "cache": cache}


def run_test_script(run: dict, out: Path, *extra: str) -> int:
    return test_ClassifierHead.main(["--checkpoint", str(run["run"]), "--dataset_dir", str(run["data"] / "test"),
                                     "--output_dir", str(out), "--cache_dir", str(run["cache"]),
                                     "--num_workers", "0", "--quiet", *extra])


@pytest.fixture(autouse=True)
def _no_user_cache(tmp_path, monkeypatch):
    # Tests never write into the user's feature cache.
    monkeypatch.setenv("DEEPFAKE_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
