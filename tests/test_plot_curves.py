"""The evaluation plots draw scikit-learn's curves without importing it (a second of start-up, ~75 MB)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve
from sklearn.metrics import roc_curve as sk_roc_curve

from deepfake.evaluation.metrics import pr_curve, roc_curve

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("seed", range(3))
def test_roc_and_pr_curves_are_scikit_learns_points_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels, scores = rng.integers(0, 2, 300), np.round(rng.random(300), 2)  # many tied scores
    fpr, tpr = roc_curve(labels, scores)
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)
    precision, recall = pr_curve(labels, scores)
    sk_precision, sk_recall, _ = precision_recall_curve(labels, scores)
    # scikit-learn lists them from the lowest threshold up and ends at (precision 1, recall 0).
    assert np.allclose(precision[::-1], sk_precision[:-1]) and np.allclose(recall[::-1], sk_recall[:-1])


def test_writing_the_plots_imports_no_scikit_learn(tmp_path):
    code = f"""
import sys
from types import SimpleNamespace
import numpy as np
sys.path.insert(0, {str(ROOT)!r})
from deepfake.evaluation.plots import write_plots
samples = [SimpleNamespace(label=i % 2, generator="g") for i in range(20)]
level = {{"label": "clean", "probabilities": np.linspace(0, 1, 20), "rows": [], "perturbation": {{}}}}
write_plots([level], samples, __import__("pathlib").Path({str(tmp_path)!r}), threshold=0.5)
print("sklearn" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert {p.name for p in tmp_path.iterdir()} == {"roc.png", "pr.png", "histograms.png"}
