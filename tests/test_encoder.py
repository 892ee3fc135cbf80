"""The Python API (deep_speaker.encoder.SpeakerEncoder): the same numbers as the
commands, every scoring command built on it, errors that name the file, the
README's example as written, and no TensorFlow on `import deep_speaker`.

Uses the pretrained model shipped in the package and the vendored demo corpus.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from deep_speaker.audio import AudioError
from deep_speaker.checkpoints import resolve_model
from deep_speaker.encoder import FileEmbeddings, NoSpeechError, SpeakerEncoder
from deep_speaker.scoring import Embedder, ScoringError, speaker_embedding
from deep_speaker.score_norm import COHORT_FILE, ScoreNormalizer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "deep-speaker-data" / "demo"
WAV48 = DEMO / "VCTK-Corpus" / "wav48"
PHILIPPE = DEMO / "samples" / "PhilippeRemy"


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder()


@pytest.fixture(scope="module")
def demo_files() -> list[str]:
    files = [str(WAV48 / "p225" / f"p225_00{i}.flac") for i in (1, 2)]
    files += [str(WAV48 / "p226" / "p226_001.flac"), str(PHILIPPE / "PhilippeRemy_001.wav")]
    return files


@pytest.fixture
def noise_file(tmp_path) -> Path:
    path = tmp_path / "noise.wav"
    soundfile.write(str(path), np.random.default_rng(0).normal(0, 0.1, 3 * 16000).astype(np.float32), 16000)
    return path


def test_import_deep_speaker_does_not_load_tensorflow():
    code = "import sys, deep_speaker; assert 'tensorflow' not in sys.modules; print(deep_speaker.__all__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "SpeakerEncoder" in done.stdout


def test_short_files_keep_the_commands_whole_utterance_embedding(encoder, demo_files):
    """Exactly what scoring.Embedder (the commands' path before the API) gives."""
    embedder = Embedder(resolve_model())
    for path in demo_files:
        vector = encoder.embed_file(path)
        assert vector.shape == (encoder.embedding_dim,) and vector.dtype == np.float32
        np.testing.assert_array_equal(vector, embedder.embed_file(path))


def test_api_and_get_emb_give_identical_embeddings(encoder, demo_files, tmp_path, capsys):
    from deep_speaker.commands import get_emb

    output = tmp_path / "emb.npy"
    assert get_emb.main(["--get_embeddings", *demo_files, "--output", str(output),
                         "--checkpoint", str(encoder.model_path)]) == 0
    capsys.readouterr()
    from_cli = np.load(output)
    assert (tmp_path / "emb.files.txt").read_text().split() == demo_files
    np.testing.assert_array_equal(encoder.embed_files(demo_files), from_cli)
    np.testing.assert_array_equal(np.stack([encoder.embed_file(f) for f in demo_files]), from_cli)


def test_embed_files_in_order_with_and_without_the_pool(encoder, demo_files):
    pooled = encoder.embed_files(demo_files * 2, batch_size=3)
    encoder.workers, workers = 1, encoder.workers
    try:
        alone = encoder.embed_files(demo_files * 2)
    finally:
        encoder.workers = workers
    np.testing.assert_array_equal(pooled, alone)
    np.testing.assert_array_equal(pooled[:4], pooled[4:])
    assert encoder.embed_files([]).shape == (0, encoder.embedding_dim)


def test_a_bad_file_raises_with_its_path_or_is_listed_with_skip(encoder, demo_files, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio\n")
    paths = [demo_files[0], str(broken), demo_files[1]]
    with pytest.raises(AudioError, match=rf"^{re.escape(str(broken))}: not decodable audio"):
        encoder.embed_files(paths)
    result = encoder.embed_files(paths, skip=True)
    assert isinstance(result, FileEmbeddings)
    assert result.files == [demo_files[0], demo_files[1]] and result.embeddings.shape == (2, encoder.embedding_dim)
    assert result.skipped == [(str(broken), result.skipped[0][1])] and "not decodable" in result.skipped[0][1]


def test_waveform_in_memory_equals_the_file(encoder, demo_files):
    samples, rate = soundfile.read(demo_files[0], dtype="float32")
    np.testing.assert_array_equal(encoder.embed_waveform(samples, rate), encoder.embed_file(demo_files[0]))
    stereo = np.stack([samples, samples], axis=1)
    np.testing.assert_allclose(encoder.embed_waveform(stereo, rate), encoder.embed_file(demo_files[0]), atol=1e-6)
    as_int16 = np.round(samples * 32767).astype(np.int16)
    assert encoder.similarity(encoder.embed_waveform(as_int16, rate), encoder.embed_file(demo_files[0])) > 0.999
    with pytest.raises(AudioError, match="waveform: audio holds NaN"):
        encoder.embed_waveform(np.full(8000, np.nan, np.float32), 8000)


def test_similarity_verify_and_speaker_embedding(encoder, demo_files, tmp_path):
    a, b = encoder.embed_file(demo_files[0]), encoder.embed_file(demo_files[1])
    assert encoder.similarity(a, a) == pytest.approx(1.0, abs=1e-6)
    assert encoder.similarity(a, b) == pytest.approx(float(np.dot(a, b)), abs=1e-6)
    decision = encoder.verify(demo_files[0], demo_files[1], threshold=0.3)
    assert bool(decision) is decision.same_speaker and decision.similarity == pytest.approx(encoder.similarity(a, b))
    score = encoder.score(a, b)  # AS-norm when the model ships a cohort, else the cosine
    assert encoder.verify(a, b, threshold=score - 1e-6) and not encoder.verify(a, b, threshold=score + 1e-6)
    assert encoder.verify(a, b, threshold=score).score == pytest.approx(score)
    np.testing.assert_allclose(encoder.embed_speaker(demo_files[:2]), speaker_embedding(np.stack([a, b])), atol=1e-6)

    # The model's EER threshold: an error naming threshold.json when absent, used when stored beside the model.
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("embedding.keras", "config.json"):
        shutil.copyfile(encoder.model_path.parent / name, folder / name)
    bare = SpeakerEncoder(folder / "embedding.keras")
    assert bare.threshold is None
    with pytest.raises(ScoringError, match=r"threshold\.json holds none for cosine scores; pass threshold="):
        bare.verify(a, b)
    (folder / "threshold.json").write_text(json.dumps({"threshold": 0.5, "eer": 0.1, "source": "test"}))
    stored = SpeakerEncoder(folder / "embedding.keras")
    assert stored.threshold == 0.5
    assert stored.verify(a, b).threshold == 0.5
    assert bare.score_kind == "cosine" and bare.score(a, b) == pytest.approx(bare.similarity(a, b))

    # A score cohort beside the model: verify compares AS-norm scores with the AS-norm threshold.
    cohort = ScoreNormalizer(np.random.default_rng(0).normal(size=(20, encoder.embedding_dim)), top_k=5)
    cohort.cohort /= np.linalg.norm(cohort.cohort, axis=1, keepdims=True)
    cohort.save(folder / COHORT_FILE, folder / "embedding.keras")
    (folder / "threshold.json").write_text(json.dumps({"threshold": 0.5, "as_norm_threshold": 2.0}))
    normed = SpeakerEncoder(folder / "embedding.keras")
    assert normed.score_kind == "as-norm" and normed.score_threshold == 2.0 and normed.threshold == 0.5
    expected = ScoreNormalizer.load(folder / COHORT_FILE, folder / "embedding.keras").pair_score(a, b)
    decision = normed.verify(a, b)
    assert decision.score == pytest.approx(expected, rel=1e-5) and decision.threshold == 2.0
    assert decision.same_speaker == (expected >= 2.0) and decision.score_kind == "as-norm"
    raw = SpeakerEncoder(folder / "embedding.keras", score_norm=False)
    assert raw.score_kind == "cosine" and raw.verify(a, b).threshold == 0.5
    (folder / "threshold.json").write_text(json.dumps({"threshold": "high"}))
    with pytest.raises(ScoringError, match="not a usable threshold file"):
        SpeakerEncoder(folder / "embedding.keras")


def test_no_speech_is_an_error_unless_asked_to_embed_anyway(encoder, noise_file):
    with pytest.raises(NoSpeechError, match=rf"^{re.escape(str(noise_file))}: no speech detected"):
        encoder.embed_file(noise_file)
    vector = encoder.embed_file(noise_file, require_speech=False)
    assert vector.shape == (encoder.embedding_dim,) and np.all(np.isfinite(vector))
    six_channels = np.random.default_rng(1).normal(0, 0.2, (3 * 8000, 6)).astype(np.float32)
    with pytest.raises(NoSpeechError, match="^waveform: no speech detected"):
        encoder.embed_waveform(six_channels, 8000)


def test_commands_report_no_speech(encoder, demo_files, noise_file, tmp_path, capsys):
    from deep_speaker.commands import comp_cos, get_emb

    model = ["--checkpoint", str(encoder.model_path)]
    output = tmp_path / "e.npy"
    assert get_emb.main(["--get_embeddings", demo_files[0], str(noise_file), "--output", str(output), *model]) == 0
    err = capsys.readouterr().err
    assert re.search(rf"^skipped {re.escape(str(noise_file))}: no speech detected", err, re.M), err
    assert np.load(output).shape == (1, encoder.embedding_dim)

    assert comp_cos.main(["--files", demo_files[0], str(noise_file), *model]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {noise_file}: no speech detected"), lines
    assert comp_cos.main(["--files", demo_files[0], str(noise_file), "--allow_no_speech", *model]) == 0
    assert "files (" in capsys.readouterr().out


def test_every_scoring_command_is_built_on_the_api(encoder, demo_files, tmp_path, monkeypatch, capsys):
    """get_emb (files and cached speaker), comp_cos (files and SAN), evaluate and
    identify all embed through SpeakerEncoder."""
    from deep_speaker.commands import comp_cos, evaluate, get_emb, identify, preprocess

    calls: list[str] = []
    for name in ("embed_file", "embed_files", "embed_features"):
        original = getattr(SpeakerEncoder, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(SpeakerEncoder, name, spy)
    monkeypatch.setattr(Embedder, "embed_file", lambda *a, **k: pytest.fail("a command bypassed SpeakerEncoder"))

    corpus = tmp_path / "corpus"
    for speaker, files in {"p225": demo_files[:2], "p226": [demo_files[2], str(WAV48 / "p226" / "p226_002.flac")]
                           }.items():
        (corpus / speaker).mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, corpus / speaker / Path(f).name)
    cache = tmp_path / "cache"
    assert preprocess.main(["--regenerate_full_cache", "--audio_dir", str(corpus), "--cache_output_dir",
                            str(cache)]) == 0
    model = ["--checkpoint", str(encoder.model_path)]
    runs = {
        "get_emb files": (get_emb, ["--get_embeddings", demo_files[0], *model]),
        "get_emb speaker": (get_emb, ["--get_embeddings", "p225", "--cache_output_dir", str(cache), *model]),
        "comp_cos files": (comp_cos, ["--files", demo_files[0], demo_files[1], *model]),
        "comp_cos speakers": (comp_cos, ["--unseen_speakers", "p225,p226", "--cache_output_dir", str(cache), *model]),
        "evaluate": (evaluate, ["--audio_dir", str(corpus), "--output_dir", str(tmp_path / "eval"), *model]),
        "identify --enroll": (identify, ["--enroll", str(corpus), "--output", str(tmp_path / "e.npz"), *model]),
        "identify --files": (identify, ["--enrolment", str(tmp_path / "e.npz"), "--files", demo_files[0], *model]),
    }
    for label, (command, argv) in runs.items():
        calls.clear()
        assert command.main(argv) == 0, (label, capsys.readouterr().err)
        assert calls, f"{label} did not embed through SpeakerEncoder"
    out = capsys.readouterr().out
    assert re.search(r"^identification: top-1 \d+\.\d %, top-5 \d+\.\d % \(2 queries against 2 speakers", out, re.M)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["top1_accuracy"] <= metrics["top5_accuracy"] == 1.0


def _readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_api_example_runs_as_written(monkeypatch):
    blocks = _readme_python_blocks()
    assert blocks, "README has no ```python block in its Python API section"
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["E"].shape[1] == namespace["e"].shape[0]
