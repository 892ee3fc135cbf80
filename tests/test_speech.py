"""Speech presence (deep_speaker/speech.py): noise, tones and silence are
reported as "no speech"; no real utterance of ../shared/data is.

The real-speech case covers a fixed sample of every set (every 6th file in
sorted order, about 900 files) plus the files with the least margin when the
thresholds were set; the whole of ../shared/data (5338 files) passed too
(run with DEEP_SPEAKER_ALL_SPEECH=1 to check all of them, about a minute).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from deep_speaker.audio import read_audio, resample
from deep_speaker.speech import detect_speech

RATE = 8000
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
# Real files closest to the thresholds (fewest speech-like frames, smallest share of them).
HARD_CASES = ("fsdd/nicolas/nicolas_6_7.wav", "fsdd/nicolas/nicolas_2_3.wav",
              "speechcommands/85d2ac4b/85d2ac4b_002.ogg", "speechcommands/8ea6dec6/8ea6dec6_003.ogg",
              "fsdd/nicolas/nicolas_6_8.wav", "fsdd/lucas/lucas_6_4.wav", "wuw2/W107/00139_009.ogg",
              "wuw2/W051/00230_010.ogg")


def _colored_noise(seconds: float, exponent: float, seed: int) -> np.ndarray:
    """Noise with power spectrum 1/f**exponent (0 white, 1 pink), RMS 0.1."""
    count = int(seconds * RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(count))
    frequencies = np.fft.rfftfreq(count, 1.0 / RATE)
    frequencies[0] = frequencies[1]
    noise = np.fft.irfft(spectrum / frequencies ** (exponent / 2), count)
    return (0.1 * noise / noise.std()).astype(np.float32)


def _tone(frequency: float, seconds: float = 3.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


@pytest.mark.parametrize("name, audio", [
    ("white noise", _colored_noise(3.0, 0.0, 1)),
    ("quiet white noise", 0.01 * _colored_noise(3.0, 0.0, 2)),
    ("pink noise", _colored_noise(5.0, 1.0, 3)),
    ("tone 100 Hz", _tone(100.0)),
    ("tone 440 Hz", _tone(440.0)),
    ("tone 1 kHz", _tone(1000.0)),
    ("tone 3 kHz", _tone(3000.0)),
    ("tone in silence", np.concatenate([np.zeros(RATE, np.float32), _tone(440.0, 1.0), np.zeros(RATE, np.float32)])),
    ("beeps", np.tile(np.concatenate([_tone(800.0, 0.2), np.zeros(1600, np.float32)]), 10)),
    ("noise bursts", _colored_noise(4.0, 0.0, 4) * (np.sin(2 * np.pi * 3 * np.arange(4 * RATE) / RATE) > 0)),
    ("silence", np.zeros(3 * RATE, np.float32)),
    ("dither", (1e-5 * np.random.default_rng(5).standard_normal(3 * RATE)).astype(np.float32)),
])
def test_noise_tones_and_silence_have_no_speech(name, audio):
    report = detect_speech(audio, RATE)
    assert not report.has_speech, (name, report)
    assert report.reason.startswith("no speech detected"), report.reason


def test_ten_minutes_of_white_noise_and_six_channel_noise_have_no_speech():
    noise = _colored_noise(600.0, 0.0, 6)
    assert not detect_speech(noise, RATE).has_speech
    six = np.random.default_rng(7).standard_normal((3 * 48000, 6)).astype(np.float32) * 0.3
    mono = resample(six.mean(axis=1), 48000, RATE)  # what decoding does with six channels
    assert not detect_speech(mono, RATE).has_speech


def _real_files(shared_data, every: int) -> list:
    files = sorted(p for p in shared_data.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    chosen = files if every == 1 else files[::every]
    chosen += [shared_data / case for case in HARD_CASES if (shared_data / case).is_file()]
    return chosen


def test_no_real_utterance_is_rejected(shared_data):
    every = 1 if os.environ.get("DEEP_SPEAKER_ALL_SPEECH") else 6
    files = _real_files(shared_data, every)
    sets = {p.relative_to(shared_data).parts[0] for p in files}
    assert len(files) > 500 and {"librispeech", "speechocean762", "vctk-mini", "speechcommands", "wuw2"} <= sets
    rejected = []
    for path in files:
        samples, rate = read_audio(path)
        report = detect_speech(resample(samples, rate, RATE), RATE)
        if not report.has_speech:
            rejected.append(f"{path}: {report.reason}")
    assert not rejected, rejected
