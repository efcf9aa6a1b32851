"""Typed configs: the parsers' defaults are the configs', and a run needs no command line."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError

import pytest

import train_ClassifierHead
from deepfake import CacheConfig, DataConfig, EvalConfig, RuntimeConfig, ScheduleConfig, TowerConfig, TrainConfig, evaluate, train
from deepfake.cli import compare_heads, test
from deepfake.cli import train as train_cli
from deepfake.config import CompareConfig, flag_defaults, from_flags, to_flags

from .conftest import TOWER, train_args


def parser_defaults(parser) -> dict:
    """``{dest: default}`` of every optional flag (required ones have no default to agree on)."""
    return {a.dest: a.default for a in parser._actions if a.dest != "help" and not a.required}


@pytest.mark.parametrize("parser, config", [
    (train_cli.build_parser(), TrainConfig),
    (test.build_parser(), EvalConfig),
    (compare_heads.build_parser(), CompareConfig),
])
def test_every_parser_default_is_the_config_default_and_every_flag_has_a_field(parser, config):
    defaults = flag_defaults(config)
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == set(defaults), (dests ^ set(defaults))
    assert parser_defaults(parser) == {dest: defaults[dest] for dest in parser_defaults(parser)}


def test_a_parsed_command_line_becomes_the_config_with_the_same_flags():
    args = train_cli.build_parser().parse_args(["--dataset_dir", "d", "--output_dir", "o", "--categories", "car,cat",
                                                "--head", "layers", "--lr_milestones", "3,6", "--align", "size:64"])
    config = from_flags(TrainConfig, vars(args))
    assert config.head.kind == "layers" and config.schedule.lr_milestones == (3, 6)
    assert config.data.align == ("size:64",) and config.data.categories == "car,cat"
    # The flat record a checkpoint keeps is the parsed command line, key for key.
    assert json.loads(json.dumps(to_flags(config))) == json.loads(json.dumps(vars(args)))
    with pytest.raises(FrozenInstanceError):
        config.seed = 1


def test_train_and_evaluate_run_from_python_configs_like_the_scripts(tmp_path, forensynths, capsys):
    cache = CacheConfig(cache_dir=str(tmp_path / "cache"))
    runtime = RuntimeConfig(batch_size=16, num_workers=0, precision="fp32", quiet=True)
    # Paths as pathlib objects: the run records them as the command line would, as strings.
    config = TrainConfig(data=DataConfig(dataset_dir=forensynths), output_dir=tmp_path / "api",
                         tower=TowerConfig(model=TOWER), runtime=runtime, cache=cache,
                         schedule=ScheduleConfig(num_epochs=6, learning_rate=3e-3))
    summary = train(config)
    assert train_ClassifierHead.main(train_args(forensynths, tmp_path / "cli", tmp_path / "cache")) == 0
    cli_summary = json.loads((tmp_path / "cli" / "run.json").read_text())
    # Same data, tower, seed and options: the same history, epoch for epoch.
    assert [round(h["val_loss"], 6) for h in summary["history"]] == \
        [round(h["val_loss"], 6) for h in cli_summary["history"]]
    results = evaluate(EvalConfig(checkpoint=str(tmp_path / "api"), data=DataConfig(dataset_dir=str(forensynths / "test")),
                                  output_dir=str(tmp_path / "eval"), no_plots=True, runtime=runtime, cache=cache))
    assert results["levels"][0]["mean"]["ap"] is not None
    assert (tmp_path / "eval" / "results.json").is_file()
    assert json.loads((tmp_path / "api" / "best.json").read_text())["train_args"]["dataset_dir"] == str(forensynths)


def test_configs_refuse_a_bad_schedule_and_a_run_without_its_folders_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="lr_schedule 'linear'"):
        ScheduleConfig(lr_schedule="linear")
    assert ScheduleConfig(lr_schedule="step", lr_milestones="3,6").lr_milestones == (3, 6)
    with pytest.raises(ValueError, match="lr_milestones"):
        ScheduleConfig(lr_milestones="three")
    with pytest.raises(ValueError, match="data.dataset_dir is required"):
        train(TrainConfig(output_dir=str(tmp_path / "run")))
    with pytest.raises(ValueError, match="output_dir is required"):
        train(TrainConfig(data=DataConfig(dataset_dir=str(tmp_path))))
    assert not (tmp_path / "run").exists()
