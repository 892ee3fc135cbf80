"""Speech presence: is there any speech in a recording at all?

The seed's trim (first to last sample above the 95th percentile of |x|) lets
anything through that is not digital silence: ten minutes of white noise and
three seconds of six-channel noise were embedded as if they were speakers. This
module says "no speech" out loud with a documented energy/spectral rule (pure
numpy, no extra dependency), applied to the audio at the model's sample rate
before it is embedded.

The rule, on 25 ms Hamming frames every 10 ms, with the power spectrum of each
frame restricted to the speech band 250-3500 Hz (it holds telephone speech too):

1. *Loud enough*: a frame counts only if its band energy is above an absolute
   floor (-70 dBFS, well below any recorded voice) and within 40 dB of the
   recording's loud frames (its 99th percentile).
2. *Not noise-like*: speech frames have a structured spectrum (harmonics,
   formants). Their spectral flatness (geometric over arithmetic mean of the
   band's power, 1 for a flat spectrum; white noise gives about 0.56, pink
   noise 0.45) must stay below `MAX_FLATNESS`.
3. *Not a pure tone*: the 5 FFT bins around the frame's strongest bin must hold
   less than `MAX_PEAK_SHARE` of the power from 80 Hz up (a sine holds about
   99 %; from 80 Hz so that a low tone outside the speech band is caught too,
   and mains hum at 50/60 Hz is not taken for a tone).

4. *Sustained*: only runs of at least `MIN_RUN_FRAMES` (3) consecutive frames
   passing 1-3 count, as a vowel lasts longer than 30 ms while the clicks at
   the edges of a switched tone or the odd frame of a noise do not.

A recording holds speech when at least `MIN_SPEECH_FRAMES` frames (50 ms)
pass 1-4, and they are at least `MIN_SPEECH_SHARE` (3 %) of its loud frames (so
that a few odd frames of a long noise do not count). The thresholds were set on
synthetic signals and on every real utterance of ``../shared/data`` (5338
files of 8 sets): the smallest count there is 7 speech-like frames and the
smallest share 9 %, while white noise has none and pink noise about 1 %.
tests/test_speech.py checks noise, tones, silence, multi-channel noise and real
speech.

Known limits: a rule this simple cannot tell speech from every sound. Brown
(1/f^2) noise, chords and buzzes have a structured spectrum and pass; a
recording of music or traffic is not rejected. Speech buried under loud white
noise can be rejected. `require_speech=False` (API) or `--allow_no_speech`
(commands) embeds such recordings anyway.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BAND_HZ = (250.0, 3500.0)
TONE_FROM_HZ = 80.0
FRAME_MS = 25.0
HOP_MS = 10.0
FFT_SIZE = 512
FLOOR_DBFS = -70.0  # band energy per frame, relative to a full-scale sine
RELATIVE_FLOOR_DB = 40.0
MAX_FLATNESS = 0.3
MAX_PEAK_SHARE = 0.85
PEAK_BINS = 5
MIN_RUN_FRAMES = 3
MIN_SPEECH_FRAMES = 5
MIN_SPEECH_SHARE = 0.03
# Frames analysed per numpy call: bounds the memory of the FFT for long inputs.
_CHUNK_FRAMES = 4096


@dataclass(frozen=True)
class SpeechReport:
    """What `detect_speech` found in a recording."""

    has_speech: bool
    speech_frames: int  # frames passing the loudness, flatness and tone tests
    loud_frames: int  # frames passing the loudness test
    reason: str  # why there is no speech ("" when there is)

    @property
    def speech_ms(self) -> float:
        return self.speech_frames * HOP_MS


def _frame_statistics(audio: np.ndarray, sample_rate_hz: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: band energy (dB re full scale), spectral flatness, peak share."""
    frame = max(1, int(round(sample_rate_hz * FRAME_MS / 1000)))
    hop = max(1, int(round(sample_rate_hz * HOP_MS / 1000)))
    fft_size = max(FFT_SIZE, 1 << int(np.ceil(np.log2(frame))))
    if len(audio) < frame:
        audio = np.pad(audio, (0, frame - len(audio)))
    frames = np.lib.stride_tricks.sliding_window_view(audio, frame)[::hop]
    window = np.hamming(frame).astype(np.float32)
    frequencies = np.fft.rfftfreq(fft_size, 1.0 / sample_rate_hz)
    top = 0.45 * sample_rate_hz
    wide = (frequencies >= TONE_FROM_HZ) & (frequencies <= top)  # where a tone is looked for
    band = ((frequencies >= BAND_HZ[0]) & (frequencies <= min(BAND_HZ[1], top)))[wide]  # the speech band within it
    # A full-scale sine's band energy under the same window and FFT: the 0 dBFS reference.
    reference = (np.sum(window) / 2.0) ** 2
    energy_db, flatness, peak_share = [], [], []
    for start in range(0, len(frames), _CHUNK_FRAMES):
        chunk = frames[start:start + _CHUNK_FRAMES] * window
        power = np.abs(np.fft.rfft(chunk, n=fft_size, axis=1)[:, wide]) ** 2 + 1e-20
        in_band = power[:, band]
        energy_db.append(10.0 * np.log10(in_band.sum(axis=1) / reference))
        flatness.append(np.exp(np.mean(np.log(in_band), axis=1)) / np.mean(in_band, axis=1))
        # Power in PEAK_BINS consecutive bins around each frame's strongest bin.
        padded = np.pad(power, ((0, 0), (PEAK_BINS // 2, PEAK_BINS // 2)))
        cumulative = np.concatenate([np.zeros((len(power), 1)), np.cumsum(padded, axis=1)], axis=1)
        peak = np.argmax(power, axis=1)
        rows = np.arange(len(power))
        peak_share.append((cumulative[rows, peak + PEAK_BINS] - cumulative[rows, peak]) / power.sum(axis=1))
    return np.concatenate(energy_db), np.concatenate(flatness), np.concatenate(peak_share)


def _in_runs(flags: np.ndarray, min_run: int) -> np.ndarray:
    """The true entries of `flags` that lie in runs of at least `min_run` consecutive trues.

    >>> _in_runs(np.array([1, 0, 1, 1, 1, 0, 1, 1], bool), 3).astype(int).tolist()
    [0, 0, 1, 1, 1, 0, 0, 0]
    """
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    long_enough = (ends - starts) >= min_run
    marks = np.zeros(len(flags) + 1, np.int32)
    np.add.at(marks, starts[long_enough], 1)
    np.add.at(marks, ends[long_enough], -1)
    return np.cumsum(marks[:-1]) > 0


def detect_speech(audio: np.ndarray, sample_rate_hz: int) -> SpeechReport:
    """Apply the module's rule to mono audio (float, full scale 1.0).

    >>> rate = 8000
    >>> noise = np.random.default_rng(0).normal(0, 0.1, 3 * rate).astype(np.float32)
    >>> detect_speech(noise, rate).has_speech
    False
    >>> detect_speech(np.zeros(rate, np.float32), rate).reason
    'no speech detected (the audio is silent)'
    """
    audio = np.asarray(audio, dtype=np.float32)
    energy_db, flatness, peak_share = _frame_statistics(audio, sample_rate_hz)
    loud = energy_db > FLOOR_DBFS
    if loud.any():
        loud &= energy_db > np.percentile(energy_db[loud], 99) - RELATIVE_FLOOR_DB
    loud_frames = int(loud.sum())
    if loud_frames == 0:
        return SpeechReport(False, 0, 0, "no speech detected (the audio is silent)")
    speech = _in_runs(loud & (flatness < MAX_FLATNESS) & (peak_share < MAX_PEAK_SHARE), MIN_RUN_FRAMES)
    speech_frames = int(speech.sum())
    reason = ""
    if speech_frames < max(MIN_SPEECH_FRAMES, MIN_SPEECH_SHARE * loud_frames):
        noise_like = int((loud & (flatness >= MAX_FLATNESS)).sum())
        tone_like = int((loud & (flatness < MAX_FLATNESS) & (peak_share >= MAX_PEAK_SHARE)).sum())
        kind = "noise-like" if noise_like >= tone_like else "pure tones"
        reason = (f"no speech detected ({speech_frames * HOP_MS:.0f} ms of speech-like sound in "
                  f"{loud_frames * HOP_MS:.0f} ms of sound, the rest {kind})")
    return SpeechReport(not reason, speech_frames, loud_frames, reason)
