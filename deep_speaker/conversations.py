"""Simulated conversations from real utterances, with reference RTTMs: what
diarization is measured on (`bench/diarization.py`, `evaluate.py --diarization`).

A conversation is built, deterministically from its seed, like this:

1. `num_speakers` speakers (2-6) are drawn from the pool given (e.g. the held-out
   speakers of scripts/pretrained_heldout.txt). Each speaker's utterances are
   read in file order at the conversation's rate and get one level: a random
   gain of +-`LEVEL_SPREAD_DB` around `LEVEL_DBFS` (RMS of the speech frames).
2. Turns are drawn like a dialogue: every speaker speaks once first (in a random
   order), then speakers follow at random, never the same speaker twice in a
   row, while they have audio left. A turn is the next `TURN_S` (2-8 s, drawn)
   of the speaker's current utterance, cut at the middle of the pause nearest to
   that length when there is one within `CUT_SEARCH_S`, else there; an utterance
   with less than `MIN_TURN_S` left is taken whole: turns are whole utterances or
   parts of them, and no audio is used twice.
3. Between turns a pause of `PAUSE_S` (0.1-1.5 s, uniform); with `overlap` > 0 a
   turn starts, with that probability, `OVERLAP_S` (0.2-1.0 s) before the end of
   the previous one instead.
4. The mix gets a floor of white noise at `NOISE_DBFS`, so that the pauses are
   not digital silence. It stops after `max_turns` turns or `max_seconds`.

The reference marks speech at frame level (10 ms): in each source utterance, the
frames within `REFERENCE_RANGE_DB` of its loud frames (and above `FLOOR_DBFS`),
with pauses up to `REFERENCE_BRIDGE_S` (0.3 s) bridged, so that a longer pause
inside an utterance is not speech; islands under `REFERENCE_MIN_S` are dropped.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from deep_speaker.audio import read_audio, resample

LEVEL_DBFS = -26.0
LEVEL_SPREAD_DB = 3.0
TURN_S = (2.0, 8.0)
MIN_TURN_S = 1.0
CUT_SEARCH_S = 1.0
PAUSE_S = (0.1, 1.5)
OVERLAP_S = (0.2, 1.0)
NOISE_DBFS = -60.0
FRAME_S = 0.010
REFERENCE_RANGE_DB = 35.0
FLOOR_DBFS = -60.0
REFERENCE_BRIDGE_S = 0.3
REFERENCE_MIN_S = 0.1


@dataclass
class Conversation:
    """A simulated recording: mono float32 audio at `sample_rate`, and its reference."""

    name: str
    audio: np.ndarray
    sample_rate: int
    segments: list[tuple[float, float, str]]  # (start_s, end_s, speaker): speech at frame level, sorted
    speakers: list[str] = field(default_factory=list)  # in order of first turn

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    def write(self, folder: str | Path) -> Path:
        """`<name>.flac` (16-bit) and `<name>.rttm` beside it in `folder`; returns the audio path."""
        from deep_speaker.diarization import write_rttm
        from deep_speaker.io_utils import atomic_write

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.flac"
        atomic_write(path, lambda handle: soundfile.write(handle, np.clip(self.audio, -1, 1), self.sample_rate,
                                                           format="FLAC", subtype="PCM_16"))
        write_rttm(folder / f"{self.name}.rttm", self.name, self.segments)
        return path


def frame_levels_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level of 25 ms frames every 10 ms, in dB re full scale.

    >>> frame_levels_db(np.full(800, 0.5, np.float32), 8000).round(1).tolist()
    [-6.0, -6.0, -6.0, -6.0, -6.0, -6.0, -6.0, -6.0]
    """
    hop, length = int(round(FRAME_S * sample_rate)), int(round(0.025 * sample_rate))
    if len(audio) < length:
        audio = np.pad(audio, (0, length - len(audio)))
    frames = np.lib.stride_tricks.sliding_window_view(audio, length)[::hop]
    power = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / length
    return 10.0 * np.log10(power + 1e-12)


def bridge(mask: np.ndarray, max_gap: int, min_run: int) -> np.ndarray:
    """`mask` with false gaps of up to `max_gap` frames between trues filled, then
    true runs shorter than `min_run` frames dropped.

    >>> bridge(np.array([1, 0, 0, 1, 0, 0, 0, 0, 1, 0], bool), 2, 2).astype(int).tolist()
    [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    """
    mask = np.asarray(mask, bool).copy()
    starts, ends = runs(~mask)
    inner = (starts > 0) & (ends < len(mask)) & (ends - starts <= max_gap)
    _fill(mask, starts[inner], ends[inner], True)
    starts, ends = runs(mask)
    short = ends - starts < min_run
    _fill(mask, starts[short], ends[short], False)
    return mask


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of trues in a boolean array (ends exclusive).

    >>> [r.tolist() for r in runs(np.array([0, 1, 1, 0, 1], bool))]
    [[1, 4], [3, 5]]
    """
    edges = np.diff(np.concatenate([[0], np.asarray(mask, np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _fill(mask: np.ndarray, starts: np.ndarray, ends: np.ndarray, value: bool) -> None:
    marks = np.zeros(len(mask) + 1, np.int32)
    np.add.at(marks, starts, 1)
    np.add.at(marks, ends, -1)
    mask[np.cumsum(marks[:-1]) > 0] = value


def reference_speech(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Speech frames (10 ms) of one clean utterance: the reference's rule (module docstring)."""
    levels = frame_levels_db(audio, sample_rate)
    loud = np.percentile(levels, 99)
    speech = (levels > FLOOR_DBFS) & (levels > loud - REFERENCE_RANGE_DB)
    return bridge(speech, int(round(REFERENCE_BRIDGE_S / FRAME_S)), int(round(REFERENCE_MIN_S / FRAME_S)))


class _Speaker:
    """A speaker's utterances, consumed turn by turn."""

    def __init__(self, name: str, files: Sequence[str | Path], sample_rate: int, gain_db: float):
        self.name, self.files, self.rate, self.gain_db = name, [str(f) for f in files], sample_rate, gain_db
        self.index, self.cursor = -1, 0
        self.audio = self.speech = None
        self.scale = None
        self._next_utterance()

    def _next_utterance(self) -> None:
        self.index += 1
        self.cursor = 0
        if self.index >= len(self.files):
            self.audio = None
            return
        samples, rate = read_audio(self.files[self.index])
        self.audio = resample(samples, rate, self.rate).astype(np.float32)
        self.speech = reference_speech(self.audio, self.rate)
        if not self.speech.any():
            self._next_utterance()
            return
        hop = int(round(FRAME_S * self.rate))
        levels = frame_levels_db(self.audio, self.rate)
        if self.scale is None:  # one level per speaker, set on its first utterance
            speech_db = 10 * np.log10(np.mean(10 ** (levels[self.speech] / 10)))
            self.scale = 10 ** ((LEVEL_DBFS + self.gain_db - speech_db) / 20)
        # Start at the first speech frame.
        self.cursor = int(np.flatnonzero(self.speech)[0]) * hop

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    def turn(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The next turn's samples and its speech frames (10 ms)."""
        hop = int(round(FRAME_S * self.rate))
        first = self.cursor // hop
        frames_left = len(self.speech) - first
        wanted = int(round(rng.uniform(*TURN_S) / FRAME_S))
        end = len(self.speech)
        if frames_left - wanted >= MIN_TURN_S / FRAME_S:
            # Cut in the middle of the pause nearest to the wanted length, if one is near.
            low, high = first + max(1, wanted - int(CUT_SEARCH_S / FRAME_S)), first + wanted + int(CUT_SEARCH_S / FRAME_S)
            window = ~self.speech[low:high]
            if window.any():
                starts, ends = runs(window)
                middles = low + (starts + ends) // 2
                end = int(middles[np.argmin(np.abs(middles - (first + wanted)))])
            else:
                end = first + wanted
        speech = self.speech[first:end].copy()
        # Trim the turn to its speech: it starts and ends with a voice.
        voiced = np.flatnonzero(speech)
        if len(voiced) == 0:
            self._advance(end, hop)
            return np.zeros(0, np.float32), np.zeros(0, bool)
        last = voiced[-1] + 1
        samples = self.audio[(first + voiced[0]) * hop:(first + last) * hop] * self.scale
        speech = speech[voiced[0]:last]
        self._advance(end, hop)
        return samples.astype(np.float32), speech

    def _advance(self, end_frame: int, hop: int) -> None:
        rest = np.flatnonzero(self.speech[end_frame:])
        if end_frame >= len(self.speech) or len(rest) == 0:
            self._next_utterance()
        else:
            self.cursor = (end_frame + int(rest[0])) * hop


def simulate(name: str, speakers: Mapping[str, Sequence[str | Path]], sample_rate: int, seed: int, *,
             overlap: float = 0.0, max_turns: int = 40, max_seconds: float = 150.0) -> Conversation:
    """One conversation of the speakers given ({name: files}), as the module's docstring describes."""
    rng = np.random.default_rng(seed)
    pool = [_Speaker(speaker, files, sample_rate, rng.uniform(-LEVEL_SPREAD_DB, LEVEL_SPREAD_DB))
            for speaker, files in speakers.items()]
    pool = [s for s in pool if s.has_audio]
    if len(pool) < 2:
        raise ValueError(f"{name}: a conversation needs two speakers with speech, got {len(pool)}")
    order = list(rng.permutation(len(pool)))
    pieces, segments, speakers_seen = [], [], []
    position, previous, turns = 0, -1, 0  # samples
    while turns < max_turns and position < max_seconds * sample_rate:
        if order:
            who = order.pop(0)
        else:
            choices = [i for i, s in enumerate(pool) if s.has_audio and i != previous]
            if not choices:
                break
            who = int(rng.choice(choices))
        speaker = pool[who]
        if not speaker.has_audio:
            continue
        samples, speech = speaker.turn(rng)
        if len(samples) == 0:
            continue
        if turns:
            if overlap > 0 and rng.random() < overlap:
                position -= int(rng.uniform(*OVERLAP_S) * sample_rate)
                position = max(position, pieces[-1][0] + 1)  # never before the previous turn's start
            else:
                position += int(rng.uniform(*PAUSE_S) * sample_rate)
        pieces.append((position, samples))
        starts, ends = runs(speech)
        for s, e in zip(starts, ends):
            segments.append((round(position / sample_rate + s * FRAME_S, 3),
                             round(position / sample_rate + e * FRAME_S, 3), speaker.name))
        if speaker.name not in speakers_seen:
            speakers_seen.append(speaker.name)
        position += len(samples)
        previous, turns = who, turns + 1
    length = max(start + len(samples) for start, samples in pieces) + int(0.5 * sample_rate)
    audio = rng.normal(0.0, 10 ** (NOISE_DBFS / 20), length).astype(np.float32)
    for start, samples in pieces:
        audio[start:start + len(samples)] += samples
    return Conversation(name, audio, sample_rate, sorted(segments), speakers_seen)


def conversation_set(name: str, speakers: Mapping[str, Sequence[str | Path]], count: int, sample_rate: int,
                     seed: int, *, min_speakers: int = 2, max_speakers: int = 6, overlap: float = 0.0,
                     max_turns: int = 40, max_seconds: float = 150.0) -> list[Conversation]:
    """`count` conversations of `min_speakers`-`max_speakers` speakers (uniform) drawn from `speakers`;
    conversation k is seeded by (seed, k), so a set is the same on every machine."""
    names = sorted(speakers)
    made = []
    for k in range(count):
        rng = np.random.default_rng([seed, k])
        n = int(rng.integers(min_speakers, min(max_speakers, len(names)) + 1))
        chosen = [names[i] for i in sorted(rng.choice(len(names), n, replace=False))]
        made.append(simulate(f"{name}-{k:03d}", {s: speakers[s] for s in chosen}, sample_rate,
                             int(rng.integers(1 << 31)), overlap=overlap, max_turns=max_turns,
                             max_seconds=max_seconds))
    return made
