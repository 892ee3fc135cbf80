"""Waveform augmentation of training utterances (stage 2, `--augment_copies N`).

The x-vector recipe (Snyder et al. 2018) adds degraded copies of every training
utterance (MUSAN noise, music, babble, simulated room reverberation) to its
speaker's data; the model then learns what stays of a voice under those
changes. No noise corpus ships here, so the degradations are synthetic and
seeded by utterance, which keeps the inputs bit-identical from run to run:

- reverberation (half the copies): convolution with a synthetic room impulse
  response, a direct path plus exponentially decaying noise (RT60 0.2-0.8 s);
- band limiting (half the copies): a 4th-order Butterworth band-pass with a
  random 100-400 Hz low edge and 2.8-3.8 kHz high edge, like a telephone line;
- additive coloured noise (every copy): white, pink or brown at 5-20 dB SNR.

Gain is not varied: per-utterance normalisation of log filterbanks (see
`deep_speaker.features`) removes any constant gain.
"""
from __future__ import annotations

import zlib

import numpy as np
from scipy import signal

# Bump when the degradations change, so stage 2 rebuilds the augmented inputs.
AUGMENTATION_VERSION = 1
NOISE_SLOPES = (0.0, 1.0, 2.0)  # power spectrum ~ 1/f^slope: white, pink, brown
SNR_RANGE_DB = (5.0, 20.0)
RT60_RANGE_S = (0.2, 0.8)
DIRECT_TO_REVERBERANT_DB = (0.0, 10.0)
LOW_EDGE_HZ = (100.0, 400.0)
HIGH_EDGE_HZ = (2800.0, 3800.0)


def utterance_rng(utterance_id: str, copy: int) -> np.random.Generator:
    """The generator of one augmented copy of one utterance (same id, same copy: same noise)."""
    return np.random.default_rng([zlib.crc32(utterance_id.encode()), copy])


def coloured_noise(num_samples: int, slope: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-power Gaussian noise whose power spectrum falls as 1/f^slope.

    >>> noise = coloured_noise(8000, 1.0, np.random.default_rng(0))
    >>> noise.shape, round(float(noise.std()), 6)
    ((8000,), 1.0)
    """
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    frequencies = np.fft.rfftfreq(num_samples)
    spectrum[1:] *= frequencies[1:] ** (-slope / 2)
    spectrum[0] = 0.0  # zero mean: its power is all noise
    noise = np.fft.irfft(spectrum, n=num_samples)
    return noise / max(float(np.sqrt(np.mean(noise ** 2))), 1e-12)


def _mean_power(audio: np.ndarray) -> float:
    return float(np.mean(np.square(audio, dtype=np.float64)))


def add_noise(audio: np.ndarray, snr_db: float, slope: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` plus coloured noise at `snr_db` below its mean power."""
    return audio + coloured_noise(len(audio), slope, rng) * np.sqrt(_mean_power(audio) / 10 ** (snr_db / 10))


def room_response(sample_rate_hz: int, rt60_s: float, direct_to_reverberant_db: float,
                  rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response: a unit direct path, then a noise tail
    decaying by 60 dB over rt60_s whose energy lies direct_to_reverberant_db below it."""
    length = max(2, int(rt60_s * sample_rate_hz))
    tail = rng.standard_normal(length - 1) * np.exp(-np.log(1000.0) * np.arange(1, length) / (rt60_s * sample_rate_hz))
    tail *= np.sqrt(10 ** (-direct_to_reverberant_db / 10) / np.sum(tail ** 2))
    return np.concatenate([[1.0], tail])


def reverberate(audio: np.ndarray, response: np.ndarray) -> np.ndarray:
    """`audio` convolved with `response`, cut to its length and brought back to its power."""
    wet = signal.fftconvolve(audio, response)[:len(audio)]
    scale = np.sqrt(_mean_power(audio) / max(_mean_power(wet), 1e-20))
    return wet * scale


def band_limit(audio: np.ndarray, sample_rate_hz: int, low_hz: float, high_hz: float) -> np.ndarray:
    """A 4th-order Butterworth band-pass (the high edge is kept below Nyquist)."""
    high_hz = min(high_hz, 0.95 * sample_rate_hz / 2)
    sos = signal.butter(4, [low_hz, high_hz], btype="bandpass", fs=sample_rate_hz, output="sos")
    return signal.sosfilt(sos, audio)


def augment_utterance(audio: np.ndarray, sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """One degraded copy of `audio` (same length, float32): maybe reverberant,
    maybe band-limited, always noisy (see the module docstring)."""
    degraded = np.asarray(audio, dtype=np.float64)
    if rng.random() < 0.5:
        response = room_response(sample_rate_hz, rng.uniform(*RT60_RANGE_S), rng.uniform(*DIRECT_TO_REVERBERANT_DB),
                                 rng)
        degraded = reverberate(degraded, response)
    if rng.random() < 0.5:
        degraded = band_limit(degraded, sample_rate_hz, rng.uniform(*LOW_EDGE_HZ), rng.uniform(*HIGH_EDGE_HZ))
    degraded = add_noise(degraded, rng.uniform(*SNR_RANGE_DB), float(rng.choice(NOISE_SLOPES)), rng)
    return degraded.astype(np.float32)
