"""Log mel filterbanks and their normalisation: what the model sees.

Normalisation decision (one rule for training and scoring): every utterance's
log fbank is mean/variance normalised over its own frames (per-utterance CMVN),
so a single file scored alone is featurised exactly like a training utterance.
The inputs pickles still carry the seed's per-speaker `mean_train`/`std_train`
(statistics of the raw log fbank of the speaker's training part) for reference;
they are not applied, because scoring has no speaker statistics.
"""
from __future__ import annotations

import numpy as np
import python_speech_features

from deep_speaker.config import Config

# Floor of the variance in CMVN: a constant band (digital silence) would
# otherwise divide by zero; 1e-5 is far below any real log-energy variance.
CMVN_EPSILON = 1e-5


def compute_fbank(audio: np.ndarray, config: Config) -> np.ndarray:
    """Raw log mel filterbank of a whole utterance, (num_frames, num_fbanks) float32.

    25 ms Hamming windows every 10 ms, pre-emphasis 0.97, power spectrum,
    HTK mel triangles (python_speech_features, vectorised over all frames).

    >>> compute_fbank(np.random.default_rng(0).normal(size=8000), Config()).shape
    (98, 64)
    """
    if len(audio) < config.frame_length_samples:
        raise ValueError(f"audio too short for one {config.frame_length_ms} ms frame")
    # Whole frames only (no padded last frame), like Kaldi's snip_edges.
    num_frames = 1 + (len(audio) - config.frame_length_samples) // config.frame_shift_samples
    used = config.frame_length_samples + (num_frames - 1) * config.frame_shift_samples
    energies, _ = python_speech_features.fbank(
        np.asarray(audio[:used], dtype=np.float64),
        samplerate=config.sample_rate_hz,
        winlen=config.frame_length_ms / 1000,
        winstep=config.frame_shift_ms / 1000,
        nfilt=config.num_fbanks,
        nfft=config.fft_size,
        preemph=config.preemphasis,
        winfunc=np.hamming,
    )
    # fbank() already floors zero energies at machine epsilon, so log is finite.
    return np.log(energies).astype(np.float32)


def normalize_utterance(fbank: np.ndarray) -> np.ndarray:
    """Per-utterance CMVN: zero mean, unit variance per band over the frames.

    >>> x = normalize_utterance(np.array([[1., 2.], [3., 6.]], dtype=np.float32))
    >>> x.mean(axis=0).tolist(), np.round(x.std(axis=0), 3).tolist()
    ([0.0, 0.0], [1.0, 1.0])
    """
    mean = fbank.mean(axis=0, keepdims=True)
    std = np.sqrt(fbank.var(axis=0, keepdims=True) + CMVN_EPSILON)
    return ((fbank - mean) / std).astype(np.float32)


def utterance_features(voice_audio: np.ndarray, config: Config) -> np.ndarray:
    """Model input for one utterance's voiced audio: normalised log fbank."""
    return normalize_utterance(compute_fbank(voice_audio, config))
