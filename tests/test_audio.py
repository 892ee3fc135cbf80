"""Stage 1 audio: decode, mix to mono, resample to 8 kHz, trim silence, reject bad files."""
from __future__ import annotations

import numpy as np
import pytest

from deep_speaker.audio import (AudioError, load_utterance, read_audio, resample, trim_silence,
                                voice_bounds_energy, voice_bounds_percentile)
from deep_speaker.audio_cache import audio_cache_dir
from deep_speaker.commands.preprocess import main as preprocess_main
from deep_speaker.config import Config
from deep_speaker.io_utils import load_pickle

TARGET = 8000
EDGE_TOLERANCE = 80  # samples at 8 kHz = 10 ms


# --- decode, mono, resample ---------------------------------------------------------------

@pytest.mark.parametrize("rate, suffix, channels", [
    (16000, ".flac", 1), (16000, ".wav", 1), (44100, ".wav", 1), (48000, ".wav", 1), (48000, ".wav", 2),
    (8000, ".wav", 1),
])
def test_duration_is_preserved_at_8khz(tmp_path, write_wav, synth_audio, rate, suffix, channels):
    seconds = 1.2345  # not a whole number of samples at 8 kHz from 44.1 kHz
    mono = synth_audio("sine", rate, seconds, frequency=300.0)
    audio = np.stack([mono, 0.5 * mono], axis=1) if channels == 2 else mono
    path = write_wav(tmp_path / f"x{suffix}", audio, rate)

    samples, decoded_rate = read_audio(path)
    assert decoded_rate == rate
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == len(mono)
    utterance = load_utterance(path, Config())
    expected = len(mono) * TARGET / rate
    assert abs(len(utterance.audio) - expected) <= 1
    assert utterance.audio.dtype == np.float32
    assert utterance.sample_rate_hz == TARGET


def test_stereo_is_mixed_to_the_mean_of_its_channels(tmp_path, write_wav, synth_audio):
    left = synth_audio("sine", 16000, 0.5, frequency=300.0)
    right = synth_audio("noise", 16000, 0.5, amplitude=0.1)
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    samples, _ = read_audio(path)
    np.testing.assert_allclose(samples, (left + right) / 2, atol=1e-6)


def test_resampling_keeps_in_band_tones_and_removes_aliases(synth_audio):
    in_band = resample(synth_audio("sine", 48000, 1.0, frequency=1000.0), 48000, TARGET)
    above_nyquist = resample(synth_audio("sine", 48000, 1.0, frequency=5000.0), 48000, TARGET)
    middle = slice(400, -400)  # away from the filter's edge transients
    assert np.sqrt(np.mean(in_band[middle] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    # A 5 kHz tone cannot exist at 8 kHz: a naive decimator would fold it to 3 kHz.
    assert np.sqrt(np.mean(above_nyquist[middle] ** 2)) < 0.005


# --- percentile trim (the seed's rule) --------------------------------------------------------

def test_percentile_trim_on_a_hand_checked_array():
    audio = np.zeros(20, dtype=np.float32)
    audio[10:13] = [0.5, -1.0, 0.2]
    # sorted |x|: 17 zeros, 0.2, 0.5, 1.0; the 95th percentile sits at rank 0.95 * 19 = 18.05,
    # i.e. 0.5 + 0.05 * (1.0 - 0.5) = 0.525: only the -1.0 at index 11 is louder.
    assert voice_bounds_percentile(audio, 95) == (11, 12)
    # 50th percentile = 0: every non-zero sample is voice, first 10, last 12.
    assert voice_bounds_percentile(audio, 50) == (10, 13)
    assert trim_silence(audio, Config()) == (11, 12)  # the default rule is the seed's 95th percentile
    assert voice_bounds_percentile(np.zeros(8, dtype=np.float32), 95) == (0, 0)


def test_trimmed_audio_fields_agree(tmp_path, write_wav):
    path = write_wav(tmp_path / "t.wav", "tone_in_silence", TARGET, seconds=1.0, lead_s=0.25, tail_s=0.5)
    utterance = load_utterance(path, Config())
    start, end = utterance.voice_start, utterance.voice_end
    np.testing.assert_array_equal(utterance.audio_voice_only, utterance.audio[start:end])
    assert utterance.left_blank_duration_ms == pytest.approx(1000 * start / TARGET)
    assert utterance.right_blank_duration_ms == pytest.approx(1000 * (len(utterance.audio) - end) / TARGET)
    # the tone's peaks beyond its 95th percentile of |x| lie within a few periods (5 ms) of its edges
    assert abs(start - 0.25 * TARGET) <= 40 and abs(end - 1.25 * TARGET) <= 40


def test_unknown_trim_rule_is_an_error():
    with pytest.raises(ValueError, match="unknown trim rule"):
        trim_silence(np.ones(10, dtype=np.float32), Config().override(trim="loudness"))


# --- energy trim (--trim energy) --------------------------------------------------------------

@pytest.mark.parametrize("lead_s, tail_s, frequency, noise_db", [
    (0.5, 0.5, 440.0, None),
    (0.3037, 0.4111, 440.0, None),  # edges off the 10 ms hop grid
    (0.2519, 0.3333, 150.0, None),
    (0.4003, 0.2007, 2500.0, None),
    (0.3037, 0.4111, 440.0, 60.0),  # a noise floor 60 dB down, not digital silence
])
def test_energy_trim_finds_tone_edges_within_10ms(synth_audio, lead_s, tail_s, frequency, noise_db):
    audio = synth_audio("tone_in_silence", TARGET, 1.0, lead_s=lead_s, tail_s=tail_s, frequency=frequency,
                        noise_db=noise_db)
    true_start = round(lead_s * TARGET)
    true_end = true_start + TARGET
    start, end = voice_bounds_energy(audio, TARGET, top_db=40.0)
    assert abs(start - true_start) <= EDGE_TOLERANCE, (start, true_start)
    assert abs(end - true_end) <= EDGE_TOLERANCE, (end, true_end)


def test_energy_trim_of_signals_without_silence():
    tone = np.sin(np.arange(4000) * 0.2).astype(np.float32)
    assert voice_bounds_energy(tone, TARGET, 40.0) == (0, 4000)
    assert voice_bounds_energy(np.zeros(4000, dtype=np.float32), TARGET, 40.0) == (0, 0)
    short = np.ones(50, dtype=np.float32)  # shorter than one 25 ms frame
    assert voice_bounds_energy(short, TARGET, 40.0) == (0, 50)


def test_trim_energy_option_end_to_end(tmp_path, write_wav, capsys):
    lead_s, tail_s = 0.3037, 0.4111
    corpus = tmp_path / "corpus" / "Tone"
    write_wav(corpus / "tone_001.wav", "tone_in_silence", 16000, seconds=1.0, lead_s=lead_s, tail_s=tail_s)
    cache = tmp_path / "cache"
    assert preprocess_main(["--regenerate_full_cache", "--trim", "energy", "--audio_dir", str(corpus),
                            "--cache_output_dir", str(cache)]) == 0
    record = load_pickle(audio_cache_dir(cache) / "Tone_tone_001.pkl")
    assert record["left_blank_duration_ms"] == pytest.approx(1000 * lead_s, abs=10.0)
    assert record["right_blank_duration_ms"] == pytest.approx(1000 * tail_s, abs=10.0)
    assert len(record["audio_voice_only"]) == pytest.approx(TARGET, abs=2 * EDGE_TOLERANCE)


# --- unusable files ---------------------------------------------------------------------------

def _zero_bytes(path, write_wav):
    path.write_bytes(b"")


def _text_renamed_wav(path, write_wav):
    path.write_text("this is a transcript, not audio\n" * 20)


def _truncated_wav(path, write_wav):
    write_wav(path, "sine", 16000, seconds=1.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted copy: the header still says 1 s


def _truncated_flac(path, write_wav):
    write_wav(path, "noise", 16000, seconds=1.0, amplitude=0.1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _all_zero(path, write_wav):
    write_wav(path, "silence", 16000, seconds=1.0)


def _nan_samples(path, write_wav):
    audio = np.sin(np.arange(16000) * 0.1).astype(np.float32)
    audio[5000] = np.nan
    write_wav(path, audio, 16000, subtype="FLOAT")


def _too_short_voice(path, write_wav):
    write_wav(path, "tone_in_silence", 16000, seconds=0.05, lead_s=0.5, tail_s=0.5)


def _rate_too_low(path, write_wav):
    write_wav(path, "sine", 4000, seconds=1.0)


@pytest.mark.parametrize("name, make, reason", [
    ("empty.wav", _zero_bytes, r"empty file \(0 bytes\)"),
    ("text.wav", _text_renamed_wav, r"not decodable audio"),
    ("cut.wav", _truncated_wav, r"truncated file: header declares 32000 bytes of audio data, only \d+ present"),
    ("cut.flac", _truncated_flac, r"not decodable audio"),
    ("zeros.wav", _all_zero, r"all silent"),
    ("nan.wav", _nan_samples, r"NaN"),
    ("short.wav", _too_short_voice, r"too little speech: \d+ ms of voice"),
    ("slow.wav", _rate_too_low, r"sample rate 4000 Hz outside"),
])
def test_unusable_files_raise_audio_error_naming_the_reason(tmp_path, write_wav, name, make, reason):
    path = tmp_path / name
    make(path, write_wav)
    with pytest.raises(AudioError, match=reason):
        load_utterance(path, Config())


def test_missing_file_is_an_audio_error(tmp_path):
    with pytest.raises(AudioError, match="file not found"):
        read_audio(tmp_path / "nope.wav")


def test_a_complete_wav_is_not_reported_truncated(tmp_path, write_wav):
    path = write_wav(tmp_path / "ok.wav", "sine", 16000, seconds=1.0)
    path.write_bytes(path.read_bytes() + b"LIST\x04\x00\x00\x00abcd")  # a trailing metadata chunk is fine
    samples, _ = read_audio(path)
    assert len(samples) == 16000
