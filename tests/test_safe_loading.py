"""Safe loading: every pickle the project reads goes through the restricted
unpickler, models load with Keras safe_mode, and JSON sidecars are validated.

A planted pickle whose ``__reduce__`` would run a shell command (it would create a
marker file) is put where each command reads: the audio cache (preprocess
--generate_training_inputs, comp_cos --unseen_speakers, get_emb NAME), inputs/
(train_cli, and stage 2 itself) and full_inputs.pkl. The command reports the file
as refused with its path and reason, then goes on, or stops with one clear line,
and the marker never appears. (evaluate reads audio files, not the cache.)
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_LIBRISPEECH_FILES
from deep_speaker.audio_cache import AUDIO_CACHE_DIR
from deep_speaker.commands import comp_cos, get_emb, preprocess, train_cli
from deep_speaker.config import Config
from deep_speaker.io_utils import UnsafePickleError, load_pickle
from deep_speaker.training_inputs import load_full_inputs

TINY = Config(width=0.125)
REFUSED = r"unsafe pickle refused \(refused global (posix|os|nt)\.system\)"


class _RunsShell:
    """Unpickling this with pickle.load runs `touch marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def plant(path: Path, marker: Path, payload_key: str = "audio") -> None:
    """A pickle that looks like a cache record (or inputs file) but carries the payload."""
    record = {"filename": "x.wav", "speaker_id": path.stem.split("-")[0], "utterance_id": path.stem,
              "sample_rate": 8000, "train": [], "test": [], payload_key: _RunsShell(marker)}
    path.write_bytes(pickle.dumps(record))


def call(main, capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The one line of an expected error; progress bars drawn before it (a stage
    that failed part-way, e.g. packing the feature store) are not error lines."""
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- module fixtures: one tiny cache with inputs, one tiny model ------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_data) -> Path:
    """<tmp>/corpus (3 LibriSpeech speakers x 3 utterances), <tmp>/cache (audio cache
    and training inputs), <tmp>/checkpoints/triplet/{best.keras, config.json}."""
    import keras

    from deep_speaker.model import build_embedding_model

    root = tmp_path_factory.mktemp("safe")
    source = shared_data / "librispeech" / "train-clean-100"
    for files in TINY_LIBRISPEECH_FILES.values():
        for relative in files:
            target = root / "corpus" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, target)
    cache = root / "cache"
    assert preprocess.main(["--regenerate_full_cache", "--generate_training_inputs", "--audio_dir",
                            str(root / "corpus"), "--cache_output_dir", str(cache)]) == 0
    stage = root / "checkpoints" / "triplet"
    stage.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    build_embedding_model(TINY).save(stage / "best.keras")
    TINY.save(stage / "config.json")
    return root


@pytest.fixture
def cache(built, tmp_path) -> Path:
    """A private copy of the built cache, free to plant into."""
    copy = tmp_path / "cache"
    shutil.copytree(built / "cache", copy)
    return copy


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "payload-ran"
    yield path
    assert not path.exists(), "the planted pickle ran its command"


def test_the_payload_is_real(tmp_path):
    """Control: a plain pickle.load of the planted file does run the command."""
    planted, ran = tmp_path / "evil.pkl", tmp_path / "ran"
    plant(planted, ran)
    pickle.loads(planted.read_bytes())
    assert ran.exists()
    with pytest.raises(UnsafePickleError, match=re.escape(str(planted)) + ": " + REFUSED):
        load_pickle(planted)


# --- the audio cache ----------------------------------------------------------------------------

def _plant_in_cache(cache: Path, marker: Path) -> tuple[Path, Path]:
    folder = cache / AUDIO_CACHE_DIR
    unindexed = folder / "26-999-0001.pkl"  # a new name: opened to recover its index row
    replaced = folder / "26-495-0019.pkl"  # replaces an indexed utterance of speaker 26
    plant(unindexed, marker)
    plant(replaced, marker)
    return unindexed, replaced


def test_stage2_reports_planted_cache_pickles_and_goes_on(cache, marker, capsys, caplog):
    unindexed, replaced = _plant_in_cache(cache, marker)

    code, out, _ = call(preprocess.main, capsys, "--generate_training_inputs", "--cache_output_dir", cache)

    assert code == 0
    assert "0 speakers written, 2 up to date, 1 failed" in out
    assert re.search(re.escape(str(unindexed)) + ": " + REFUSED, caplog.text)
    failures = (cache / "inputs_failures.tsv").read_text()
    assert re.search(r"^26\t" + re.escape(str(replaced)) + ": " + REFUSED, failures, re.MULTILINE)
    assert sorted(load_full_inputs(cache)) == ["19", "27"]


@pytest.mark.parametrize("command", ["comp_cos", "get_emb"])
def test_scoring_reports_planted_cache_pickles_and_goes_on(command, built, cache, marker, capsys, caplog):
    unindexed, replaced = _plant_in_cache(cache, marker)
    model = ["--checkpoint_dir", built / "checkpoints"]
    if command == "comp_cos":
        code, out, err = call(comp_cos.main, capsys, "--unseen_speakers", "26,19", "--json",
                              "--cache_output_dir", cache, *model)
        assert code == 0, err
        result = json.loads(out)
        assert result["kind"] == "SAN" and result["utterances"] == [2, 3]  # 26 scored on its 2 readable files
    else:
        code, out, err = call(get_emb.main, capsys, "--get_embeddings", "26", "--cache_output_dir", cache, *model)
        assert code == 0, err
        assert "[" in out
    for path in (unindexed, replaced):
        assert re.search(re.escape(str(path)) + ": " + REFUSED, caplog.text), path


def test_speaker_with_only_planted_pickles_is_one_clear_line(built, cache, marker, capsys):
    for name in ("26-495-0019", "26-495-0020", "26-496-0026"):
        plant(cache / AUDIO_CACHE_DIR / f"{name}.pkl", marker)

    code, _, err = call(comp_cos.main, capsys, "--unseen_speakers", "26,26", "--cache_output_dir", cache,
                        "--checkpoint_dir", built / "checkpoints")

    assert code == 2
    assert "speaker 26: none of its 3 cached utterance(s) could be read" in one_error_line(err)


# --- inputs/ and full_inputs.pkl ----------------------------------------------------------------

def test_train_cli_refuses_a_planted_inputs_file(cache, marker, tmp_path, capsys):
    planted = cache / "inputs" / "26.pkl"
    plant(planted, marker, payload_key="mean_train")

    code, _, err = call(train_cli.main, capsys, "--loss_on_softmax", "--epochs", "1", "--steps_per_epoch", "1",
                        "--batch_size", "4", "--width", "0.125", "--cache_output_dir", cache,
                        "--checkpoint_dir", tmp_path / "checkpoints")

    assert code == 2
    assert re.search(re.escape(str(planted)) + ": " + REFUSED, one_error_line(err))


def test_stage2_refuses_and_rebuilds_a_planted_inputs_file(cache, marker, capsys, caplog):
    planted = cache / "inputs" / "26.pkl"
    plant(planted, marker, payload_key="mean_train")  # its .sig still matches the cache

    code, out, _ = call(preprocess.main, capsys, "--generate_training_inputs", "--cache_output_dir", cache)

    assert code == 0 and "1 speakers written, 2 up to date, 0 failed" in out
    assert re.search(re.escape(str(planted)) + ": " + REFUSED + "; rebuilding it", caplog.text)
    assert load_pickle(planted)["speaker_id"] == "26"


def test_planted_full_inputs_is_refused_and_rewritten(cache, marker, capsys, caplog):
    full = cache / "full_inputs.pkl"
    planted = {"19": _RunsShell(marker)}
    full.write_bytes(pickle.dumps(planted))

    with pytest.raises(UnsafePickleError, match=re.escape(str(full)) + ": " + REFUSED):
        load_full_inputs(cache)
    code, out, _ = call(preprocess.main, capsys, "--generate_training_inputs", "--cache_output_dir", cache)

    assert code == 0 and "0 speakers written, 3 up to date" in out
    assert f"{full} changed since this stage wrote it; writing it again" in caplog.text
    full_inputs = load_full_inputs(cache)
    assert sorted(full_inputs) == ["19", "26", "27"]
    assert np.array_equal(full_inputs["19"]["train"][0], load_pickle(cache / "inputs" / "19.pkl")["train"][0])


def test_wellformed_but_wrong_pickles_are_clear_errors(cache, capsys):
    """Safe to unpickle yet not what the file should hold: one line naming the file."""
    (cache / AUDIO_CACHE_DIR / "26-495-0019.pkl").write_bytes(pickle.dumps({"audio": "x"}))
    (cache / "inputs" / "26.pkl").write_bytes(pickle.dumps(["not", "a", "dict"]))

    code, _, err = call(train_cli.main, capsys, "--loss_on_softmax", "--cache_output_dir", cache,
                        "--checkpoint_dir", cache / "ckpt")
    assert code == 2 and "26.pkl: not a training inputs file" in one_error_line(err)
    code, out, _ = call(preprocess.main, capsys, "--generate_training_inputs", "--cache_output_dir", cache)
    assert code == 0 and "1 failed" in out
    assert "26-495-0019.pkl: not an audio cache record" in (cache / "inputs_failures.tsv").read_text()


# --- models and JSON sidecars -------------------------------------------------------------------

def _lambda_model(path: Path, marker: Path) -> None:
    """A model whose Lambda layer would run `touch marker` when deserialised unsafely."""
    import keras

    command = f"touch {shlex.quote(str(marker))}"
    inputs = keras.Input(shape=(None, 64, 1))
    x = keras.layers.Lambda(lambda t: t * (1 + 0 * __import__("os").system(command)))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(8)(x))
    keras.Model(inputs, outputs).save(path)


def test_model_with_code_is_refused_by_safe_mode(tmp_path, capsys, write_wav):
    checkpoint, marker = tmp_path / "m" / "best.keras", tmp_path / "lambda-ran"
    checkpoint.parent.mkdir()
    _lambda_model(checkpoint, marker)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once
    TINY.save(checkpoint.parent / "config.json")
    audio = write_wav(tmp_path / "a.wav", "noise", 8000, seconds=1.0, amplitude=0.1)

    code, _, err = call(get_emb.main, capsys, "--checkpoint", checkpoint, "--get_embeddings", audio)

    assert code == 2
    line = one_error_line(err)
    assert f"{checkpoint}: cannot load checkpoint" in line and "safe_mode" in line
    assert not marker.exists()


@pytest.mark.parametrize("content, reason", [
    (b"{not json", r"not a readable config JSON \(JSONDecodeError"),
    (b"\xff\xfe\x00garbage", r"not a readable config JSON \(UnicodeDecodeError"),
    (b"[" * 100000, r"not a readable config JSON \((RecursionError|JSONDecodeError)"),
    (b"[1, 2]", r"config JSON must be an object"),
    (b'{"widht": 0.125}', r"unknown config field 'widht'"),
    (b'{"width": "0.125; rm -rf /"}', r"config field 'width' must be float"),
    (b'{"sample_rate_hz": 0}', r"'sample_rate_hz' must lie in 1000\.\.192000, got 0"),
    (b'{"trim_percentile": NaN}', r"'trim_percentile' must lie in 0\.\.100, got nan"),
    (b'{"frame_length_ms": 1e308}', r"'frame_length_ms' must lie in"),
    (b'{"trim": "rm"}', r"'trim' must be one of percentile, energy"),
    (b'{"speakers": [1, 2]}', r"'speakers' must be a list of strings"),
])
def test_hostile_config_json_is_one_clear_line(content, reason, built, tmp_path, capsys):
    stage = tmp_path / "triplet"
    stage.mkdir()
    shutil.copyfile(built / "checkpoints" / "triplet" / "best.keras", stage / "best.keras")
    (stage / "config.json").write_bytes(content)

    code, _, err = call(get_emb.main, capsys, "--checkpoint", stage / "best.keras", "--get_embeddings", "x.wav")

    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"error: {stage / 'config.json'}: ") and re.search(reason, line), line


def test_config_that_does_not_fit_the_model_is_one_clear_line(built, tmp_path, capsys, write_wav):
    stage = tmp_path / "triplet"
    stage.mkdir()
    shutil.copyfile(built / "checkpoints" / "triplet" / "best.keras", stage / "best.keras")
    TINY.override(num_fbanks=40).save(stage / "config.json")
    audio = write_wav(tmp_path / "a.wav", "noise", 8000, seconds=1.0, amplitude=0.1)

    code, _, err = call(comp_cos.main, capsys, "--checkpoint", stage / "best.keras", "--files", audio, audio)

    assert code == 2
    assert "its config.json describes 40 filterbanks" in one_error_line(err)


@pytest.mark.parametrize("state", [
    b"{broken", b"\xff\xfe", b"[" * 100000, b"[]", b'{"epoch": "3"}', b'{"epoch": true}', b'{"epoch": -1}',
    b'{"epoch": 5, "best": "x"}', b'{"epoch": 5, "best": {"test_eer": "low"}}',
])
def test_hostile_state_json_is_one_clear_line(state, tmp_path, capsys):
    stage = tmp_path / "checkpoints" / "softmax"
    stage.mkdir(parents=True)
    (stage / "state.json").write_bytes(state)
    TINY.save(stage / "config.json")

    code, _, err = call(train_cli.main, capsys, "--loss_on_softmax", "--epochs", "1", "--width", "0.125",
                        "--cache_output_dir", tmp_path / "no-cache", "--checkpoint_dir", tmp_path / "checkpoints")

    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"error: {stage / 'state.json'}: ") and "rerun with --restart" in line, line


def test_hostile_config_json_beside_a_training_state_is_one_clear_line(tmp_path, capsys):
    stage = tmp_path / "checkpoints" / "softmax"
    stage.mkdir(parents=True)
    (stage / "state.json").write_text('{"epoch": 5, "best": {}}')
    (stage / "config.json").write_text('{"width": -1}')

    code, _, err = call(train_cli.main, capsys, "--loss_on_softmax", "--epochs", "1", "--width", "0.125",
                        "--cache_output_dir", tmp_path / "no-cache", "--checkpoint_dir", tmp_path / "checkpoints")

    assert code == 2
    assert f"{stage / 'config.json'}: config field 'width' must lie in" in one_error_line(err)
