"""Settings declared once (issue 17 §2): Config's fields carry their help, bounds and
choices; train_cli.py's and preprocess.py's settings flags are made from them
(deep_speaker.commands.config_flags); train_cli.py --config FILE layers a JSON object
of fields between Config's defaults and the flags given; scripts/train_pretrained.sh
takes its hyperparameters from scripts/recipes/*.json.

No TensorFlow here: parsers and Configs only (the script is run with a `python` that
records its arguments)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from deep_speaker.commands import config_flags, preprocess, train_cli
from deep_speaker.commands.common import CommandError
from deep_speaker.config import _CHOICES, _RANGES, BOOKKEEPING_FIELDS, DATA_FIELDS, Config, ConfigError

REPO = Path(__file__).resolve().parents[1]
FIELDS = {f.name: f for f in dataclasses.fields(Config)}
COMMANDS = {"train_cli": (train_cli, ["--loss_on_softmax"]), "preprocess": (preprocess, ["--update_cache"])}


def derived_actions(module):
    return [a for a in module.build_parser()._actions if hasattr(a, "config_field")]


def parse_train(argv: list[str]) -> Config:
    return train_cli.training_config(train_cli.build_parser().parse_args(argv))


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# --- one declaration per setting ---------------------------------------------------------------------

def test_every_field_has_help_and_every_number_its_bounds():
    for name, f in FIELDS.items():
        assert f.metadata.get("help"), name
        default = getattr(Config(), name)
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            assert name in _RANGES, name
            low, high = _RANGES[name]
            assert low <= default <= high, name
        if name in _CHOICES:
            assert default in _CHOICES[name], name


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_derived_flag_has_configs_default_bounds_and_choices(command):
    module, minimal = COMMANDS[command]
    actions = derived_actions(module)
    assert {a.config_field for a in actions} == set(module.TRAINING_FLAGS if command == "train_cli"
                                                    else module.CONFIG_FLAGS)
    parser = module.build_parser()
    args = parser.parse_args(minimal)
    config = config_flags.config_from_args(args, [a.config_field for a in actions])
    formatter = parser._get_formatter()
    for action in actions:
        name = action.config_field
        default = getattr(Config(), name)
        assert action.dest == name and action.default is None  # None: "not given on the command line"
        assert getattr(config, name) == default, name
        shown = formatter._get_help_string(action)
        if not (command == "preprocess" and name == "trim"):  # its default is the cache's rule: said in words
            assert shown.endswith(f"(default: {config_flags._shown(default)})"), (name, shown)
        assert tuple(action.choices or ()) == _CHOICES.get(name, ()), name


def test_every_current_flag_keeps_its_name():
    """The flags of the seed and of the releases before the derived flags."""
    train_flags = {s for a in train_cli.build_parser()._actions for s in a.option_strings}
    assert {"--epochs", "--steps_per_epoch", "--batch_size", "--lr", "--lr_schedule", "--width", "--frames", "--head",
            "--am_margin_warmup_epochs", "--triplet_margin", "--negatives", "--spec_augment", "--perturbed_speakers",
            "--batch_norm_momentum", "--seed", "--strategy", "--input_pipeline", "--store_shard_mb", "--log_every",
            "--mixed_precision", "--deterministic", "--restart", "--verbose", "--config"} <= train_flags
    preprocess_flags = {s for a in preprocess.build_parser()._actions for s in a.option_strings}
    assert {"--trim", "--speed_perturb", "--augment_copies", "--unseen_speakers", "--mic"} <= preprocess_flags


def test_flags_store_configs_types():
    config = parse_train(["--loss_on_softmax", "--epochs", "3", "--lr", "1e-2", "--width", "1", "--head", "amsoftmax",
                          "--spec_augment", "--am_scale", "16", "--hard_pool_size", "4"])
    assert (config.epochs, config.lr, config.width, config.head, config.spec_augment) == (3, 0.01, 1.0, "amsoftmax",
                                                                                          True)
    assert (config.am_scale, config.hard_pool_size) == (16.0, 4)
    assert isinstance(config.width, float) and isinstance(config.epochs, int)
    args = preprocess.build_parser().parse_args(["--generate_training_inputs", "--speed_perturb", "0.9,1.1",
                                                 "--augment_copies", "2", "--trim", "energy"])
    config = config_flags.config_from_args(args, preprocess.CONFIG_FLAGS)
    assert (config.speed_perturbations, config.augment_copies, config.trim) == ([0.9, 1.1], 2, "energy")


@pytest.mark.parametrize("command, argv, message", [
    ("train_cli", "--batch_norm_momentum 1.5", "argument --batch_norm_momentum: '1.5' must lie in 0..0.9999"),
    ("train_cli", "--lr 0", "argument --lr: '0' must lie in 1e-12..1e+06"),
    ("train_cli", "--epochs 0", "argument --epochs: '0' must lie in 1..1000000"),
    ("train_cli", "--width nan", "argument --width: 'nan' must lie in 0.0001..100"),
    ("train_cli", "--spec_augment_freq_mask 600", "argument --spec_augment_freq_mask: '600' must lie in 0..512"),
    ("train_cli", "--batch_size 1.5", "argument --batch_size: '1.5' is not an integer"),
    ("train_cli", "--negatives some", "argument --negatives: invalid choice"),
    ("preprocess", "--augment_copies 101", "argument --augment_copies: '101' must lie in 0..100"),
    ("preprocess", "--speed_perturb 0.9,3", "argument --speed_perturb: '3' must lie in 0.5..2"),
    ("preprocess", "--speed_perturb 0.9,fast", "argument --speed_perturb: 'fast' is not a number"),
])
def test_a_value_out_of_bounds_is_a_one_line_usage_error(command, argv, message, capsys):
    module, minimal = COMMANDS[command]
    with pytest.raises(SystemExit) as exit_:
        module.main(minimal + shlex.split(argv))
    assert exit_.value.code == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {message}"), line


# --- train_cli.py --config FILE ----------------------------------------------------------------------

def write(path: Path, values: dict) -> str:
    path.write_text(json.dumps(values))
    return str(path)


def test_config_file_sits_between_the_defaults_and_the_flags(tmp_path):
    recipe = write(tmp_path / "r.json", {"epochs": 7, "lr": 0.01, "spec_augment": True, "am_scale": 16,
                                         "eval_frames": 200})
    config = parse_train(["--loss_on_softmax", "--config", recipe, "--epochs", "2", "--no_spec_augment"])
    assert (config.epochs, config.lr, config.spec_augment, config.am_scale, config.eval_frames) == (2, 0.01, False,
                                                                                                    16.0, 200)
    rest = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "lr", "am_scale", "eval_frames")}
    assert rest == {k: v for k, v in Config().to_dict().items() if k in rest}  # everything else: the defaults
    assert parse_train(["--loss_on_softmax", "--config", recipe]).epochs == 7
    # a flag given with the default's value still wins over the file
    assert parse_train(["--loss_on_softmax", "--config", recipe, "--epochs", "20"]).epochs == 20


def test_a_checkpoints_config_json_is_accepted_less_its_data_settings_and_bookkeeping(tmp_path):
    trained = Config().override(width=0.5, epochs=12, head="amsoftmax", am_margin=0.3, embedding_dim=256,
                                sample_rate_hz=16000, num_fbanks=40, trim="energy", speed_perturbations=[0.9, 1.1],
                                augment_copies=2, test_fraction=0.1, speakers=["a", "b"], stage="softmax",
                                strategy="mirrored", mixed_precision=True,
                                earlier_stages=[{"stage": "softmax", "epochs": 3}])
    trained.save(tmp_path / "config.json")
    config = parse_train(["--loss_on_embeddings", "--config", str(tmp_path / "config.json"), "--lr", "1e-4"])
    assert (config.width, config.epochs, config.head, config.am_margin, config.embedding_dim, config.lr) == (
        0.5, 12, "amsoftmax", 0.3, 256, 1e-4)
    for name in DATA_FIELDS + BOOKKEEPING_FIELDS:  # preprocess.py and training decide these, not the file
        assert getattr(config, name) == getattr(Config(), name), name


def test_a_version_1_checkpoint_config_trains_again_as_that_code_did(tmp_path):
    """No config_version: the fields it lacks take the values its code used (batch norm 0.99)."""
    old = {k: v for k, v in Config().to_dict().items() if k not in ("config_version", "batch_norm_momentum")}
    config = parse_train(["--loss_on_softmax", "--config", write(tmp_path / "c.json", {**old, "speakers": ["a"]})])
    assert config.batch_norm_momentum == 0.99
    assert config.config_version == Config().config_version


def test_the_shipped_models_config_reruns_its_triplet_stage():
    config = parse_train(["--loss_on_embeddings", "--config", str(REPO / "deep_speaker/pretrained/config.json")])
    shipped = json.loads((REPO / "deep_speaker/pretrained/config.json").read_text())
    for name in train_cli.TRAINING_FLAGS:
        assert getattr(config, name) == shipped.get(name, getattr(Config(), name)), name


@pytest.mark.parametrize("values, message", [
    ({"sample_rate_hz": 16000}, "config field 'sample_rate_hz' is a data setting: preprocess.py decides it"),
    ({"stage": "softmax"}, "config field 'stage' is recorded by training"),
    ({"widht": 0.5}, "unknown config field 'widht'"),
    ({"epochs": 2.5}, "config field 'epochs' must be int, got 2.5"),
    ({"lr": 0}, "config field 'lr' must lie in 1e-12..1e+06, got 0.0"),
    ([1, 2], "config JSON must be an object"),
])
def test_a_bad_recipe_is_one_line_naming_the_file(values, message, tmp_path, capsys):
    path = write(tmp_path / "recipe.json", values)
    with pytest.raises(ConfigError, match="^" + re.escape(path)):
        config_flags.training_settings_from_file(path)
    assert train_cli.main(["--loss_on_softmax", "--config", path, "--checkpoint_dir", str(tmp_path / "k")]) == 2
    assert one_error_line(capsys).startswith(f"error: {path}: {message}")


def test_config_from_args_checks_the_result():
    args = argparse.Namespace(head=None, epochs=3)
    with pytest.raises(CommandError, match="config field 'head' must be one of softmax, amsoftmax"):
        config_flags.config_from_args(args, ["head", "epochs"], Config(head="arcface"))


# --- scripts/train_pretrained.sh and its recipes -----------------------------------------------------

# What the script passed before its settings moved into scripts/recipes/ (besides paths), plus the
# statistics pooling and per-window CMVN of v6.
SCRIPT_BEFORE = {
    "softmax": "--loss_on_softmax --head amsoftmax --spec_augment --lr_schedule cosine --am_margin_warmup_epochs 10 "
               "--epochs {epochs} --steps_per_epoch 100 --batch_size 64 --lr 0.002 "
               "--width 0.25 --seed 7 --perturbed_speakers classes --batch_norm_momentum 0.99 --pooling statistics "
               "--window_cmvn 0.5",
    "triplet": "--loss_on_embeddings --normalize_embeddings --head amsoftmax --spec_augment "
               "--epochs {epochs} --steps_per_epoch 50 --batch_size 32 --lr 0.0001 "
               "--width 0.25 --seed 7 --perturbed_speakers classes --batch_norm_momentum 0.99 --pooling statistics "
               "--window_cmvn 0.5",
}
EXPECTED = {  # the same, as Config values
    "softmax": dict(head="amsoftmax", spec_augment=True, lr_schedule="cosine", am_margin_warmup_epochs=10, epochs=80,
                    steps_per_epoch=100, batch_size=64, lr=0.002, width=0.25, seed=7, perturbed_speakers="classes",
                    batch_norm_momentum=0.99, pooling="statistics", window_cmvn=0.5),
    "triplet": dict(head="amsoftmax", spec_augment=True, epochs=5, steps_per_epoch=50, batch_size=32, lr=0.0001,
                    width=0.25, seed=7, perturbed_speakers="classes", batch_norm_momentum=0.99, pooling="statistics",
                    window_cmvn=0.5),
}


@pytest.mark.parametrize("stage", ["softmax", "triplet"])
def test_each_recipe_gives_the_config_the_script_gave(stage):
    recipe = REPO / "scripts" / "recipes" / f"pretrained_{stage}.json"
    loss = SCRIPT_BEFORE[stage].split(" --head")[0].split()
    expected = Config().override(**EXPECTED[stage])
    assert parse_train([*loss, "--config", str(recipe)]) == expected
    assert parse_train(shlex.split(SCRIPT_BEFORE[stage].format(epochs=EXPECTED[stage]["epochs"]))) == expected
    assert parse_train([*loss, "--config", str(recipe), "--epochs", "3"]) == expected.override(epochs=3)


def run_script(tmp_path: Path, env: dict) -> list[list[str]]:
    """scripts/train_pretrained.sh with a `python` that records each command line."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    fake.write_text("#!/bin/sh\nexec \"$FAKE_PYTHON\" -c 'import json, sys; "
                    "open(sys.argv[1], \"a\").write(json.dumps(sys.argv[2:]) + \"\\n\")' \"$CALL_LOG\" \"$@\"\n")
    fake.chmod(0o755)
    full_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_PYTHON": sys.executable,
                "CALL_LOG": str(log), "DATA": str(tmp_path / "data"), **env}
    for name in ("SOFTMAX_EPOCHS", "TRIPLET_EPOCHS"):
        if name not in env:
            full_env.pop(name, None)
    subprocess.run(["bash", str(REPO / "scripts" / "train_pretrained.sh"), str(tmp_path / "work")], env=full_env,
                   cwd=tmp_path, check=True, timeout=60, capture_output=True)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    log.unlink()
    return [call[1:] for call in calls if call[0] == "scripts/train_cli.py"]


@pytest.mark.parametrize("env, epochs", [({}, (80, 5)), ({"SOFTMAX_EPOCHS": "3", "TRIPLET_EPOCHS": "2"}, (3, 2))])
def test_train_pretrained_sh_trains_with_the_recipes(env, epochs, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the script's --config paths are relative to the repository
    softmax, triplet = run_script(tmp_path, env)
    # The triplet stage: the read-English speakers' own cache, from the softmax stage of every set.
    assert triplet[triplet.index("--start_from") + 1] == softmax[softmax.index("--checkpoint_dir") + 1]
    assert triplet[triplet.index("--cache_output_dir") + 1].endswith("cache-read")
    for argv, stage, n in ((softmax, "softmax", epochs[0]), (triplet, "triplet", epochs[1])):
        assert f"scripts/recipes/pretrained_{stage}.json" in argv
        assert parse_train(argv) == Config().override(**EXPECTED[stage]).override(epochs=n), stage
