"""One command, no downloads: build the synthetic benchmark, train on one generator, test on all.

    deepfake demo --out runs/demo            (or: python -m deepfake demo ...)

Uses the spectral baseline tower unless ``--model`` names a tower that can be loaded
(for example a LanguageBind checkpoint already in the local cache). Prints the
per-generator table; results, plots and checkpoints land under ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from deepfake.cli.args import CliParser, add_standardize_arg, add_threads_arg, model_name, setup_logging
from deepfake.config import (
    CacheConfig,
    DataConfig,
    EvalConfig,
    HeadConfig,
    RuntimeConfig,
    ScheduleConfig,
    TowerConfig,
    TrainConfig,
)
from deepfake.data.synthetic import FAMILIES, generation_jobs, write_folder
from deepfake.evaluation.run import evaluate
from deepfake.training.run import train
from deepfake.utils.fileio import display_path, refuse_overwrite
from deepfake.utils.runtime import keep_freed_memory
from deepfake.utils.threads import budget_threads, usable_cpus

log = logging.getLogger(__name__)

# The demo keeps its best head and the last epoch's (resume), not one checkpoint per epoch.
DEMO_KEEP_LAST = 1
# The spectral baseline's gray analysis: the synthetic generators leave gray up-sampling traces, and
# on the demo's small images it costs a third of the default's colour analysis, which keeps the demo near half a minute.
DEMO_MODEL = "spectrum-tiles256"


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="deepfake demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="folder for data, checkpoints and results")
    p.add_argument("--model", default=DEMO_MODEL, type=model_name, help="tower (default: the weight-free spectral baseline)")
    p.add_argument("--train_family", default="tconv", choices=FAMILIES, help="the one generator trained on")
    p.add_argument("--num_epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    add_standardize_arg(p)
    add_threads_arg(p)
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out")
    return p


def demo_configs(out: Path, model: str, num_epochs: int, seed: int,
                 standardize: str = HeadConfig.standardize, threads: int | None = None) -> tuple[TrainConfig, EvalConfig]:
    """The demo's training run (lr 1e-3, batch 32) and its evaluation on every generator, sharing one cache."""
    cache = CacheConfig(cache_dir=str(out / "cache"))
    data = out / "data"
    train_config = TrainConfig(
        data=DataConfig(dataset_dir=str(data)), output_dir=str(out / "run"), seed=seed,
        tower=TowerConfig(model=model), runtime=RuntimeConfig(batch_size=32, quiet=True, threads=threads), cache=cache,
        schedule=ScheduleConfig(num_epochs=num_epochs, learning_rate=1e-3, keep_last=DEMO_KEEP_LAST),
        head=HeadConfig(standardize=standardize),
        overwrite=True)
    eval_config = EvalConfig(checkpoint=str(out / "run"), data=DataConfig(dataset_dir=str(data / "test")),
                             output_dir=str(out / "eval"), overwrite=True, runtime=RuntimeConfig(quiet=True, threads=threads),
                             cache=cache)
    return train_config, eval_config


def generate_and_train(data: Path, seed: int, train_family: str, train_config: TrainConfig) -> dict:
    """Write the benchmark (unless ``data`` holds it) and train; the test images are written meanwhile.

    The workers are forked before the tower first runs (a fork after torch's threads have started
    is not safe), and while they write, the thread budget counts them as workers: this process
    analyses the training images on the CPUs they leave (one, where they hold every core), since
    threads on cores the workers hold keep waiting for each other.
    """
    threads, workers = train_config.runtime.threads, train_config.runtime.num_workers
    if (data / "test").is_dir():
        budget_threads(threads, workers)
        return train(train_config)
    jobs = generation_jobs(data, seed=seed, train_family=train_family)
    pool_size = usable_cpus()
    with ProcessPoolExecutor(max_workers=pool_size) as pool:
        written = [(split, pool.submit(write_folder, job)) for split, job in jobs]
        for split, done in written:
            if split != "test":
                done.result()
        budget_threads(threads, workers + pool_size)
        summary = train(train_config)
        for _, done in written:
            done.result()
    log.info("synthetic benchmark written to %s", data)
    budget_threads(threads, workers)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    keep_freed_memory()  # before the workers fork: they make and drop MBs of arrays per image
    out = Path(args.out)
    try:
        refuse_overwrite(out, None, args.overwrite, hint="pass --overwrite to reuse it or choose another --out")
        train_config, eval_config = demo_configs(out, args.model, args.num_epochs, args.seed, args.standardize,
                                                 args.threads)
        summary = generate_and_train(out / "data", args.seed, args.train_family, train_config)
        print(f"trained on '{args.train_family}' fakes: best val AP {summary['best_val_ap']:.4f}")
        evaluate(eval_config)
        head = display_path(Path(train_config.output_dir))
        print(f"head in {head}: score your own images with `deepfake predict PATH --checkpoint {head}`")
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
