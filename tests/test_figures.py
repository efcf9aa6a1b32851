"""The README's figure command as written, the architecture of the run evaluated, and readable histograms."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest

from deepfake.cli.figures import pipeline_boxes, vit_config

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_RESULTS = ROOT / "tests" / "data" / "golden" / "demo_results.json"  # the demo's results (spectral tower)
README_COMMAND = "python -m deepfake.cli.figures --results runs/demo/eval/results.json"


def test_readme_figure_command_runs_as_written_and_writes_into_the_folder_it_runs_in(tmp_path):
    assert README_COMMAND in (ROOT / "README.md").read_text()
    (tmp_path / "runs" / "demo" / "eval").mkdir(parents=True)
    shutil.copy(GOLDEN_RESULTS, tmp_path / "runs" / "demo" / "eval" / "results.json")
    argv = [sys.executable if word == "python" else word for word in README_COMMAND.split()]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "images").iterdir()} == {"architecture.png", "Fig1.png"}


def test_architecture_of_a_spectral_run_shows_the_spectral_tower_not_a_vit():
    results = json.loads(GOLDEN_RESULTS.read_text())
    boxes = dict((title, body) for title, body, _ in pipeline_boxes(results, vit_config(results["tower"])))
    assert "tiles of 256 px" in boxes["preprocess"] and "spectrum" in boxes["frozen tower"]
    assert "ViT" not in boxes["frozen tower"] and "crop" not in boxes["preprocess"]
    assert "Linear(128,256)" in boxes["MLP head"]


def test_architecture_of_a_languagebind_run_reads_the_vit_sizes_from_its_config():
    results = {"tower": {"model": "LanguageBind/LanguageBind_Image", "family": "languagebind", "feature_dim": 768},
               "preprocess": {"mode": "resize", "size": 224, "mean": [0.48145466, 0.4578275, 0.40821073],
                              "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic"},
               "head": {"kind": "mlp", "in_dim": 768, "hidden": 256, "dropout": 0.1, "num_classes": 2}}
    boxes = dict((title, body) for title, body, _ in pipeline_boxes(results, vit_config(results["tower"])))
    assert "24 blocks x 16 heads" in boxes["frozen tower"] and "hidden 1024" in boxes["frozen tower"]
    assert "center crop 224" in boxes["preprocess"] and "CLIP mean/std" in boxes["preprocess"]


@pytest.mark.parametrize("domains", [3, 6, 9])
def test_histograms_label_both_axes_and_leave_no_empty_band_under_the_title(domains):
    import matplotlib.pyplot as plt

    from deepfake.evaluation.plots import histogram_figure

    samples = [SimpleNamespace(label=(i // domains) % 2, generator=f"g{i % domains}") for i in range(40 * domains)]
    level = {"label": "clean", "probabilities": np.random.default_rng(0).random(len(samples))}
    fig = histogram_figure(plt, level, samples, threshold=0.5)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == domains
    assert all(ax.get_xlabel() == "P(fake)" and ax.get_ylabel() == "images" for ax in panels)
    title_bottom = fig._suptitle.get_window_extent(renderer).y0
    panels_top = max(ax.get_tightbbox(renderer).y1 for ax in panels)
    assert 0 <= (title_bottom - panels_top) / fig.dpi < 0.3  # inches between the title and the panels' titles
    plt.close(fig)
