"""Recordings of any length (deep_speaker/long_audio.py): overlapping segments,
streamed decoding, the frame-weighted mean, and bounded memory on a synthetic
30-minute file (with a width-0.125 model built here)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile
import soxr

from conftest import TINY_CONFIG
from deep_speaker.audio import trim_utterance
from deep_speaker.features import utterance_features
from deep_speaker.long_audio import LONG_RECORDING_S, SEGMENT_HOP_S, SEGMENT_S, segments, stream_audio
from deep_speaker.speech import detect_speech

TINY = TINY_CONFIG  # tiny_model's config
RATE = 8000


def speechlike(seconds: float, rate: int = RATE, seed: int = 0, start_s: float = 0.0) -> np.ndarray:
    """A vowel-like test signal: harmonics of a gliding 100-220 Hz pitch under
    formant-like weights, in syllables of 120-300 ms with pauses."""
    rng = np.random.default_rng(seed)
    t = start_s + np.arange(int(round(seconds * rate))) / rate
    f0 = 160 + 60 * np.sin(2 * np.pi * 0.37 * t) * np.sin(2 * np.pi * 0.05 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    formants = np.array([500.0, 1500.0, 2500.0]) * (1 + 0.2 * np.sin(2 * np.pi * 0.3 * seed))
    audio = np.zeros_like(t)
    for k in range(1, 20):
        weight = sum(np.exp(-((k * f0 - f) / 150.0) ** 2) for f in formants) + 0.05
        audio += weight * np.sin(k * phase) / k
    syllables = (np.sin(2 * np.pi * 2.1 * t) + 0.6 * np.sin(2 * np.pi * 0.7 * t + 1.0)) > 0.2
    audio = 0.3 * audio / np.max(np.abs(audio)) * syllables + 0.002 * rng.standard_normal(len(t))
    return audio.astype(np.float32)


def write_speechlike(path, minutes: float, rate: int = RATE) -> None:
    """The same 20 s of `speechlike` over and over, written block by block: the
    test never holds the whole recording either."""
    block = speechlike(20.0, rate)
    with soundfile.SoundFile(str(path), "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as out:
        for _ in range(int(minutes * 3)):
            out.write(block)


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model):
    from deep_speaker.encoder import SpeakerEncoder

    return SpeakerEncoder(tiny_model)


def test_the_test_signal_counts_as_speech():
    assert detect_speech(speechlike(10.0), RATE).has_speech


@pytest.mark.parametrize("seconds", [1, 29.99, 30, 45, 50, 50.5, 70, 601])
def test_segments_cover_the_recording_with_overlap(seconds):
    rate = 100
    audio = np.arange(int(seconds * rate), dtype=np.float32)
    blocks = [audio[i:i + 123] for i in range(0, len(audio), 123)]  # blocks of any size
    pieces = list(segments(blocks, rate))
    length, hop = int(SEGMENT_S * rate), int(SEGMENT_HOP_S * rate)
    assert pieces[0][0] == 0 and pieces[-1][-1] == audio[-1]  # from the first sample to the last
    for piece in pieces[:-1]:
        assert len(piece) == length
    for first, second in zip(pieces, pieces[1:]):
        assert second[0] - first[0] <= hop and second[0] > first[0]  # overlapping, moving on
    if len(audio) >= length:
        assert len(pieces[-1]) > length - hop  # the last segment is not a sliver
    else:
        assert len(pieces) == 1 and len(pieces[0]) == len(audio)


def test_streamed_decoding_matches_whole_decoding(tmp_path):
    path = tmp_path / "two_minutes.flac"
    write_speechlike(path, 2.0, rate=16000)
    streamed = np.concatenate(list(stream_audio(path, RATE)))
    whole = soxr.resample(soundfile.read(str(path), dtype="float32")[0], 16000, RATE, quality="HQ")
    assert abs(len(streamed) - len(whole)) <= 1
    n = min(len(streamed), len(whole))
    np.testing.assert_allclose(streamed[:n], whole[:n], atol=2e-3)


def test_long_waveform_is_the_frame_weighted_mean_of_its_segments(tiny_encoder):
    audio = speechlike(70.0, seed=3)
    assert len(audio) / RATE > LONG_RECORDING_S
    result = tiny_encoder.embed_waveform(audio, RATE)
    total = np.zeros(tiny_encoder.embedding_dim)
    for start, stop in ((0, 30), (20, 50), (40, 70)):  # 30 s segments every 20 s
        piece = audio[start * RATE:stop * RATE]
        frames = len(utterance_features(trim_utterance(piece, TINY).audio_voice_only, TINY))
        total += frames * tiny_encoder.embed_waveform(piece, RATE)
    np.testing.assert_allclose(result, total / np.linalg.norm(total), atol=1e-5)
    # A recording up to 60 s is embedded whole, as before.
    short = audio[:50 * RATE]
    features = utterance_features(trim_utterance(short, TINY).audio_voice_only, TINY)
    np.testing.assert_array_equal(tiny_encoder.embed_waveform(short, RATE), tiny_encoder.embed_features([features])[0])


def test_thirty_minute_file_in_bounded_memory(tiny_encoder, tmp_path):
    """30 minutes streamed: numpy's peak allocation stays near one segment's
    needs (about 20 MB) instead of the whole recording's (115 MB for the decoded
    float32 samples at 16 kHz alone, far more for its features)."""
    path = tmp_path / "thirty_minutes.flac"
    write_speechlike(path, 30.0, rate=16000)
    tracemalloc.start()
    try:
        vector = tiny_encoder.embed_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert vector.shape == (tiny_encoder.embedding_dim,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    assert peak < 60e6, f"peak {peak / 1e6:.0f} MB"
    # The same 20 s throughout: the whole is close to its first segment.
    first = soundfile.read(str(path), frames=30 * 16000, dtype="float32")[0]
    assert tiny_encoder.similarity(vector, tiny_encoder.embed_waveform(first, 16000)) > 0.95


def test_long_noise_is_reported_as_no_speech(tiny_encoder, tmp_path):
    from deep_speaker.encoder import NoSpeechError

    path = tmp_path / "noise.flac"
    with soundfile.SoundFile(str(path), "w", samplerate=RATE, channels=1, format="FLAC") as out:
        rng = np.random.default_rng(0)
        for _ in range(10):  # 100 s of white noise
            out.write((0.1 * rng.standard_normal(10 * RATE)).astype(np.float32))
    with pytest.raises(NoSpeechError, match=r"noise\.flac: none of its 5 segments of 30 s could be embedded "
                                            r"\(first: no speech detected"):
        tiny_encoder.embed_file(path)
    assert tiny_encoder.embed_file(path, require_speech=False).shape == (tiny_encoder.embedding_dim,)


def test_a_long_file_damaged_part_way_is_a_clear_error(tiny_encoder, tmp_path):
    from deep_speaker.audio import AudioError

    whole = tmp_path / "whole.flac"
    write_speechlike(whole, 1.5)
    cut = tmp_path / "cut.flac"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=rf"^{cut}: not decodable audio after \d+\.\d s"):
        tiny_encoder.embed_file(cut)
