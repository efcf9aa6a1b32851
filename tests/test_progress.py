"""Never silent: where stderr is a file, extraction, epochs and scoring log progress lines at a steady interval."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading

from deepfake.utils import progress

from .conftest import make_forensynths

LINE = r"INFO deepfake\.progress: {desc}: \d+/{total} {unit} \(\d+%\), [\d.]+ {unit}/s"


def run_to_file(args: list[str], stderr_path, interval: str = "0.01") -> subprocess.CompletedProcess:
    env = {**os.environ, "DEEPFAKE_PROGRESS_INTERVAL": interval}
    with open(stderr_path, "w") as err:
        return subprocess.run([sys.executable, "-m", "deepfake", *args], stdout=subprocess.PIPE, stderr=err, text=True,
                              env=env, timeout=600)


def test_train_and_predict_log_progress_lines_and_their_thread_budget_when_stderr_is_a_file(tmp_path):
    data = make_forensynths(tmp_path / "data", n_train=8, n_val=2, n_test=2)
    run, cache = tmp_path / "run", tmp_path / "cache"
    train_err = tmp_path / "train.err"
    done = run_to_file(["train", "--dataset_dir", str(data), "--output_dir", str(run), "--model", "spectrum",
                        "--cache_dir", str(cache), "--num_epochs", "40", "--num_workers", "0"], train_err)
    text = train_err.read_text()
    assert done.returncode == 0, text
    assert re.search(LINE.format(desc=r"train features \(view 0\)", total=64, unit="img"), text), text
    assert re.search(LINE.format(desc="epochs", total=40, unit="epoch") + r"(, about .* left)?", text), text
    assert "\r" not in text  # no progress bar in a file
    assert "epoch  40" in done.stdout  # results stay on stdout

    predict_err = tmp_path / "predict.err"
    done = run_to_file(["predict", str(data / "test"), "--checkpoint", str(run), "--num_workers", "0", "--threads", "1"],
                       predict_err)
    text = predict_err.read_text()
    assert done.returncode == 0, text
    assert "threads: 1 thread(s) + 0 decode worker(s)" in text and "(as asked)" in text  # --threads reached the budget
    assert re.search(LINE.format(desc="scoring", total=16, unit="img"), text), text
    assert "\r" not in text


def test_quiet_commands_log_no_progress(tmp_path):
    data = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=1)
    err = tmp_path / "train.err"
    done = run_to_file(["train", "--dataset_dir", str(data), "--output_dir", str(tmp_path / "run"), "--model", "spectrum",
                        "--cache_dir", str(tmp_path / "cache"), "--num_epochs", "20", "--quiet"], err)
    assert done.returncode == 0, err.read_text()
    assert "deepfake.progress" not in err.read_text()


def test_a_line_says_done_total_rate_and_time_left_and_comes_while_the_loop_waits(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    lines: list[str] = []
    logged = threading.Event()

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
            logged.set()

    handler = Collect(logging.INFO)
    progress.log.addHandler(handler)
    monkeypatch.setattr(progress.log, "level", logging.INFO)
    try:
        bar = progress.Progress(200, "features", "img", interval=0.01)
        bar.update(50)
        assert logged.wait(60)  # the timer logs although the loop is stuck in one long step
        bar.close()
    finally:
        progress.log.removeHandler(handler)
    assert re.fullmatch(r"features: 50/200 img \(25%\), [\d.]+ img/s, about .+ left", lines[0]), lines[0]


def test_the_interval_is_thirty_seconds_unless_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv("DEEPFAKE_PROGRESS_INTERVAL", raising=False)
    assert progress.log_interval() == progress.LOG_INTERVAL == 30.0
    monkeypatch.setenv("DEEPFAKE_PROGRESS_INTERVAL", "5")
    assert progress.log_interval() == 5.0
    monkeypatch.setenv("DEEPFAKE_PROGRESS_INTERVAL", "soon")
    assert progress.log_interval() == 30.0
