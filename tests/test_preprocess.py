"""preprocess.py end to end on real speech: the audio cache, the training inputs, and
the promises around them (resume, update, wipe scope, safety, same features as scoring)."""
from __future__ import annotations

import os
import pickle
import re
import shlex
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile

from deep_speaker.audio import load_utterance
from deep_speaker.audio_cache import AUDIO_CACHE_DIR, REGENERATING_MARKER
from deep_speaker.commands.preprocess import main
from deep_speaker.config import Config
from deep_speaker.features import utterance_features
from deep_speaker.io_utils import load_pickle

RECORD_KEYS = {"filename", "left_blank_duration_ms", "right_blank_duration_ms", "audio_voice_only", "audio",
               "speaker_id", "utterance_id", "sample_rate"}
INPUTS_KEYS = {"train", "test", "speaker_id", "mean_train", "std_train"}
LIBRI_IDS = ["19-198-0000", "19-198-0008", "19-198-0037", "26-495-0019", "26-495-0020", "26-496-0026",
             "27-124992-0026", "27-124992-0062", "27-124992-0073"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cache_line(out: str) -> tuple[int, int, int]:
    match = re.search(r"audio cache: (\d+) files cached, (\d+) skipped \(already cached\), (\d+) failed", out)
    assert match, out
    return tuple(int(g) for g in match.groups())


def inputs_line(out: str) -> tuple[int, int, int]:
    match = re.search(r"training inputs: (\d+) speakers written, (\d+) up to date, (\d+) failed", out)
    assert match, out
    return tuple(int(g) for g in match.groups())


def pickles(cache: Path) -> dict[str, int]:
    """Cache pickle name -> mtime_ns."""
    return {p.name: p.stat().st_mtime_ns for p in (cache / AUDIO_CACHE_DIR).glob("*.pkl")}


def regenerate(capsys, corpus: Path, cache: Path, *extra) -> tuple[int, str, str]:
    return run(capsys, "--regenerate_full_cache", "--audio_dir", corpus, "--cache_output_dir", cache, *extra)


@pytest.fixture
def libri_cache(tiny_librispeech, tmp_path, capsys) -> Path:
    """tiny_librispeech cached (9 real utterances of speakers 19, 26, 27)."""
    cache = tmp_path / "cache"
    code, out, _ = regenerate(capsys, tiny_librispeech, cache)
    assert code == 0 and cache_line(out) == (9, 0, 0)
    return cache


# (a) ----------------------------------------------------------------------------------------

def test_regenerate_caches_good_files_and_lists_bad_ones(tiny_librispeech, tmp_path, capsys):
    corrupt = tiny_librispeech / "train-clean-100" / "19" / "198" / "19-198-9999.wav"
    corrupt.write_bytes(b"RIFF not really a wave file" * 50)
    empty = tiny_librispeech / "train-clean-100" / "26" / "495" / "26-495-9998.flac"
    empty.write_bytes(b"")
    cache = tmp_path / "cache"

    code, out, _ = regenerate(capsys, tiny_librispeech, cache, "--multi_threading")

    assert code == 0
    assert cache_line(out) == (9, 0, 2)
    assert f"failures listed in {cache / 'failures.tsv'}" in out
    assert sorted(pickles(cache)) == sorted(f"{i}.pkl" for i in LIBRI_IDS)
    for name in LIBRI_IDS:
        record = load_pickle(cache / AUDIO_CACHE_DIR / f"{name}.pkl")
        assert set(record) == RECORD_KEYS
        source = Path(record["filename"])
        assert source.is_absolute() and source.stem == name and source.is_file()
        assert record["speaker_id"] == name.split("-")[0] and record["utterance_id"] == name
        assert record["sample_rate"] == 8000
        info = soundfile.info(str(source))
        assert abs(len(record["audio"]) - info.frames * 8000 / info.samplerate) <= 1  # lasts as long as the source
        assert record["audio"].dtype == record["audio_voice_only"].dtype == np.float32
        left = round(record["left_blank_duration_ms"] * 8)
        right = round(record["right_blank_duration_ms"] * 8)
        np.testing.assert_array_equal(record["audio_voice_only"], record["audio"][left:len(record["audio"]) - right])
        assert len(record["audio_voice_only"]) >= 0.5 * 8000  # every utterance holds over half a second of speech
    failures = (cache / "failures.tsv").read_text().splitlines()
    assert failures[0] == "path\treason"
    reasons = dict(line.split("\t") for line in failures[1:])
    assert set(reasons) == {str(corrupt), str(empty)}
    assert "not decodable audio" in reasons[str(corrupt)]
    assert reasons[str(empty)] == "empty file (0 bytes)"
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (cache / AUDIO_CACHE_DIR).glob("*.pkl")}
    assert modes == {0o666 & ~_umask()}  # readable like any file the user creates, not 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# (b) ----------------------------------------------------------------------------------------

def test_update_cache_adds_only_new_files(libri_cache, tiny_librispeech, samples_dir, capsys):
    samples = samples_dir
    before = pickles(libri_cache)
    assert inputs_line(run(capsys, "--generate_training_inputs", "--cache_output_dir", libri_cache)[1]) == (3, 0, 0)

    code, out, _ = run(capsys, "--update_cache", "--audio_dir", samples, "--cache_output_dir", libri_cache)

    assert code == 0 and cache_line(out) == (4, 0, 0)
    after = pickles(libri_cache)
    assert set(after) - set(before) == {f"PhilippeRemy_00{i}.pkl" for i in range(1, 5)}
    assert {name: after[name] for name in before} == before  # existing pickles not rewritten
    assert load_pickle(libri_cache / AUDIO_CACHE_DIR / "PhilippeRemy_001.pkl")["speaker_id"] == "PhilippeRemy"
    # everything is cached now
    code, out, _ = run(capsys, "--update_cache", "--audio_dir", tiny_librispeech, "--audio_dir", samples,
                       "--cache_output_dir", libri_cache)
    assert code == 0 and cache_line(out) == (0, 13, 0) and pickles(libri_cache) == after
    # stage 2 rebuilds only the new speaker
    code, out, _ = run(capsys, "--generate_training_inputs", "--cache_output_dir", libri_cache)
    assert code == 0 and inputs_line(out) == (1, 3, 0)
    assert sorted(load_pickle(libri_cache / "full_inputs.pkl")) == ["19", "26", "27", "PhilippeRemy"]


# (c) ----------------------------------------------------------------------------------------

def _assert_same_inputs(a, b, where: str = "") -> None:
    """Equal structure and values; arrays with equal dtype and np.array_equal."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same_inputs(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_inputs(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_training_inputs_per_speaker_and_full(libri_cache, capsys):
    code, out, _ = run(capsys, "--generate_training_inputs", "--multi_threading", "--cache_output_dir", libri_cache)

    assert code == 0 and inputs_line(out) == (3, 0, 0)
    inputs_dir = libri_cache / "inputs"
    assert sorted(p.name for p in inputs_dir.glob("*.pkl")) == ["19.pkl", "26.pkl", "27.pkl"]
    with open(libri_cache / "full_inputs.pkl", "rb") as handle:
        full = pickle.load(handle)  # a plain pickle.load reads it...
    _assert_same_inputs(full, load_pickle(libri_cache / "full_inputs.pkl"))  # ...and so does the safe loader
    assert sorted(full) == ["19", "26", "27"]
    for speaker in ("19", "26", "27"):
        inputs = load_pickle(inputs_dir / f"{speaker}.pkl")
        assert INPUTS_KEYS <= set(inputs) and inputs["speaker_id"] == speaker
        assert len(inputs["train"]) == 2 and len(inputs["test"]) == 1  # 3 utterances, test_fraction 0.2
        ids = inputs["train_utterances"] + inputs["test_utterances"]
        assert sorted(ids) == [i for i in LIBRI_IDS if i.startswith(speaker + "-")]
        for features in inputs["train"] + inputs["test"]:
            assert features.dtype == np.float32 and features.ndim == 2 and features.shape[1] == 64
            assert features.shape[0] >= 50  # over half a second of speech each
        for key in ("mean_train", "std_train"):
            assert inputs[key].dtype == np.float32 and inputs[key].shape == (64,)
        raw = np.concatenate([_raw_fbank(libri_cache, i) for i in inputs["train_utterances"]])
        np.testing.assert_allclose(inputs["mean_train"], raw.mean(axis=0), rtol=1e-5, atol=1e-5)
        _assert_same_inputs(full[speaker], inputs)
    # a second run finds everything up to date
    assert inputs_line(run(capsys, "--generate_training_inputs", "--cache_output_dir", libri_cache)[1]) == (0, 3, 0)


def test_augmented_copies_hold_degraded_training_utterances_only(libri_cache, capsys):
    code, out, _ = run(capsys, "--generate_training_inputs", "--augment_copies", "2", "--unseen_speakers", "27",
                       "--cache_output_dir", libri_cache)

    assert code == 0 and inputs_line(out) == (6, 0, 0)  # 2 speakers x (clean + 2 copies)
    full = load_pickle(libri_cache / "full_inputs.pkl")
    assert sorted(full) == ["19", "19-aug1", "19-aug2", "26", "26-aug1", "26-aug2"]
    for speaker in ("19", "26"):
        clean = full[speaker]
        for copy in (1, 2):
            augmented = full[f"{speaker}-aug{copy}"]
            assert augmented["speaker_id"] == f"{speaker}-aug{copy}" and augmented["augmented_copy"] == copy
            assert augmented["test"] == [] and augmented["train_utterances"] == clean["train_utterances"]
            for noisy, original in zip(augmented["train"], clean["train"]):
                assert noisy.shape == original.shape and noisy.dtype == np.float32
                assert not np.allclose(noisy, original)
                np.testing.assert_allclose(noisy.mean(axis=0), 0, atol=1e-4)  # normalised like the rest
        assert not np.allclose(full[f"{speaker}-aug1"]["train"][0], full[f"{speaker}-aug2"]["train"][0])
    # training sees two speakers, each with three times the training utterances
    from deep_speaker.training_inputs import merge_augmented_copies
    merged = merge_augmented_copies(full)
    assert sorted(merged) == ["19", "26"] and [len(merged[s]["train"]) for s in merged] == [6, 6]
    assert inputs_line(run(capsys, "--generate_training_inputs", "--augment_copies", "2", "--unseen_speakers", "27",
                           "--cache_output_dir", libri_cache)[1]) == (0, 6, 0)
    # without copies they are removed, so they never train by accident
    run(capsys, "--generate_training_inputs", "--unseen_speakers", "27", "--cache_output_dir", libri_cache)
    assert sorted(p.stem for p in (libri_cache / "inputs").glob("*.pkl")) == ["19", "26"]


def test_augmented_copies_do_not_even_degrade_test_utterances(libri_cache, monkeypatch):
    """A copy has no test part, so stage 2 spends no augmentation or fbank on its test utterances."""
    import deep_speaker.training_inputs as training_inputs

    degraded = []
    augment = training_inputs.augment_utterance
    monkeypatch.setattr(training_inputs, "augment_utterance",
                        lambda audio, rate, rng: degraded.append(len(audio)) or augment(audio, rate, rng))
    files = sorted((libri_cache / AUDIO_CACHE_DIR).glob("19-*.pkl"))
    clean = training_inputs.speaker_inputs("19", files, Config())
    copy = training_inputs.speaker_inputs("19", files, Config(), copy=1)
    assert len(files) == 3 and clean["test"] and not copy["test"]
    assert len(degraded) == len(copy["train"]) == len(clean["train_utterances"]) == 2


def _raw_fbank(cache: Path, utterance_id: str) -> np.ndarray:
    from deep_speaker.features import compute_fbank

    record = load_pickle(cache / AUDIO_CACHE_DIR / f"{utterance_id}.pkl")
    return compute_fbank(record["audio_voice_only"], Config())


def test_unseen_speakers_are_left_out_everywhere(libri_cache, capsys):
    assert run(capsys, "--generate_training_inputs", "--cache_output_dir", libri_cache)[0] == 0

    code, out, _ = run(capsys, "--generate_training_inputs", "--unseen_speakers", "27,19",
                       "--cache_output_dir", libri_cache)

    assert code == 0
    assert "2 left out as unseen (19,27)" in out
    assert sorted(p.name for p in (libri_cache / "inputs").glob("*.pkl")) == ["26.pkl"]
    assert sorted(load_pickle(libri_cache / "full_inputs.pkl")) == ["26"]  # not the stale 3-speaker file
    # and back: nobody unseen
    code, out, _ = run(capsys, "--generate_training_inputs", "--cache_output_dir", libri_cache)
    assert code == 0 and inputs_line(out) == (2, 1, 0)
    assert sorted(load_pickle(libri_cache / "full_inputs.pkl")) == ["19", "26", "27"]


def test_unknown_unseen_speaker_is_a_one_line_error(libri_cache, capsys):
    code, out, err = run(capsys, "--generate_training_inputs", "--unseen_speakers", "19,p999",
                         "--cache_output_dir", libri_cache)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert err.startswith("error: unknown --unseen_speakers p999;") and "19, 26, 27" in err
    assert not (libri_cache / "inputs").exists()


# (d) ----------------------------------------------------------------------------------------

def test_seed_commands_on_vctk_mini(vctk_corpus, repo_root, tmp_path, capsys, monkeypatch):
    vctk = vctk_corpus
    monkeypatch.chdir(repo_root)  # the seed's relative --audio_dir, read in place (no copy)
    relative = os.path.relpath(vctk, repo_root)
    assert not os.path.isabs(relative) and (repo_root / relative).resolve() == vctk.resolve()
    cache = tmp_path / "cache"

    code, out, _ = run(capsys, "--regenerate_full_cache", "--multi_threading", "--audio_dir", relative,
                       "--cache_output_dir", cache)

    assert code == 0 and cache_line(out) == (34, 0, 0)
    cached = sorted((cache / AUDIO_CACHE_DIR).glob("*.pkl"))
    sources = sorted(vctk.glob("wav48/*/*.wav"))
    assert [p.stem for p in cached] == [p.stem for p in sources]
    for pkl, source in zip(cached, sources):
        record = load_pickle(pkl)
        assert record["speaker_id"] == source.parent.name and re.fullmatch(r"p\d{3}", record["speaker_id"])
        assert record["utterance_id"] == source.stem and Path(record["filename"]) == source.resolve()
        assert record["sample_rate"] == 8000
        assert abs(len(record["audio"]) - soundfile.info(str(source)).frames / 6) <= 1  # 48 kHz -> 8 kHz

    code, out, _ = run(capsys, "--generate_training_inputs", "--multi_threading", "--cache_output_dir", cache)
    assert code == 0 and inputs_line(out) == (14, 0, 0)
    assert "0 left out as unseen" in out  # the seed's held-out speakers are not in vctk-mini
    assert len(load_pickle(cache / "full_inputs.pkl")) == 14


# (e) ----------------------------------------------------------------------------------------

def test_regenerate_wipes_only_the_audio_cache(libri_cache, tiny_librispeech, capsys):
    assert run(capsys, "--generate_training_inputs", "--cache_output_dir", libri_cache)[0] == 0
    checkpoint = libri_cache / "checkpoints" / "model.weights.h5"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    inputs_file = libri_cache / "inputs" / "19.pkl"
    inputs_bytes = inputs_file.read_bytes()
    orphan = libri_cache / AUDIO_CACHE_DIR / "gone-0000-0000.pkl"  # its source was deleted
    orphan.write_bytes((libri_cache / AUDIO_CACHE_DIR / "19-198-0000.pkl").read_bytes())
    before = pickles(libri_cache)

    code, out, _ = regenerate(capsys, tiny_librispeech, libri_cache)

    assert code == 0 and cache_line(out) == (9, 0, 0)
    after = pickles(libri_cache)
    assert sorted(after) == sorted(f"{i}.pkl" for i in LIBRI_IDS)  # the orphan is gone
    assert all(after[name] != before[name] for name in after)  # every file cached again
    assert checkpoint.read_bytes() == b"weights" and inputs_file.read_bytes() == inputs_bytes
    assert not (libri_cache / AUDIO_CACHE_DIR / REGENERATING_MARKER).exists()


# (f) ----------------------------------------------------------------------------------------

def test_killed_regenerate_is_resumed_not_wiped(libri_cache, tiny_librispeech, capsys):
    output = libri_cache / AUDIO_CACHE_DIR
    (output / REGENERATING_MARKER).touch()  # the killed run had wiped, then cached some files
    for name in LIBRI_IDS[:4]:
        (output / f"{name}.pkl").unlink()
    stale_temp = output / ".19-198-0000.pkl.123.tmp"
    stale_temp.write_bytes(b"half a pickle")
    kept = pickles(libri_cache)

    code, out, _ = regenerate(capsys, tiny_librispeech, libri_cache)

    assert code == 0 and cache_line(out) == (4, 5, 0)
    after = pickles(libri_cache)
    assert sorted(after) == sorted(f"{i}.pkl" for i in LIBRI_IDS)
    assert {name: after[name] for name in kept} == kept  # the killed run's work is kept
    assert not stale_temp.exists()
    assert list(output.glob(".*.tmp")) == []
    assert not (output / REGENERATING_MARKER).exists()
    # finished: the next regenerate starts afresh
    assert cache_line(regenerate(capsys, tiny_librispeech, libri_cache)[1]) == (9, 0, 0)


def test_sharded_regenerates_do_not_undo_each_other(tiny_librispeech, tmp_path, capsys):
    (tiny_librispeech / "train-clean-100" / "19" / "198" / "19-198-9999.flac").write_bytes(b"")
    cache = tmp_path / "cache"
    counts, outs = [], []
    for shard in ("0/2", "1/2"):
        code, out, _ = regenerate(capsys, tiny_librispeech, cache, "--shard", shard)
        assert code == 0
        counts.append(cache_line(out))
        outs.append(out)
    assert sum(c[0] for c in counts) == 9 and sum(c[2] for c in counts) == 1
    assert all(c[0] > 0 for c in counts)
    assert sorted(pickles(cache)) == sorted(f"{i}.pkl" for i in LIBRI_IDS)  # shard 1 kept shard 0's files
    failed = 0 if counts[0][2] else 1
    failures = cache / f"failures.shard-{failed}-of-2.tsv"
    assert f"failures listed in {failures}" in outs[failed]
    assert "19-198-9999" in failures.read_text()
    # and stage 2 sees all of them
    assert inputs_line(run(capsys, "--generate_training_inputs", "--cache_output_dir", cache)[1]) == (3, 0, 0)


def test_shard_options_are_checked(libri_cache, tiny_librispeech, capsys):
    code, _, err = regenerate(capsys, tiny_librispeech, libri_cache, "--shard", "2/2")
    assert code == 2 and "need 0 <= I < N" in err
    code, _, err = run(capsys, "--update_cache", "--generate_training_inputs", "--shard", "0/2",
                       "--audio_dir", tiny_librispeech, "--cache_output_dir", libri_cache)
    assert code == 2 and "unsharded" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["--cache_output_dir", str(libri_cache)])  # no stage chosen
    assert exit_info.value.code == 2


# (g) ----------------------------------------------------------------------------------------

def test_all_bad_corpus_exits_2(tmp_path, write_wav, capsys):
    corpus = tmp_path / "bad"
    (corpus / "Ann").mkdir(parents=True)
    (corpus / "Ann" / "a.wav").write_text("not audio")
    (corpus / "Ann" / "b.flac").write_bytes(b"")
    write_wav(corpus / "Ann" / "c.wav", "silence", 16000)
    cache = tmp_path / "cache"

    code, out, err = regenerate(capsys, corpus, cache)

    assert code == 2
    assert cache_line(out) == (0, 0, 3)
    assert "nothing could be cached" in err
    assert len((cache / "failures.tsv").read_text().splitlines()) == 4
    code, _, err = regenerate(capsys, tmp_path / "missing", cache)
    assert code == 2 and "audio folder not found" in err


# (h) ----------------------------------------------------------------------------------------

def test_training_and_scoring_see_the_same_features(libri_cache, tiny_librispeech, capsys):
    """What stage 2 stores for an utterance is exactly what scoring computes from its file."""
    assert run(capsys, "--generate_training_inputs", "--cache_output_dir", libri_cache)[0] == 0
    config = Config()
    sources = {p.stem: p for p in tiny_librispeech.rglob("*.flac")}
    checked = 0
    for speaker in ("19", "26", "27"):
        inputs = load_pickle(libri_cache / "inputs" / f"{speaker}.pkl")
        for part in ("train", "test"):
            for utterance_id, stored in zip(inputs[f"{part}_utterances"], inputs[part]):
                scored = utterance_features(load_utterance(sources[utterance_id], config).audio_voice_only, config)
                assert stored.shape == scored.shape
                np.testing.assert_array_equal(stored, scored)
                checked += 1
    assert checked == 9


# (i) ----------------------------------------------------------------------------------------

class _RunsShell:
    """Unpickling this runs a shell command, as a planted pickle could."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _plant(path: Path, marker: Path) -> None:
    record = {"filename": "x.wav", "speaker_id": "19", "utterance_id": path.stem, "sample_rate": 8000,
              "audio": _RunsShell(marker)}
    path.write_bytes(pickle.dumps(record))


def test_the_planted_payload_does_run_under_plain_pickle(tmp_path):
    """Control for the test below: the payload is real."""
    planted, marker = tmp_path / "evil.pkl", tmp_path / "ran"
    _plant(planted, marker)
    pickle.loads(planted.read_bytes())
    assert marker.exists()


def test_planted_pickles_are_refused(libri_cache, tmp_path, capsys, caplog):
    marker = tmp_path / "payload-ran"
    output = libri_cache / AUDIO_CACHE_DIR
    _plant(output / "zz-evil.pkl", marker)  # a new name: not in the index, opened to recover its row
    _plant(output / "26-495-0019.pkl", marker)  # replaces a cached utterance listed in the index

    code, out, _ = run(capsys, "--generate_training_inputs", "--cache_output_dir", libri_cache)

    assert not marker.exists()
    assert code == 0
    assert inputs_line(out) == (2, 0, 1)
    assert re.search(r"zz-evil\.pkl: unsafe pickle refused \(refused global (posix|os|nt)\.system\)", caplog.text)
    failures = (libri_cache / "inputs_failures.tsv").read_text()
    assert re.search(r"^26\t.*26-495-0019\.pkl: unsafe pickle refused", failures, re.MULTILINE)
    assert sorted(p.stem for p in (libri_cache / "inputs").glob("*.pkl")) == ["19", "27"]
    assert sorted(load_pickle(libri_cache / "full_inputs.pkl")) == ["19", "27"]
