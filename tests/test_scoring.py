"""Scoring end to end on real speech with a tiny untrained model: SAN/SAP, the
feature contract with training, and the comp_cos, get_emb and evaluate commands
(results, outputs, and one clear line for every expected error). Which model a
command uses: tests/test_checkpoints.py."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deep_speaker import evaluation, scoring
from deep_speaker.checkpoints import resolve_model
from deep_speaker.commands import comp_cos, evaluate, get_emb
from deep_speaker.config import Config
from deep_speaker.io_utils import load_pickle
from deep_speaker.metrics import cosine_distance
from deep_speaker.scoring import (CachedSpeaker, ScoringError, cached_features, cached_speakers, compare_files,
                                  compare_speakers, speaker_embedding)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = Config(width=0.125)
CACHED_SPEAKERS = 15  # vctk-mini's 14 speakers + PhilippeRemy
# Keras 3.15 on numpy 2 warns from inside its own predict/convert code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# --- session fixtures: one tiny model, one cache ----------------------------------------------

@pytest.fixture(scope="session")
def vctk(vctk_corpus) -> Path:
    return vctk_corpus


@pytest.fixture(scope="session")
def wav(vctk) -> Path:
    return vctk / "wav48"


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Path:
    """<tmp>/checkpoints/triplet/{best.keras,config.json}, as training writes them."""
    import keras

    from deep_speaker.model import build_embedding_model

    checkpoint_dir = tmp_path_factory.mktemp("scoring") / "checkpoints"
    stage = checkpoint_dir / "triplet"
    stage.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    build_embedding_model(TINY).save(stage / "best.keras")
    TINY.save(stage / "config.json")
    return checkpoint_dir


@pytest.fixture(scope="session")
def cache(tmp_path_factory, vctk, samples_dir) -> Path:
    """Audio cache and training inputs of vctk-mini plus the extra speaker PhilippeRemy."""
    from deep_speaker.commands import preprocess

    cache_dir = tmp_path_factory.mktemp("cache")
    assert preprocess.main(["--regenerate_full_cache", "--audio_dir", str(vctk), "--audio_dir",
                            str(samples_dir), "--cache_output_dir", str(cache_dir)]) == 0
    assert preprocess.main(["--generate_training_inputs", "--cache_output_dir", str(cache_dir)]) == 0
    return cache_dir


@pytest.fixture(scope="session")
def embedder(checkpoints):
    return scoring.Embedder(resolve_model(None, checkpoints))


@pytest.fixture
def bad_files(tmp_path, write_wav) -> dict[str, Path]:
    folder = tmp_path / "bad"
    folder.mkdir()
    text = folder / "notes.wav"
    text.write_text("not audio at all\n")
    return {
        "silent": write_wav(folder / "silent.wav", "silence"),
        "short": write_wav(folder / "short.wav", "tone_in_silence", seconds=0.05),
        # passes the audio stage's 100 ms but gives fewer frames than scoring needs
        "few_frames": write_wav(folder / "few_frames.wav", "tone_in_silence", seconds=0.105),
        "text": text,
        "missing": folder / "missing.wav",
    }


def run(main, capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(code: int, err: str) -> str:
    """The single `error: ...` line of an expected failure."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def printed_vector(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.replace("[", " ").replace("]", " ").split()])


# --- scores and model resolution ----------------------------------------------------------------

def test_same_samples_in_another_format_score_as_one_recording(embedder, wav, tmp_path):
    """The WAV and a FLAC copy of its samples decode alike, so they embed alike
    (similarity 1); another utterance of the same speaker does not."""
    import soundfile

    path = wav / "p225" / "p225_001.wav"
    samples, rate = soundfile.read(str(path), dtype="int16")
    copy = tmp_path / "copy.flac"
    soundfile.write(str(copy), samples, rate)
    result = compare_files(embedder, path, copy, threshold=0.999)
    assert result.kind == "files"
    assert result.distance == pytest.approx(0.0, abs=1e-5)
    assert result.similarity == pytest.approx(1.0, abs=1e-5)
    assert result.same_speaker is True
    other = compare_files(embedder, path, wav / "p225" / "p225_002.wav", threshold=0.999)
    assert other.distance > 1e-3 and other.same_speaker is False


def test_speaker_embedding_is_renormalised_mean():
    rows = np.random.default_rng(1).normal(size=(5, 512))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    result = speaker_embedding(rows)
    assert np.linalg.norm(result) == pytest.approx(1.0, abs=1e-6)
    mean = rows.mean(axis=0)
    np.testing.assert_allclose(result, mean / np.linalg.norm(mean), atol=1e-6)
    with pytest.raises(ScoringError, match="cancel"):
        speaker_embedding(np.array([[1.0, 0.0], [-1.0, 0.0]]))


# --- the feature contract with training ---------------------------------------------------------

def test_file_features_equal_training_inputs(embedder, cache):
    """A file scored alone is featurised exactly as its utterance in the training inputs."""
    for speaker in ("p225", "PhilippeRemy"):
        inputs = load_pickle(cache / "inputs" / f"{speaker}.pkl")
        compared = 0
        for part in ("train", "test"):
            assert len(inputs[f"{part}_utterances"]) == len(inputs[part]) > 0
            for utterance_id, stored in zip(inputs[f"{part}_utterances"], inputs[part]):
                source = load_pickle(cache / "audio_cache_pkl" / f"{utterance_id}.pkl")["filename"]
                features = embedder.file_features(source)
                assert features.shape == stored.shape
                np.testing.assert_allclose(features, stored, atol=1e-5)
                compared += 1
        assert compared == 4


def test_file_embedding_equals_cached_utterance_embedding(embedder, cache, wav, checkpoints, tmp_path, capsys):
    cached = CachedSpeaker("p225", [cache / "audio_cache_pkl" / "p225_002.pkl"])
    from_cache = embedder.embed_features(cached_features(cached, embedder.config, 50, 0))[0]
    np.testing.assert_allclose(embedder.embed_file(wav / "p225" / "p225_002.wav"), from_cache, atol=1e-5)
    # and through get_emb: p236 has one utterance, so its speaker embedding is that utterance's
    common = ["--checkpoint_dir", checkpoints, "--cache_output_dir", cache]
    assert run(get_emb.main, capsys, "--get_embeddings", "p236", "--output", tmp_path / "speaker.npy", *common)[0] == 0
    assert run(get_emb.main, capsys, "--get_embeddings", wav / "p236" / "p236_023.wav",
               "--output", tmp_path / "file.npy", *common)[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "file.npy"), np.load(tmp_path / "speaker.npy"), atol=1e-5)


# --- SAP ----------------------------------------------------------------------------------------

def _recording(embedder, monkeypatch) -> list[list[np.ndarray]]:
    groups = []
    original = embedder.embed_features
    monkeypatch.setattr(embedder, "embed_features", lambda features: groups.append(features) or original(features))
    return groups


def test_sap_scores_two_disjoint_halves(embedder, cache, monkeypatch):
    groups = _recording(embedder, monkeypatch)
    result = compare_speakers(embedder, cache, "p225", "p225")
    assert (result.kind, result.counts, result.names) == ("SAP", [2, 2], ["p225", "p225"])
    (speaker,) = cached_speakers(cache, ["p225"])
    every = sorted(f.tobytes() for f in cached_features(speaker, embedder.config, 50, 1234))
    halves = [sorted(f.tobytes() for f in group) for group in groups]
    assert sorted(halves[0] + halves[1]) == every  # each utterance in exactly one half
    assert result.distance > 0


def test_sap_of_one_utterance_splits_it_in_time(embedder, cache, monkeypatch):
    groups = _recording(embedder, monkeypatch)
    result = compare_speakers(embedder, cache, "p236", "p236")
    assert result.kind == "SAP" and result.counts == [1, 1]
    (speaker,) = cached_speakers(cache, ["p236"])
    (whole,) = cached_features(speaker, embedder.config, 50, 1234)
    (first,), (second,) = groups
    assert abs(len(first) - len(second)) <= 1
    np.testing.assert_array_equal(np.concatenate([first, second]), whole)
    assert result.distance > 0


# --- comp_cos -----------------------------------------------------------------------------------

def test_comp_cos_san_json(cache, checkpoints, embedder, capsys):
    code, out, err = run(comp_cos.main, capsys, "--unseen_speakers", "p225,p226", "--json",
                         "--cache_output_dir", cache, "--checkpoint_dir", checkpoints)
    assert code == 0, err
    assert len(out.splitlines()) == 1
    result = json.loads(out)
    assert result["kind"] == "SAN" and result["names"] == ["p225", "p226"] and result["utterances"] == [4, 4]
    # the distance of the two speaker embeddings (renormalised means of 4 utterances each), computed apart
    u, v = (scoring.embed_cached_speaker(embedder, cache, name) for name in ("p225", "p226"))
    assert result["distance"] == pytest.approx(cosine_distance(u, v), abs=1e-5) and result["distance"] > 0
    assert result["similarity"] == pytest.approx(1 - result["distance"])
    assert result["model"] == str(checkpoints / "triplet" / "best.keras")


def test_comp_cos_sap_prose(cache, checkpoints, capsys):
    code, out, err = run(comp_cos.main, capsys, "--unseen_speakers", "p225,p225",
                         "--cache_output_dir", cache, "--checkpoint_dir", checkpoints)
    assert code == 0, err
    assert out.startswith(f"model: {checkpoints / 'triplet' / 'best.keras'} (best triplet checkpoint, width 0.125, runtime keras)")
    assert re.search(r"^SAP \(p225 vs p225\): distance \d\.\d{4}, cosine similarity \d\.\d{4}, utterances 2\+2",
                     out, re.M), out


def test_comp_cos_extra_speaker(cache, checkpoints, capsys):
    code, out, err = run(comp_cos.main, capsys, "--unseen_speakers", "PhilippeRemy,p225", "--extra_speakers",
                         "--json", "--cache_output_dir", cache, "--checkpoint_dir", checkpoints)
    assert code == 0, err
    result = json.loads(out)
    assert result["kind"] == "SAN" and result["names"] == ["PhilippeRemy", "p225"] and result["utterances"] == [4, 4]


def test_comp_cos_files_threshold(checkpoints, wav, capsys):
    files = [wav / "p225" / "p225_001.wav", wav / "p226" / "p226_001.wav"]
    decisions = {}
    for threshold in ("1.0", "-1.0"):
        code, out, err = run(comp_cos.main, capsys, "--files", *files, "--threshold", threshold, "--json",
                             "--checkpoint_dir", checkpoints)
        assert code == 0, err
        result = json.loads(out)
        assert result["kind"] == "files" and result["threshold"] == float(threshold)
        assert result["similarity"] < 1.0
        decisions[threshold] = result["same_speaker"]
    assert decisions == {"1.0": False, "-1.0": True}


def test_comp_cos_unknown_speaker_lists_cache(cache, checkpoints, capsys):
    line = error_line(*run(comp_cos.main, capsys, "--unseen_speakers", "p225,nobody",
                           "--cache_output_dir", cache, "--checkpoint_dir", checkpoints)[::2])
    assert "nobody" in line and f"holds {CACHED_SPEAKERS}" in line
    assert all(name in line for name in ("PhilippeRemy", "p225", "p239", "p273"))


def test_comp_cos_missing_model_names_tried_paths(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("deep_speaker.checkpoints.PRETRAINED_DIR", tmp_path / "pretrained")  # not the fixture
    empty = tmp_path / "no_checkpoints"
    line = error_line(*run(comp_cos.main, capsys, "--unseen_speakers", "p225,p226",
                           "--cache_output_dir", cache, "--checkpoint_dir", empty)[::2])
    for tried in ("triplet", "softmax_frozen", "softmax"):
        assert str(empty / tried / "best.keras") in line
    assert str(tmp_path / "pretrained" / "embedding.keras") in line


@pytest.mark.parametrize("kind, expected", [
    ("silent", r"silent.*at least \d+ ms of speech"),
    ("short", r"too little speech.*at least \d+ ms"),
    ("few_frames", r"at least 10 frames \(115 ms of speech\)"),
    ("text", r"not decodable audio"),
    ("missing", r"not found"),
])
def test_comp_cos_unusable_file_is_one_line(kind, expected, bad_files, checkpoints, wav, capsys):
    path = bad_files[kind]
    line = error_line(*run(comp_cos.main, capsys, "--files", wav / "p225" / "p225_001.wav", path,
                           "--checkpoint_dir", checkpoints)[::2])
    assert line.startswith(f"error: {path}: ") and re.search(expected, line), line


def test_comp_cos_script_error_has_no_traceback(tmp_path):
    """The real script: exit 2 and one error line, even before TensorFlow is loaded."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "comp_cos.py"), "--files", "a.wav",
                             "b.wav", "--checkpoint", str(tmp_path / "none.keras")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none.keras'}: checkpoint not found"


# --- get_emb ------------------------------------------------------------------------------------

def test_get_emb_speaker_prints_vector(cache, checkpoints, capsys):
    code, out, err = run(get_emb.main, capsys, "--get_embeddings", "p225", "--cache_output_dir", cache,
                         "--checkpoint_dir", checkpoints)
    assert code == 0, err
    model_line, vector_text = out.split("\n", 1)
    assert model_line.startswith("model: ")
    vector = printed_vector(vector_text)
    assert vector.shape == (512,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-3)


def test_get_emb_files_npy_csv_json(embedder, checkpoints, wav, tmp_path, capsys):
    files = [wav / "p226" / "p226_001.wav", wav / "p225" / "p225_001.wav"]  # not sorted: order is kept
    expected = np.stack([embedder.embed_file(f) for f in files])
    for suffix in (".npy", ".csv", ".json"):
        output = tmp_path / f"e{suffix}"
        code, out, err = run(get_emb.main, capsys, "--get_embeddings", *files, "--output", output,
                             "--checkpoint_dir", checkpoints)
        assert code == 0, err
        if suffix == ".npy":
            table = np.load(output)
            assert table.shape == (2, 512) and table.dtype == np.float32
            assert (tmp_path / "e.files.txt").read_text().splitlines() == [str(f) for f in files]
        elif suffix == ".csv":
            rows = list(csv.reader(output.open()))
            assert rows[0] == ["file"] + [f"e{i}" for i in range(512)]
            assert [r[0] for r in rows[1:]] == [str(f) for f in files]
            table = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
        else:
            document = json.loads(output.read_text())
            assert document["files"] == [str(f) for f in files] and document["skipped"] == []
            table = np.array(document["embeddings"])
        np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(table, expected, atol=1e-5)


def test_get_emb_glob(checkpoints, wav, tmp_path, capsys):
    output = tmp_path / "glob.npy"
    code, out, err = run(get_emb.main, capsys, "--get_embeddings", wav / "p225" / "*.wav", "--output", output,
                         "--checkpoint_dir", checkpoints)
    assert code == 0, err
    assert np.load(output).shape == (4, 512)
    assert (tmp_path / "glob.files.txt").read_text().splitlines() == sorted(
        str(p) for p in (wav / "p225").glob("*.wav"))


def test_get_emb_skips_undecodable_file(checkpoints, bad_files, wav, tmp_path, capsys):
    good = [wav / "p225" / "p225_001.wav", wav / "p226" / "p226_001.wav"]
    output = tmp_path / "mixed.npy"
    code, out, err = run(get_emb.main, capsys, "--get_embeddings", good[0], bad_files["text"], good[1],
                         "--output", output, "--checkpoint_dir", checkpoints)
    assert code == 0, err
    assert f"skipped {bad_files['text']}: not decodable audio" in err and "Traceback" not in err
    assert "1 file(s) skipped" in out
    assert np.load(output).shape == (2, 512)
    listing = (tmp_path / "mixed.files.txt").read_text().splitlines()
    assert listing[:2] == [str(p) for p in good]
    assert listing[2].startswith(f"# skipped {bad_files['text']}: not decodable audio")


def test_get_emb_all_files_bad(checkpoints, bad_files, capsys, tmp_path):
    output = tmp_path / "none.npy"
    code, out, err = run(get_emb.main, capsys, "--get_embeddings", bad_files["silent"], bad_files["text"],
                         "--checkpoint_dir", checkpoints, "--output", str(output))
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == "error: none of the 2 file(s) could be embedded; nothing written"
    assert not output.exists()
    assert f"skipped {bad_files['silent']}: " in err and f"skipped {bad_files['text']}: " in err


# --- evaluate -----------------------------------------------------------------------------------

def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_audio_dir(vctk, checkpoints, tmp_path, capsys):
    output = tmp_path / "eval"
    code, out, err = run(evaluate.main, capsys, "--audio_dir", vctk, "--output_dir", output, "--plot_embeddings",
                         "--checkpoint_dir", checkpoints)
    assert code == 0, err
    metrics = json.loads((output / "metrics.json").read_text())
    for key in ("eer", "min_dcf_0.01", "min_dcf_0.05"):
        assert 0.0 <= metrics[key] <= 1.0
    files = 34
    assert metrics["num_files"] == files and metrics["skipped_files"] == 0
    assert metrics["num_target"] + metrics["num_nontarget"] == files * (files - 1) // 2
    lines = (output / "scores.tsv").read_text().splitlines()
    assert lines[0] == "label\tscore\tcosine\tfile1\tfile2" and len(lines) == 1 + files * (files - 1) // 2
    for name in ("det_curve", "score_histograms", "similarity_matrix", "embeddings_2d"):
        _assert_png(output / f"{name}.png")
    low, high = metrics["eer_ci95"]  # speakers are the folders: a speaker-bootstrap interval
    assert 0.0 <= low <= high <= 1.0 and high > 0
    assert "EER" in out and "95 % interval" in out


def test_evaluate_trials_file(wav, checkpoints, tmp_path, capsys):
    trials = tmp_path / "trials.txt"
    trials.write_text("# label path1 path2\n"
                      "1 p225/p225_001.wav p225/p225_002.wav\n"
                      "0 p225/p225_001.wav p226/p226_001.wav  # same file twice in the list\n\n"
                      "target p226/p226_001.wav p226/p226_003.wav\n"
                      "nontarget p226/p226_002.wav p227/p227_001.wav\n")
    output = tmp_path / "eval"
    code, out, err = run(evaluate.main, capsys, "--trials", trials, "--audio_root", wav, "--output_dir", output,
                         "--checkpoint_dir", checkpoints)
    assert code == 0, err
    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["num_target"], metrics["num_nontarget"], metrics["num_files"]) == (2, 2, 6)
    rows = [line.split("\t") for line in (output / "scores.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "0", "1", "0"]
    assert rows[0][3:] == [str(wav / "p225" / "p225_001.wav"), str(wav / "p225" / "p225_002.wav")]
    assert rows[0][1] == rows[0][2]  # a model without a score cohort: the score is the cosine
    for name in ("det_curve", "score_histograms", "similarity_matrix"):
        _assert_png(output / f"{name}.png")
    assert not (output / "embeddings_2d.png").exists()


def _link(target: Path, link: Path) -> str:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return str(link)


def test_evaluate_trials_file_names_speakers_by_their_own_folders(tiny_librispeech, wav, checkpoints, tmp_path,
                                                                   capsys):
    """Issue 25 §4: a trial list over several sets in one root (`set/<spk>/<chapter>/<spk>-...flac`,
    `set/<spk>/file.wav`) identifies the 5 speakers, not the 2 sets the first path component names."""
    root = tiny_librispeech  # train-clean-100/{19,26,27}/<chapter>/<spk>-<chapter>-<utt>.flac: 3 speakers
    libri = sorted(str(p.relative_to(root)) for p in root.rglob("*.flac"))
    calls = [_link(wav / speaker / f"{speaker}_00{k}.wav", root / "calls" / speaker / name)  # folder-per-speaker
             for speaker in ("p225", "p226") for k, name in ((1, "first.wav"), (2, "second.wav"))]
    calls = [str(Path(path).relative_to(root)) for path in calls]
    truth = {name: name.split("/")[1] for name in libri + calls}
    names = sorted(truth)
    lines = [f"{int(truth[a] == truth[b])} {a} {b}" for k, a in enumerate(names) for b in names[k + 1:]]
    trials_file = tmp_path / "trials.txt"
    trials_file.write_text("\n".join(lines) + "\n")

    trials = evaluation.trials_from_list(trials_file, root)
    assert trials.speakers == [truth[str(Path(path).relative_to(root))] for path in trials.files]

    output = tmp_path / "eval"
    code, out, err = run(evaluate.main, capsys, "--trials", trials_file, "--audio_root", root, "--output_dir", output,
                         "--checkpoint_dir", checkpoints)
    assert code == 0, err
    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["num_files"], metrics["skipped_files"]) == (13, 0)
    assert (metrics["identification_speakers"], metrics["identification_queries"]) == (5, 8)
    assert 0.0 <= metrics["top1_accuracy"] <= metrics["top5_accuracy"] == 1.0  # 5 speakers: all in the top 5
    assert "identification_not_available" not in metrics
    low, high = metrics["eer_ci95"]  # the speaker bootstrap ran: its speakers agree with every label
    assert 0.0 <= low <= high <= 1.0
    assert "(8 queries against 5 speakers enrolled with one utterance each)" in out
    _assert_png(output / "similarity_matrix.png")


def test_evaluate_trials_file_without_speaker_folders_reports_no_identification(wav, checkpoints, tmp_path, capsys):
    """Files directly in the audio root: the trials do not say who is who, so no identification
    figures (null, and a line saying why), no speaker interval, no speaker plots; the EER stands."""
    root = tmp_path / "flat"
    for name, source in (("a.wav", "p225/p225_001.wav"), ("b.wav", "p225/p225_002.wav"),
                         ("c.wav", "p226/p226_001.wav")):
        _link(wav / source, root / name)
    trials_file = tmp_path / "trials.txt"
    trials_file.write_text("1 a.wav b.wav\n0 a.wav c.wav\n0 b.wav c.wav\n")
    output = tmp_path / "eval"
    code, out, err = run(evaluate.main, capsys, "--trials", trials_file, "--audio_root", root, "--output_dir", output,
                         "--checkpoint_dir", checkpoints)
    assert code == 0, err
    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["num_target"], metrics["num_nontarget"]) == (1, 2) and 0.0 <= metrics["eer"] <= 1.0
    assert metrics["top1_accuracy"] is None and metrics["top5_accuracy"] is None
    assert metrics["identification_speakers"] is None and "eer_ci95" not in metrics
    assert "a.wav lies directly in the audio root" in metrics["identification_not_available"]
    assert "identification: top-1" not in out
    assert re.search(r"^identification not available: a\.wav lies directly in the audio root .*not in a speaker "
                     r"folder", out, re.M), out
    _assert_png(output / "det_curve.png")
    assert not (output / "similarity_matrix.png").exists()


def test_trials_whose_labels_contradict_their_folders_name_no_speakers(tmp_path):
    """VoxCeleb's layout, `<speaker>/<video>/<n>.wav`: the file's folder is a video, and a
    target trial across two videos says so; no speakers rather than wrong ones."""
    trials_file = tmp_path / "trials.txt"
    trials_file.write_text("0 id1/videoA/1.wav id2/videoC/1.wav\n1 id1/videoA/1.wav id1/videoB/2.wav\n")
    trials = evaluation.trials_from_list(trials_file, tmp_path)
    assert trials.speakers is None
    assert trials.no_speakers_reason == (f"{trials_file}:2: a target trial pairs files of speakers 'videoA' and "
                                         f"'videoB' as their folders name them, so the folders do not say who is who")
    trials_file.write_text("1 id1/videoA/1.wav id1/videoA/2.wav\n0 id1/videoA/1.wav id2/videoC/1.wav\n")
    assert evaluation.trials_from_list(trials_file, tmp_path).speakers == ["videoA", "videoA", "videoC"]


def test_evaluate_malformed_trials_names_line(checkpoints, tmp_path, capsys):
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a.wav b.wav\nmaybe a.wav b.wav\n")
    line = error_line(*run(evaluate.main, capsys, "--trials", trials, "--output_dir", tmp_path / "out",
                           "--checkpoint_dir", checkpoints)[::2])
    assert line.startswith(f"error: {trials}:2: ")


# --- every script answers --help ----------------------------------------------------------------

SCRIPTS = ("preprocess", "train_cli", "comp_cos", "get_emb", "evaluate", "export_model", "download_vctk", "identify")


def test_every_script_answers_help():
    import importlib

    env = {**os.environ, "COLUMNS": "120"}
    running = {name: subprocess.Popen([sys.executable, str(REPO_ROOT / "scripts" / f"{name}.py"), "--help"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for name in SCRIPTS}
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, f"{name}: {err}"
        assert out.startswith("usage: "), name
        flags = [flag for action in importlib.import_module(f"deep_speaker.commands.{name}").build_parser()._actions
                 for flag in action.option_strings]
        assert len(flags) > 2
        missing = [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out)]
        assert not missing, f"{name} --help does not list {missing}"
