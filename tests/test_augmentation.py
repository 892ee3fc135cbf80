"""Waveform augmentation (stage 2 `--augment_copies`): each degradation does what
it claims (SNR, spectral slope, decay, pass band), copies are seeded by utterance."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from deep_speaker.augmentation import (add_noise, augment_utterance, band_limit, coloured_noise, room_response,
                                       utterance_rng)

RATE = 8000


def _tone(frequency_hz: float, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * frequency_hz * np.arange(int(RATE * seconds)) / RATE)


@pytest.mark.parametrize("slope", [0.0, 1.0, 2.0])
def test_coloured_noise_has_the_requested_spectral_slope(slope):
    noise = coloured_noise(2 ** 16, slope, np.random.default_rng(0))
    power = np.abs(np.fft.rfft(noise)) ** 2
    frequencies = np.fft.rfftfreq(len(noise))
    band = (frequencies > 0.001) & (frequencies < 0.4)
    fitted = np.polyfit(np.log(frequencies[band]), np.log(power[band]), 1)[0]
    assert fitted == pytest.approx(-slope, abs=0.1)
    assert noise.std() == pytest.approx(1.0)


@pytest.mark.parametrize("snr_db", [5.0, 12.5, 20.0])
def test_noise_is_added_at_the_requested_snr(snr_db):
    clean = 0.3 * _tone(440, 2.0)
    noisy = add_noise(clean, snr_db, 1.0, np.random.default_rng(1))
    measured = 10 * np.log10(np.mean(clean ** 2) / np.mean((noisy - clean) ** 2))
    assert measured == pytest.approx(snr_db, abs=0.01)


def test_room_response_decays_60_db_over_rt60_with_the_requested_direct_to_reverberant_ratio():
    response = room_response(RATE, 0.5, 6.0, np.random.default_rng(2))
    assert len(response) == RATE // 2 and response[0] == 1.0
    assert 10 * np.log10(1.0 / np.sum(response[1:] ** 2)) == pytest.approx(6.0)
    early, late = response[1:401], response[-400:]  # first and last 50 ms of the tail
    decay_db = 10 * np.log10(np.mean(early ** 2) / np.mean(late ** 2))
    assert 50 < decay_db < 62  # 60 dB from start to end, less the two windows' own spread


def test_band_limit_passes_speech_band_and_stops_its_edges():
    def gain_db(frequency):
        tone = _tone(frequency)
        return 10 * np.log10(np.mean(band_limit(tone, RATE, 300, 3400)[2000:] ** 2) / np.mean(tone[2000:] ** 2))
    assert abs(gain_db(1000)) < 0.5
    assert gain_db(60) < -20 and gain_db(3900) < -10


def test_augmented_copies_are_seeded_by_utterance_and_copy():
    speech_like = 0.2 * (_tone(200) + 0.5 * _tone(700) + 0.2 * _tone(2100)).astype(np.float32)
    first = augment_utterance(speech_like, RATE, utterance_rng("19-198-0000@1", 1))
    again = augment_utterance(speech_like, RATE, utterance_rng("19-198-0000@1", 1))
    other_copy = augment_utterance(speech_like, RATE, utterance_rng("19-198-0000@1", 2))
    other_utterance = augment_utterance(speech_like, RATE, utterance_rng("19-198-0008@1", 1))
    assert first.dtype == np.float32 and first.shape == speech_like.shape
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other_copy) and not np.allclose(first, other_utterance)
    # degraded, not destroyed: the tones still stand out of the noise (5-20 dB SNR)
    _, spectrum = signal.welch(first, RATE, nperseg=512)
    tone_bins = [round(f * 512 / RATE) for f in (200, 700)]
    assert min(spectrum[tone_bins]) > 30 * np.median(spectrum)
