"""The installed package and its command line: install, --help, thresholds, outputs, logs, plots, imports."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake import DeepfakeClassifier
from deepfake.__main__ import COMMANDS
from deepfake.__main__ import main as deepfake_main
from deepfake.deepfake_classifier import resolve_threshold
from deepfake.model.scoring import Prediction

from .conftest import run_test_script

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "deepfake"


@pytest.fixture(scope="module")
def images(trained_run) -> list[str]:
    return sorted(str(p) for p in (trained_run["data"] / "test").rglob("*.png"))[:3]


def test_pip_install_gives_a_working_command_and_import_outside_the_repo(trained_run, images, tmp_path):
    # A copy of what a source distribution holds, so the build writes nothing into the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "deepfake", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The new venv sees this environment's packages (torch & co.) but not the checkout; offline: --no-index.
    Path(site, "parent-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--no-build-isolation", "-q", str(src)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    assert not (Path(site) / "tests").exists()
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = venv / "bin" / "deepfake"
    out = subprocess.run([str(command), "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(name in out.stdout for name in COMMANDS)
    out = subprocess.run([str(command), "predict", images[0], "--checkpoint", str(trained_run["run"]),
                          "--num_workers", "0", "--quiet"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "scored 1, skipped 0" in out.stdout
    code = ("import deepfake; from deepfake import DeepfakeClassifier; print(deepfake.__file__)\n"
            "from deepfake.data.benchmarks import available_presets, load_benchmark\n"
            "print(' '.join(p for p in available_presets() if load_benchmark(p).domains))")
    out = subprocess.run([str(python), "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    installed_file, presets = out.stdout.strip().splitlines()
    assert installed_file.startswith(site)
    # The benchmark presets are data files: the installed package must carry every one of them.
    from deepfake.data.benchmarks import available_presets

    assert presets.split() == available_presets() and "ufd" in presets.split()


def test_help_lists_every_subcommand(capsys):
    assert deepfake_main(["--help"]) == 0
    printed = capsys.readouterr().out
    for name in ("train", "test", "predict", "demo", "serve", "push", *COMMANDS):
        assert f"  {name} " in printed
    assert deepfake_main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_predict_takes_one_path_or_image_as_well_as_a_list(trained_run, images):
    clf = DeepfakeClassifier.from_pretrained(trained_run["run"])
    listed = clf.predict(images)
    one = clf.predict(images[0])
    assert isinstance(one, Prediction) and one.path == images[0]
    assert one.probability == listed[0].probability
    assert clf.predict(Path(images[0])).probability == listed[0].probability
    assert clf.predict(Image.open(images[0])).probability == listed[0].probability
    assert clf.predict_proba(images[1]) == listed[1].probability
    assert len(clf.predict(images[:2])) == 2


def test_threshold_spec_resolves_val_calibrated_and_numbers():
    config = {"threshold": 0.5, "val_threshold": 0.31, "calibration": {"threshold": 0.42, "target_fpr": 0.05}}
    assert resolve_threshold(None, config) == 0.31  # the default: the validation threshold
    assert resolve_threshold("val", config) == 0.31
    assert resolve_threshold("calibrated", config) == 0.42
    assert resolve_threshold(0.7, config) == 0.7
    assert resolve_threshold(None, {"threshold": 0.5}) == 0.5  # no validation threshold stored
    with pytest.raises(ValueError, match="no calibrated threshold"):
        resolve_threshold("calibrated", {"threshold": 0.5, "val_threshold": 0.3})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        resolve_threshold(1.5, config)


def test_predict_command_thresholds(trained_run, images, capsys, caplog):
    run = str(trained_run["run"])
    val = json.loads((trained_run["run"] / "best.json").read_text())["val_threshold"]
    base = ["predict", images[0], "--checkpoint", run, "--quiet", "--num_workers", "0"]
    assert deepfake_main(base) == 0
    assert f"threshold {val:g}" in capsys.readouterr().out
    assert deepfake_main([*base, "--threshold", "val"]) == 0
    assert f"threshold {val:g}" in capsys.readouterr().out
    assert deepfake_main([*base, "--threshold", "0.25"]) == 0
    assert "threshold 0.25" in capsys.readouterr().out
    assert deepfake_main([*base, "--threshold", "calibrated"]) == 2  # no operating point calibrated yet
    assert "the checkpoint has no calibrated threshold" in caplog.text


def test_calibrated_threshold_comes_from_the_checkpoints_calibration(trained_run, images, tmp_path, capsys):
    from deepfake.model.calibration import calibration_record, write_calibration

    run = tmp_path / "run"
    shutil.copytree(trained_run["run"], run)
    record = calibration_record("reals/", 0.123, 0.05, np.linspace(0, 1, 40))
    write_calibration(tmp_path / "eval", str(run / "best.safetensors"), record, {})
    base = ["predict", images[0], "--checkpoint", str(run), "--quiet", "--num_workers", "0"]
    assert deepfake_main([*base, "--threshold", "calibrated"]) == 0
    assert "threshold 0.123" in capsys.readouterr().out
    clf = DeepfakeClassifier.from_pretrained(run)
    assert clf.decision_threshold("calibrated") == 0.123
    saved = json.loads((clf.save_pretrained(tmp_path / "head") / "config.json").read_text())
    assert saved["calibration"]["threshold"] == 0.123  # the operating point travels with a shared head
    with pytest.raises(SystemExit):
        deepfake_main([*base, "--threshold", "high"])


def test_output_format_follows_the_extension_or_is_refused(trained_run, images, tmp_path, caplog):
    base = ["predict", *images, str(tmp_path / "missing.png"), "--checkpoint", str(trained_run["run"]), "--quiet",
            "--num_workers", "0"]
    assert deepfake_main([*base, "--output", str(tmp_path / "s.json")]) == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    assert [p["path"] for p in doc["predictions"]] == [*images, str(tmp_path / "missing.png")]
    assert doc["threshold"] == json.loads((trained_run["run"] / "best.json").read_text())["val_threshold"]
    assert deepfake_main([*base, "--output", str(tmp_path / "s.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [p["probability"] for p in lines] == [p["probability"] for p in doc["predictions"]]
    assert deepfake_main([*base, "--output", str(tmp_path / "s.CSV")]) == 0
    with open(tmp_path / "s.CSV", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["probability"]) for r in rows[:3]] == [p["probability"] for p in doc["predictions"][:3]]
    assert deepfake_main([*base, "--output", str(tmp_path / "s.txt")]) == 2
    assert "unknown output format '.txt'" in caplog.text
    assert not (tmp_path / "s.txt").exists()


def test_log_lines_state_true_counts_and_quiet_silences_them(trained_run, tmp_path, caplog, capsys):
    (tmp_path / "a.jpg").write_text("not an image")
    (tmp_path / "b.png").write_bytes(b"")
    root = logging.getLogger()
    level = root.level
    try:
        with caplog.at_level(logging.INFO):
            assert deepfake_main(["predict", str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), "--checkpoint",
                                  str(trained_run["run"]), "--num_workers", "0"]) == 1
            messages = [r.getMessage() for r in caplog.records]
            assert not any("through the tower" in m for m in messages)
            assert "scoring: none of 2 images could be read" in messages
            caplog.clear()
            assert deepfake_main(["predict", str(tmp_path / "a.jpg"), "--checkpoint", str(trained_run["run"]),
                                  "--num_workers", "0", "--quiet"]) == 1
            assert not [r for r in caplog.records if r.levelno < logging.WARNING]
    finally:
        root.setLevel(level)
    # Not a terminal: no progress bar in stderr, whatever --quiet says.
    assert "%|" not in capsys.readouterr().err


def test_quiet_leaves_only_warnings_in_the_train_and_test_scripts(trained_run, tmp_path, caplog):
    import train_ClassifierHead

    from .conftest import train_args

    root = logging.getLogger()
    level = root.level
    try:
        for label, run in (
                ("train", lambda: train_ClassifierHead.main(train_args(
                    trained_run["data"], tmp_path / "train", trained_run["cache"], "--num_epochs", "1"))),
                ("test", lambda: run_test_script(trained_run, tmp_path / "test"))):
            with caplog.at_level(logging.INFO):
                caplog.clear()
                assert run() == 0, label  # both argument lists carry --quiet
                assert not [r.getMessage() for r in caplog.records if r.levelno < logging.WARNING], label
    finally:
        root.setLevel(level)


def test_plots_carry_auc_ap_and_the_threshold(trained_run, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = {}
    original = Figure.savefig

    def keep(fig, target, *args, **kwargs):
        saved[len(saved)] = fig
        return original(fig, target, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    assert run_test_script(trained_run, tmp_path / "eval", "--threshold", "0.3") == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    rows = {r["domain"]: r for r in results["levels"][0]["rows"] if not r["category"]}
    legends = {i: [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
               + [t.get_text() for lg in fig.legends for t in lg.get_texts()] for i, fig in saved.items()}
    def titled(prefix: str) -> int:
        return next(i for i, fig in saved.items()
                    if any(ax.get_title().startswith(prefix) for ax in fig.axes)
                    or (fig._suptitle is not None and fig._suptitle.get_text().startswith(prefix)))

    roc, pr, hist = legends[titled("ROC")], legends[titled("Precision-recall")], legends[titled("P(fake) per domain")]
    for name, row in rows.items():
        assert f"{name} (AUC {row['auc']:.3f})" in roc
        assert f"{name} (AP {row['ap']:.3f})" in pr
    assert "threshold 0.3" in hist
    hist_fig = saved[titled("P(fake) per domain")]
    threshold_lines = [line for ax in hist_fig.axes for line in ax.get_lines() if list(line.get_xdata()) == [0.3, 0.3]]
    assert len(threshold_lines) == len(rows)


def test_in_memory_strip_image_is_skipped_not_resized(trained_run):
    clf = DeepfakeClassifier.from_pretrained(trained_run["run"])
    result = clf.predict(Image.new("RGB", (3_000_000, 1)))
    assert result.probability is None and "extreme aspect ratio" in result.skipped
    assert np.isnan(clf.predict_proba(Image.new("RGB", (3_000_000, 1))))


def _runnable_cli_modules() -> list[str]:
    """Every command module run as ``python -m deepfake.cli.NAME`` (those with a ``__main__`` guard)."""
    folder = PACKAGE / "cli"
    return sorted(f"deepfake.cli.{p.stem}" for p in folder.glob("*.py")
                  if 'if __name__ == "__main__":' in p.read_text() and "def build_parser" in p.read_text())


@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")
@pytest.mark.parametrize("module", _runnable_cli_modules())
def test_every_command_module_run_with_python_dash_m_prints_its_help(module, monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
