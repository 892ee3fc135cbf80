"""Log mel filterbanks and per-utterance CMVN, checked against a slow literal reference."""
from __future__ import annotations

import math

import numpy as np
import pytest

from deep_speaker.config import Config
from deep_speaker.features import compute_fbank, normalize_utterance, utterance_features
from deep_speaker.training_inputs import speaker_inputs

CONFIG = Config()
RATE = CONFIG.sample_rate_hz  # 8000
FRAME = 200  # 25 ms at 8 kHz
HOP = 80  # 10 ms
NFFT = 512
NUM_FILTERS = 64
PREEMPHASIS = 0.97
# Tolerance of the comparison with the float64 reference, in float32 terms.
RTOL = ATOL = 1e-4


def _speech_like(seconds: float, seed: int) -> np.ndarray:
    """Noise shaped by a moving formant plus a pitch pulse train: every band gets energy."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    pulses = np.sin(2 * np.pi * (120 + 30 * np.sin(2 * np.pi * 1.5 * t)) * t) ** 15
    signal = 0.3 * pulses + 0.05 * rng.standard_normal(n)
    signal += 0.2 * np.sin(2 * np.pi * (500 + 1500 * t / seconds) * t)
    return (signal * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _reference_filterbank() -> np.ndarray:
    """HTK mel triangles over rfft bins, built like python_speech_features.get_filterbanks."""
    def hz_to_mel(hz):
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    def mel_to_hz(mel):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    low, high = hz_to_mel(0.0), hz_to_mel(RATE / 2)
    mel_points = [low + (high - low) * k / (NUM_FILTERS + 1) for k in range(NUM_FILTERS + 2)]
    bins = [math.floor((NFFT + 1) * mel_to_hz(m) / RATE) for m in mel_points]
    bank = np.zeros((NUM_FILTERS, NFFT // 2 + 1))
    for j in range(NUM_FILTERS):
        left, centre, right = bins[j], bins[j + 1], bins[j + 2]
        for i in range(left, centre):
            bank[j, i] = (i - left) / (centre - left)
        for i in range(centre, right):
            bank[j, i] = (right - i) / (right - centre)
    return bank


def _reference_log_fbank(audio: np.ndarray) -> np.ndarray:
    """One frame at a time: pre-emphasis (y[n] = x[n] - 0.97 x[n-1], y[0] = x[0], taken
    across frame boundaries like python_speech_features), symmetric Hamming window,
    |rfft|^2 / NFFT with NFFT = 512, mel filterbank, natural log. Whole frames only."""
    x = np.asarray(audio, dtype=np.float64)
    bank = _reference_filterbank()
    window = np.array([0.54 - 0.46 * math.cos(2 * math.pi * k / (FRAME - 1)) for k in range(FRAME)])
    rows = []
    start = 0
    while start + FRAME <= len(x):
        frame = np.empty(FRAME)
        for k in range(FRAME):
            n = start + k
            frame[k] = x[n] - PREEMPHASIS * x[n - 1] if n > 0 else x[0]
        spectrum = np.fft.rfft(frame * window, NFFT)
        power = np.abs(spectrum) ** 2 / NFFT
        energies = bank @ power
        energies[energies == 0] = np.finfo(float).eps
        rows.append(np.log(energies))
        start += HOP
    return np.array(rows)


def test_config_matches_the_reference_settings():
    assert (CONFIG.frame_length_samples, CONFIG.frame_shift_samples) == (FRAME, HOP)
    assert (CONFIG.fft_size, CONFIG.num_fbanks, CONFIG.preemphasis) == (NFFT, NUM_FILTERS, PREEMPHASIS)


@pytest.mark.parametrize("num_samples", [200, 279, 280, 281, 8000, 12345])
def test_fbank_shape_counts_whole_frames_only(num_samples):
    audio = np.random.default_rng(num_samples).normal(size=num_samples).astype(np.float32)
    fbank = compute_fbank(audio, CONFIG)
    assert fbank.shape == (1 + (num_samples - FRAME) // HOP, NUM_FILTERS)
    assert fbank.dtype == np.float32


def test_audio_shorter_than_one_frame_is_an_error():
    with pytest.raises(ValueError, match="too short"):
        compute_fbank(np.ones(FRAME - 1, dtype=np.float32), CONFIG)


@pytest.mark.parametrize("seed, seconds", [(0, 0.5), (1, 1.03)])
def test_fbank_matches_slow_per_frame_reference(seed, seconds):
    audio = _speech_like(seconds, seed)
    expected = _reference_log_fbank(audio)
    actual = compute_fbank(audio, CONFIG)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def test_fbank_of_real_speech_matches_reference(samples_dir):
    from deep_speaker.audio import load_utterance

    path = samples_dir / "PhilippeRemy" / "PhilippeRemy_002.wav"
    audio = load_utterance(path, CONFIG).audio_voice_only[: RATE]  # 1 s keeps the slow loop short
    np.testing.assert_allclose(compute_fbank(audio, CONFIG), _reference_log_fbank(audio), rtol=RTOL, atol=ATOL)


def test_frames_depend_only_on_their_own_samples():
    """No padding, global normalisation or look-ahead in the raw fbank: the frames of
    a prefix are the first frames of the whole, and a frame depends only on its 200
    samples plus the one sample before (pre-emphasis)."""
    audio = _speech_like(1.0, 3)
    whole = compute_fbank(audio, CONFIG)
    np.testing.assert_allclose(compute_fbank(audio[:FRAME + 10 * HOP], CONFIG), whole[:11], rtol=1e-6, atol=1e-6)
    # audio[19*HOP:] frames start at 19*HOP + k*HOP: its frame 1 is the whole's frame 20,
    # and its first sample (19*HOP) lies before, so pre-emphasis sees the same input.
    np.testing.assert_allclose(compute_fbank(audio[19 * HOP:], CONFIG)[1:], whole[20:], rtol=1e-6, atol=1e-6)


def test_a_batch_of_utterances_equals_one_at_a_time(tmp_path):
    """speaker_inputs featurises a speaker's utterances together; each must equal
    the same utterance featurised alone (no state, padding or shared statistics)."""
    import pickle

    lengths = [9000, 4000, 13000, 6500, 8000]
    utterances = [_speech_like(n / RATE, seed) for seed, n in enumerate(lengths)]
    files = []
    for i, audio in enumerate(utterances):
        record = {"filename": f"u{i}.wav", "speaker_id": "s", "utterance_id": f"s_{i}", "sample_rate": RATE,
                  "left_blank_duration_ms": 0.0, "right_blank_duration_ms": 0.0,
                  "audio_voice_only": audio, "audio": audio}
        files.append(tmp_path / f"s_{i}.pkl")
        files[-1].write_bytes(pickle.dumps(record))
    inputs = speaker_inputs("s", files, CONFIG)
    batch = dict(zip(inputs["train_utterances"] + inputs["test_utterances"], inputs["train"] + inputs["test"]))
    assert sorted(batch) == [f"s_{i}" for i in range(len(lengths))]
    for i, audio in enumerate(utterances):
        np.testing.assert_array_equal(batch[f"s_{i}"], utterance_features(audio, CONFIG))


def test_cmvn_gives_zero_mean_unit_variance():
    features = utterance_features(_speech_like(1.5, 4), CONFIG)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(features.std(axis=0), 1.0, atol=1e-3)


def test_cmvn_is_invariant_to_gain():
    audio = _speech_like(1.5, 5)
    quiet, loud = utterance_features(audio, CONFIG), utterance_features(3 * audio, CONFIG)
    raw_quiet, raw_loud = compute_fbank(audio, CONFIG), compute_fbank(3 * audio, CONFIG)
    np.testing.assert_allclose(raw_loud - raw_quiet, np.log(9.0), atol=1e-4)  # gain shifts every band by log 9
    np.testing.assert_allclose(loud, quiet, atol=1e-4)


def test_cmvn_of_a_constant_band_is_finite():
    fbank = np.array([[1.0, 5.0], [1.0, 7.0], [1.0, 9.0]], dtype=np.float32)
    normalised = normalize_utterance(fbank)
    assert np.all(np.isfinite(normalised))
    np.testing.assert_array_equal(normalised[:, 0], 0.0)
    np.testing.assert_allclose(normalised[:, 1], [-1.2247, 0.0, 1.2247], atol=1e-3)
