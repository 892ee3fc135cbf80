"""The command-line contract of every script in scripts/, table-driven.

- Valid flag combinations (the seed workflow of the README and the documented
  options) succeed on tiny data: 3 LibriSpeech speakers x 3 utterances plus the
  extra speaker PhilippeRemy, a width-0.125 model trained for one step per stage.
- Invalid ones (unknown speaker, missing corpus, mutually exclusive flags, bad
  --shard, wrong types, --freeze_embedding_weights without --loss_on_softmax, ...)
  exit with code 2 and exactly one `error: ...` line on stderr, no traceback.
- `--help` lists every flag with its default.

Commands run in-process (`main(argv)`) to pay TensorFlow's start-up once; one
subprocess per script checks the scripts/*.py wrappers themselves.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_LIBRISPEECH_FILES

REPO = Path(__file__).resolve().parents[1]
# Every command the repository ships (scripts/*.py), not a list kept by hand.
SCRIPTS = tuple(sorted(p.stem for p in (REPO / "scripts").glob("*.py")))
# Commands whose valid/invalid combinations are tested elsewhere, not in the tables below.
TABLES_ELSEWHERE = {"identify": "tests/test_identify.py", "download_corpus": "tests/test_scale_flow.py",
                    "serve": "tests/test_service_cli.py", "diarize": "tests/test_diarization.py"}
TRAIN = "--epochs 1 --steps_per_epoch 1 --batch_size 4 --width 0.125 --frames 32"
PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's bar (stderr, by design): not an error line


def main_of(script: str):
    return importlib.import_module(f"deep_speaker.commands.{script}").main


def call(script: str, argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main_of(script)(argv)
    except SystemExit as exit_:  # argparse: --help, usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the workspace: tiny corpus, cache, the seed's three training stages --------------------------

@pytest.fixture(scope="module")
def ws(tmp_path_factory, shared_data) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    corpus, samples = root / "LibriSpeech", root / "samples"
    source = shared_data / "librispeech" / "train-clean-100"
    for files in TINY_LIBRISPEECH_FILES.values():
        for relative in files:
            (corpus / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, corpus / relative)
    shutil.copytree(shared_data / "samples", samples)
    cache, ckpt = root / "cache", root / "checkpoints"
    paths = dict(corpus=str(corpus), samples=str(samples), cache=str(cache), ckpt=str(ckpt))
    seed_workflow = [  # README: the seed's commands, at tiny settings
        ("preprocess", "--regenerate_full_cache --audio_dir {corpus} --cache_output_dir {cache}"),
        ("preprocess", "--update_cache --audio_dir {samples} --cache_output_dir {cache}"),
        ("preprocess", "--generate_training_inputs --cache_output_dir {cache}"),
        ("train_cli", "--loss_on_softmax " + TRAIN + " --cache_output_dir {cache} --checkpoint_dir {ckpt}"),
        ("train_cli", "--loss_on_embeddings --normalize_embeddings --spec_augment --negatives random " + TRAIN
         + " --cache_output_dir {cache} --checkpoint_dir {ckpt}"),
        ("train_cli", "--loss_on_softmax --freeze_embedding_weights --normalize_embeddings --head amsoftmax "
         "--lr_schedule cosine " + TRAIN + " --cache_output_dir {cache} --checkpoint_dir {ckpt}"),
    ]
    for script, args in seed_workflow:
        assert main_of(script)(shlex.split(args.format(**paths))) == 0, args
    wavs = sorted(samples.rglob("*.wav"))
    trials = root / "trials.txt"
    trials.write_text(f"1 {wavs[0].name} {wavs[1].name}\n0 {wavs[0].name} {wavs[2].name}\n")
    bad_trials = root / "bad_trials.txt"
    bad_trials.write_text("maybe a.wav b.wav\n")
    vctk_root = root / "data"
    for folder in ("VCTK-Corpus", "VCTK-Corpus-0.92"):  # already downloaded: no network needed
        (vctk_root / folder).mkdir(parents=True)
        (vctk_root / folder / ".complete").write_text(json.dumps({"file_count": 3}))
    broken = root / "broken"  # a data root whose demo corpus holds no usable audio
    for relative in ("demo/VCTK-Corpus/wav48/p001/p001_001.wav", "demo/samples/Ann/Ann_001.wav"):
        (broken / relative).parent.mkdir(parents=True)
        (broken / relative).write_text("not audio")
    return dict(paths, wav1=str(wavs[0]), wav2=str(wavs[1]), wav_dir=str(wavs[0].parent), trials=str(trials),
                bad_trials=str(bad_trials), model=str(ckpt / "triplet" / "best.keras"), vctk_root=str(vctk_root),
                broken=str(broken))


@dataclass
class Case:
    script: str
    args: str  # {placeholders}: the workspace, plus {tmp} (this test's folder) and {copy} (a private cache copy)
    out: str = ""  # regex the stdout must match (valid cases)
    error: str = ""  # regex of the one stderr line (invalid cases)

    @property
    def id(self) -> str:
        return f"{self.script} {self.args}"[:90]


VALID = [
    # preprocess: the seed's commands and the documented options
    Case("preprocess", "--regenerate_full_cache --multi_threading --workers 2 --audio_dir {corpus} "
                       "--cache_output_dir {tmp}/c", r"audio cache: 9 files cached"),
    Case("preprocess", "--regenerate_full_cache --generate_training_inputs --trim energy --speed_perturb 0.9,1.1 "
                       "--unseen_speakers 27 --audio_dir {corpus} --cache_output_dir {tmp}/c --verbose",
         r"training inputs: 6 speakers written.*1 left out as unseen \(27\)"),  # 2 x 3 speeds
    Case("preprocess", "--regenerate_full_cache --shard 0/2 --mic 2 --lock_timeout 10 --audio_dir {corpus} "
                       "--cache_output_dir {tmp}/c", r"audio cache: \d files cached"),
    Case("preprocess", "--update_cache --audio_dir {samples} --cache_output_dir {copy}",
         r"0 files cached, 4 skipped"),
    Case("preprocess", "--generate_training_inputs --cache_output_dir {copy}", r"0 speakers written, 4 up to date"),
    # train_cli: a finished stage is not retrained
    Case("train_cli", "--loss_on_softmax " + TRAIN + " --cache_output_dir {cache} --checkpoint_dir {ckpt}",
         r"softmax: already trained for 1 epochs"),
    Case("train_cli", "--loss_on_embeddings --normalize_embeddings " + TRAIN
         + " --cache_output_dir {cache} --checkpoint_dir {ckpt}", r"triplet: already trained"),
    # train_cli --config: a checkpoint's own config.json gives the settings it trained with
    Case("train_cli", "--loss_on_softmax --config {ckpt}/softmax/config.json --cache_output_dir {cache} "
                      "--checkpoint_dir {ckpt}", r"softmax: already trained for 1 epochs"),
    # comp_cos
    Case("comp_cos", "--unseen_speakers 19,26 --cache_output_dir {cache} --checkpoint_dir {ckpt}",
         r"SAN \(19 vs 26\)"),
    Case("comp_cos", "--unseen_speakers 19,19 --cache_output_dir {cache} --checkpoint_dir {ckpt}",
         r"SAP \(19 vs 19\)"),
    Case("comp_cos", "--unseen_speakers PhilippeRemy,19 --extra_speakers --cache_output_dir {cache} "
                     "--checkpoint_dir {ckpt}", r"SAN \(PhilippeRemy vs 19\)"),
    Case("comp_cos", "--unseen_speakers 26,27 --json --max_utterances 2 --seed 3 --verbose --cache_output_dir {cache} "
                     "--checkpoint {model}", r'^\{"kind": "SAN".*"utterances": \[2, 2\]'),
    Case("comp_cos", "--files {wav1} {wav2} --threshold 0.5 --checkpoint {model}",
         r"decision at cosine threshold 0.5000 \(cosine score -?[0-9.]+\): (same speaker|different speakers)"),
    # get_emb
    Case("get_emb", "--get_embeddings 19 --cache_output_dir {cache} --checkpoint_dir {ckpt}", r"\[.*\]"),
    Case("get_emb", "--get_embeddings 26 --max_utterances 2 --output {tmp}/e.json --cache_output_dir {cache} "
                    "--checkpoint_dir {ckpt}", r"embedding of 26 \(512-d\) written to"),
    Case("get_emb", "--get_embeddings {wav1} {wav2} --output {tmp}/e.npy --checkpoint {model}",
         r"2 embeddings \(512-d\) written to"),
    Case("get_emb", "--get_embeddings {wav_dir}/*.wav --output {tmp}/e.csv --checkpoint_dir {ckpt} --verbose",
         r"4 embeddings \(512-d\) written to"),
    # evaluate
    Case("evaluate", "--audio_dir {corpus} --output_dir {tmp}/eval --checkpoint_dir {ckpt}",
         r"EER .* 9 files \(0 skipped\)"),
    Case("evaluate", "--trials {trials} --audio_root {wav_dir} --output_dir {tmp}/eval --plot_embeddings "
                     "--checkpoint {model} --verbose", r"1 target / 1 non-target trials"),
    # export_model (the SavedModel export is tested in test_export.py)
    Case("export_model", "--output_dir {tmp}/export --no_saved_model --checkpoint_dir {ckpt} --verbose",
         r"exported: .*embedding\.keras"),
    # download_vctk: a complete corpus is never fetched again
    Case("download_vctk", "--data_root {vctk_root} --no_progress", r"VCTK 0.80 is already in"),
    Case("download_vctk", "--version 0.92 --data_root {vctk_root} --keep_archive --timeout 5 --retries 0 "
                          "--sha256 " + "ab" * 32 + " --url https://example.invalid/v.zip --verbose",
         r"VCTK 0.92 is already in"),
]

INVALID = [
    # preprocess
    Case("preprocess", "--cache_output_dir {tmp}/c", error=r"choose --regenerate_full_cache, --update_cache"),
    Case("preprocess", "--update_cache --num_fbanks 40 --audio_dir {corpus} --cache_output_dir {tmp}/c",
         error=r"--num_fbanks is a training inputs setting: it goes with --generate_training_inputs"),
    Case("preprocess", "--regenerate_full_cache --update_cache --audio_dir {corpus}",
         error=r"argument --update_cache: not allowed with argument --regenerate_full_cache"),
    Case("preprocess", "--regenerate_full_cache --audio_dir {tmp}/missing --cache_output_dir {tmp}/c",
         error=r"missing: audio folder not found"),
    Case("preprocess", "--regenerate_full_cache --cache_output_dir {tmp}/c",  # run from {tmp}: no default corpus
         error=r"deep-speaker-data/VCTK-Corpus: corpus not found; pass --audio_dir"),
    Case("preprocess", "--regenerate_full_cache --generate_training_inputs --cache_output_dir {tmp}/c",
         error=r"corpus not found"),
    Case("preprocess", "--regenerate_full_cache --shard x --audio_dir {corpus} --cache_output_dir {tmp}/c",
         error=r"--shard 'x': expected I/N"),
    Case("preprocess", "--regenerate_full_cache --shard 2/2 --audio_dir {corpus} --cache_output_dir {tmp}/c",
         error=r"need 0 <= I < N"),
    Case("preprocess", "--regenerate_full_cache --shard 1/0 --audio_dir {corpus} --cache_output_dir {tmp}/c",
         error=r"need 0 <= I < N"),
    Case("preprocess", "--update_cache --generate_training_inputs --shard 0/2 --audio_dir {corpus}",
         error=r"--shard splits the audio cache only"),
    Case("preprocess", "--regenerate_full_cache --workers 0 --audio_dir {corpus}",
         error=r"argument --workers: '0' must be at least 1"),
    Case("preprocess", "--regenerate_full_cache --workers two", error=r"argument --workers: 'two' is not an integer"),
    Case("preprocess", "--regenerate_full_cache --mic 3", error=r"argument --mic: invalid choice: '?3'?"),
    Case("preprocess", "--regenerate_full_cache --trim loud", error=r"argument --trim: invalid choice"),
    Case("preprocess", "--generate_training_inputs --speed_perturb 3", error=r"argument --speed_perturb: '3' must lie "
                                                                             r"in 0.5..2"),
    Case("preprocess", "--generate_training_inputs --speed_perturb fast", error=r"'fast' is not a number"),
    Case("preprocess", "--update_cache --lock_timeout -1", error=r"must be a finite number of seconds"),
    Case("preprocess", "--generate_training_inputs --augment_copies 101",
         error=r"argument --augment_copies: '101' must lie in 0..100"),
    Case("preprocess", "--generate_training_inputs --unseen_speakers 19,p999 --cache_output_dir {copy}",
         error=r"unknown --unseen_speakers p999; the cache holds 4 speakers: 19, 26, 27, PhilippeRemy"),
    Case("preprocess", "--generate_training_inputs --cache_output_dir {tmp}/none",
         error=r"no audio cache \(run preprocess.py --regenerate_full_cache first\)"),
    Case("preprocess", "--update_cache --no_such_flag", error=r"unrecognized arguments: --no_such_flag"),
    # train_cli
    Case("train_cli", "--epochs 1", error=r"one of the arguments --loss_on_softmax --loss_on_embeddings is required"),
    Case("train_cli", "--loss_on_softmax --start_from {tmp}/c --cache_output_dir {copy} --checkpoint_dir {tmp}/own",
         error=r"softmax/best.keras: no checkpoint of the previous stage"),
    Case("train_cli", "--loss_on_softmax --loss_on_embeddings",
         error=r"argument --loss_on_embeddings: not allowed with argument --loss_on_softmax"),
    Case("train_cli", "--loss_on_embeddings --freeze_embedding_weights",
         error=r"--freeze_embedding_weights goes with --loss_on_softmax"),
    Case("train_cli", "--loss_on_softmax --epochs 0", error=r"argument --epochs: '0' must lie in 1..1000000"),
    Case("train_cli", "--loss_on_softmax --batch_size 1.5", error=r"argument --batch_size: '1.5' is not an integer"),
    Case("train_cli", "--loss_on_softmax --width -1", error=r"argument --width: '-1' must lie in 0.0001..100"),
    Case("train_cli", "--loss_on_softmax --lr zero", error=r"argument --lr: 'zero' is not a number"),
    Case("train_cli", "--loss_on_softmax --batch_norm_momentum 1",
         error=r"argument --batch_norm_momentum: '1' must lie in 0..0.9999"),
    Case("train_cli", "--loss_on_softmax --config {tmp}/none.json", error=r"none.json: not a readable config JSON"),
    Case("train_cli", "--loss_on_softmax --head arcface", error=r"argument --head: invalid choice"),
    Case("train_cli", "--loss_on_softmax --am_margin_warmup_epochs -1",
         error=r"argument --am_margin_warmup_epochs: '-1' must lie in 0..1000000"),
    Case("train_cli", "--loss_on_softmax --perturbed_speakers merge", error=r"argument --perturbed_speakers: invalid"),
    Case("train_cli", "--loss_on_softmax --strategy tpu", error=r"argument --strategy: invalid choice"),
    Case("train_cli", "--loss_on_softmax --strategy multiworker --cache_output_dir {cache} --checkpoint_dir {tmp}/k",
         error=r"--strategy multiworker needs TF_CONFIG"),
    Case("train_cli", "--loss_on_softmax --cache_output_dir {tmp}/empty --checkpoint_dir {tmp}/k",
         error=r"inputs: no training inputs \(run preprocess.py --generate_training_inputs\)"),
    Case("train_cli", "--loss_on_embeddings --normalize_embeddings --cache_output_dir {cache} "
                      "--checkpoint_dir {tmp}/k", error=r"softmax/best.keras: no checkpoint of the previous stage; "
                                                        r"run train_cli.py --loss_on_softmax first"),
    Case("train_cli", "--loss_on_softmax --freeze_embedding_weights --cache_output_dir {cache} "
                      "--checkpoint_dir {tmp}/k", error=r"triplet/best.keras: no checkpoint of the previous stage"),
    Case("train_cli", "--loss_on_softmax " + TRAIN.replace("0.125", "0.25") + " --cache_output_dir {cache} "
                      "--checkpoint_dir {ckpt}", error=r"checkpoint was trained with other settings \(width=0.125 "
                                                       r"there vs 0.25 now\); use the same flags, or --restart"),
    Case("train_cli", "--loss_on_softmax " + TRAIN + " --pooling statistics --cache_output_dir {cache} "
                      "--checkpoint_dir {ckpt}", error=r"checkpoint was trained with other settings \(pooling="
                                                       r"'average' there vs 'statistics' now\)"),
    Case("train_cli", "--loss_on_softmax --pooling max", error=r"argument --pooling: invalid choice"),
    # comp_cos
    Case("comp_cos", "--unseen_speakers 19,p999 --cache_output_dir {cache} --checkpoint_dir {ckpt}",
         error=r"unknown speaker\(s\) p999; the cache .* holds 4: 19, 26, 27, PhilippeRemy"),
    Case("comp_cos", "--unseen_speakers 19,26 --files {wav1} {wav2}",
         error=r"argument --files: not allowed with argument --unseen_speakers"),
    Case("comp_cos", "--checkpoint_dir {ckpt}", error=r"one of the arguments --unseen_speakers --files is required"),
    Case("comp_cos", "--unseen_speakers 19", error=r"--unseen_speakers takes exactly two ids"),
    Case("comp_cos", "--unseen_speakers 19,26 --threshold 0.5", error=r"--threshold goes with --files"),
    Case("comp_cos", "--files {wav1} {wav2} --threshold high", error=r"argument --threshold: invalid float value"),
    Case("comp_cos", "--unseen_speakers 19,26 --max_utterances 0", error=r"'0' must be at least 1"),
    Case("comp_cos", "--files {tmp}/none.wav {wav2} --checkpoint {model}", error=r"none.wav: file not found"),
    Case("comp_cos", "--unseen_speakers 19,26 --cache_output_dir {tmp}/none --checkpoint {model}",
         error=r"no audio cache"),
    Case("comp_cos", "--unseen_speakers 19,26 --checkpoint {tmp}/none.keras",
         error=r"none.keras: checkpoint not found"),
    # get_emb
    Case("get_emb", "--get_embeddings p999 --cache_output_dir {cache} --checkpoint_dir {ckpt}",
         error=r"unknown speaker\(s\) p999"),
    Case("get_emb", "--get_embeddings 19 26 --cache_output_dir {cache} --checkpoint_dir {ckpt}",
         error=r"give one speaker name, or audio files"),
    Case("get_emb", "--get_embeddings {tmp}/*.flac --checkpoint {model}", error=r"no file matches this pattern"),
    Case("get_emb", "--get_embeddings 19 --output e.txt", error=r"--output must end in .npy, .csv or .json"),
    Case("get_emb", "--output e.npy", error=r"the following arguments are required: --get_embeddings"),
    Case("get_emb", "--get_embeddings 19 --max_utterances many", error=r"'many' is not an integer"),
    # evaluate
    Case("evaluate", "--output_dir {tmp}/e", error=r"one of the arguments --audio_dir --trials --diarization is required"),
    Case("evaluate", "--audio_dir {corpus} --trials {trials} --output_dir {tmp}/e",
         error=r"argument --trials: not allowed with argument --audio_dir"),
    Case("evaluate", "--audio_dir {corpus}", error=r"the following arguments are required: --output_dir"),
    Case("evaluate", "--audio_dir {tmp}/missing --output_dir {tmp}/e --checkpoint {model}",
         error=r"missing: audio folder not found"),
    Case("evaluate", "--trials {bad_trials} --output_dir {tmp}/e --checkpoint {model}",
         error=r"bad_trials.txt:1: expected 'label path1 path2'"),
    # export_model
    Case("export_model", "--checkpoint_dir {ckpt}", error=r"the following arguments are required: --output_dir"),
    Case("export_model", "--output_dir {tmp}/x --checkpoint {tmp}/none.keras",
         error=r"none.keras: checkpoint not found"),
    # download_vctk
    Case("download_vctk", "--version 0.99", error=r"argument --version: invalid choice"),
    Case("download_vctk", "--sha256 abc", error=r"64 hex digits"),
    Case("download_vctk", "--timeout 0", error=r"'0' must be greater than 0"),
    Case("download_vctk", "--retries -1", error=r"'-1' must be at least 0"),
    # pipeline
    Case("pipeline", "--quick --data_root {tmp} --output_dir {tmp}/o", error=r"demo corpus missing"),
    Case("pipeline", "--quick --data_root {broken} --output_dir {tmp}/o", error=r"nothing could be cached"),
    Case("pipeline", "--fast", error=r"unrecognized arguments: --fast"),
]


def expand(case: Case, ws: dict, tmp_path: Path) -> list[str]:
    values = dict(ws, tmp=str(tmp_path))
    if "{copy}" in case.args:
        shutil.copytree(ws["cache"], tmp_path / "copy")
        values["copy"] = str(tmp_path / "copy")
    return shlex.split(case.args.format(**values))


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.id)
def test_valid_combinations_succeed(case, ws, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = call(case.script, expand(case, ws, tmp_path), capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert re.search(case.out, out, re.MULTILINE | re.DOTALL), out


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_combinations_exit_2_with_one_line(case, ws, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default data root (deep-speaker-data/) does not exist here
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code, _, err = call(case.script, expand(case, ws, tmp_path), capsys)
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(case.error, lines[0]), lines[0]


def test_the_tables_cover_every_script():
    """Every script in scripts/ has invalid (and, but for pipeline, valid) cases here, or
    is named in TABLES_ELSEWHERE: a new command without its contract fails this test."""
    tabled = set(SCRIPTS) - set(TABLES_ELSEWHERE)
    assert {c.script for c in INVALID} == tabled
    assert {c.script for c in VALID} == tabled - {"pipeline"}  # pipeline --quick: test_pipeline.py
    assert set(TABLES_ELSEWHERE) <= set(SCRIPTS)


def test_outputs_of_valid_runs_are_usable(ws, tmp_path, capsys, monkeypatch):
    """A spot check beyond the exit code: get_emb's files hold unit rows."""
    monkeypatch.chdir(tmp_path)
    argv = expand(Case("get_emb", "--get_embeddings {wav1} {wav2} --output {tmp}/e.npy --checkpoint {model}"),
                  ws, tmp_path)
    assert call("get_emb", argv, capsys)[0] == 0
    rows = np.load(tmp_path / "e.npy")
    assert rows.shape == (2, 512) and np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-4)


# --- --help ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_every_flag_with_its_default(script, capsys):
    code, out, _ = call(script, ["--help"], capsys)
    assert code == 0 and out.startswith("usage: ")
    parser = importlib.import_module(f"deep_speaker.commands.{script}").build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or "-h" in action.option_strings:
            continue
        for flag in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out), f"{script} --help lacks {flag}"
        shown = formatter._get_help_string(action) or ""
        assert "(default:" in shown or "default" in shown.lower(), f"{script} {action.option_strings}: {shown!r}"


def test_every_script_wrapper_gives_one_line_for_a_bad_flag():
    """The scripts/*.py files themselves (a real process each, run side by side)."""
    running = {name: subprocess.Popen([sys.executable, str(REPO / "scripts" / f"{name}.py"), "--no-such-flag"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
               for name in SCRIPTS}
    help_run = subprocess.run([sys.executable, str(REPO / "scripts" / "pipeline.py"), "--help"],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
    assert help_run.returncode == 0 and "--quick" in help_run.stdout
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (name, err)
        assert out == ""


def test_scoring_commands_exit_without_teardown_but_keep_their_output():
    """comp_cos/get_emb/evaluate end with exit_skipping_teardown (os._exit saves ~1.3 s
    after TensorFlow): what they printed to a pipe and logged must still arrive, with
    their exit code, and the scripts and console entry points must go through it."""
    code = ("import logging, sys; from deep_speaker.commands.common import exit_skipping_teardown, setup_logging; "
            "setup_logging(); print('result on a pipe'); print('to stderr', file=sys.stderr); "
            "logging.getLogger('deep_speaker').info('a log line'); exit_skipping_teardown(3)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe is block-buffered
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env=env)
    assert done.returncode == 3
    assert done.stdout == "result on a pipe\n"
    assert "to stderr" in done.stderr and "a log line" in done.stderr
    for name in ("comp_cos", "get_emb", "evaluate"):
        assert "cli()" in (REPO / "scripts" / f"{name}.py").read_text(), name


def test_installed_scoring_commands_exit_through_the_quick_exit(tmp_path):
    """What `pip install` puts on the PATH, read from the metadata setup.py generates
    (not from setup.py's text): the scoring commands' entry points are their `cli`."""
    import configparser

    subprocess.run([sys.executable, "setup.py", "--quiet", "egg_info", "--egg-base", str(tmp_path)], cwd=REPO,
                   check=True, capture_output=True, timeout=120)
    (entry_points,) = tmp_path.glob("*.egg-info/entry_points.txt")
    metadata = configparser.ConfigParser()
    metadata.read(entry_points)
    console = dict(metadata["console_scripts"])
    for command, name in (("comp-cos", "comp_cos"), ("get-emb", "get_emb"), ("evaluate", "evaluate")):
        module, attribute = console[f"deep-speaker-{command}"].split(":")
        assert (module, attribute) == (f"deep_speaker.commands.{name}", "cli")
        assert importlib.import_module(module).cli.__qualname__.startswith("quick_exit_entry_point")


def test_scoring_entry_point_sets_its_tensorflow_environment_unless_the_user_did():
    """The scoring commands choose TensorFlow's own convolutions (faster for one-off
    lengths) before TensorFlow is imported (their modules must not import it); a value the
    user exported wins."""
    code = ("import os, sys; from deep_speaker.commands.common import quick_exit_entry_point\n"
            "import deep_speaker.commands.comp_cos, deep_speaker.commands.get_emb, deep_speaker.commands.evaluate\n"
            "quick_exit_entry_point(lambda: print(os.environ['TF_ENABLE_ONEDNN_OPTS'], "
            "'tensorflow' in sys.modules) or 0)()")
    for preset, expected in ((None, "0 False"), ("1", "1 False")):
        env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        if preset is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = preset
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                              env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected


def test_a_closed_output_pipe_stops_a_command_quietly():
    """`get_emb.py ... | head -1`: no 'error: Broken pipe' line, no traceback."""
    code = ("import sys; from deep_speaker.commands.common import exit_skipping_teardown, run\n"
            "def body(argv):\n"
            "    for k in range(100000): print('row', k)\n"
            "exit_skipping_teardown(run(body))")
    reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    first = reader.stdout.readline()
    reader.stdout.close()  # what `head -1` does after one line
    err = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 1
    assert first == b"row 0\n" and err == ""
