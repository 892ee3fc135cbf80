"""Speaker diarization: who spoke when in a recording.

`SpeakerEncoder.diarize(path_or_waveform)` runs these steps, each chosen by
measurement on simulated conversations of training speakers (docs/diarization.md;
`bench/diarization.py` prints the tables), every setting in `DiarizationSettings`:

1. **Speech at frame level** (25 ms frames every 10 ms, at the model's rate): the
   rule of `deep_speaker.speech` applied per frame (loud enough within
   `SPEECH_RANGE_DB` of the loud frames of its `CHUNK_S` chunk, not noise-like,
   not a pure tone, in runs of 30 ms), or `webrtcvad` when chosen and installed.
   Pauses up to `bridge_s` are bridged, islands under `min_speech_s` dropped.
2. **Embeddings**: the speech frames, in order, are cut into windows of
   `window_s` of speech every `hop_s`; each window's log fbank is normalised
   on its own (as an utterance) and the windows go through the model in batches.
   The file is streamed in blocks (`deep_speaker.long_audio.stream_audio`) and
   only a window's worth of frames is held, so memory does not grow with length
   beyond the embeddings (2 kB per window) and a few bytes per frame.
3. **Clustering**: with the count estimated, PLDA merging (`deep_speaker.plda`, the model's
   `diarization_plda.npz`): runs of `plda_group_windows` windows start as clusters and the two likeliest to
   be one speaker merge until the log-likelihood ratio falls under `plda_threshold` (calibrated on training
   speakers' conversations); a model without a PLDA file uses agglomerative clustering (scipy, average
   linkage, cosine) cut at `threshold`, with clusters under `min_cluster_s` merged. With `num_speakers`,
   spherical k-means from `kmeans_restarts` seeded starts. The count stays within
   `min_speakers`..`max_speakers`; then `refine_iterations` of reassigning every window to its nearest
   centroid.
4. **Boundaries at frame level**: every speech frame scores each speaker by the
   mean cosine similarity to that speaker's centroid of the windows covering it,
   smoothed over `smooth_s`; the best speaker wins the frame, so turns change
   where the voices change, not on the window grid.

Labels are `speaker_1`, `speaker_2`, ... in order of first appearance; with an
enrolment, a cluster whose centroid has a cosine similarity of at least
`naming_threshold` with an enrolled speaker takes that name (each name once, best
matches first).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from deep_speaker.conversations import bridge, runs
from deep_speaker.errors import InputError
from deep_speaker.features import compute_fbank, normalize_utterance
from deep_speaker.io_utils import atomic_write_text
from deep_speaker.plda import PLDA_FILE, PLDAError, load_plda
from deep_speaker.speech import MAX_PEAK_SHARE, MIN_RUN_FRAMES, _frame_statistics, _in_runs

CHUNK_S = 30.0  # audio analysed at a time (its frames' loudness is judged against the chunk's loud frames)
SPEECH_FLOOR_DBFS = -60.0  # a speech frame's band energy is above this ...
SPEECH_RANGE_DB = 45.0  # ... and within this of the chunk's loud frames (its 99th percentile)
# Spectral flatness below which a frame is speech-like: looser than speech.py's 0.3 (a whole-recording test), so
# that fricatives count; 0.3 missed 9 % of the reference speech of the calibration conversations, 0.5 1.3 %.
SPEECH_MAX_FLATNESS = 0.5
BATCH_WINDOWS = 32  # windows per model call
LABEL_BLOCK_FRAMES = 1 << 15  # speech frames labelled at a time (step 4)
MAX_CLUSTER_WINDOWS = 2000  # more windows are clustered by an evenly spread subset, then all assigned (memory)
FRAME_S = 0.010
CLUSTERINGS = ("plda", "ahc", "kmeans", "spectral")


@dataclass(frozen=True)
class DiarizationSettings:
    """Every setting of the diarization, with the value measured best (docs/diarization.md)."""

    bridge_s: float = 0.3  # pauses up to this long inside speech are bridged
    min_speech_s: float = 0.2  # speech islands shorter than this are dropped
    window_s: float = 1.5  # speech per embedding window
    cluster_stretches: bool = False  # cluster the mean embeddings of stretches of speech, not windows
    normalise: str = "window"  # log fbank normalised over each window ("window") or its 30 s chunk's speech
    center: bool = False  # subtract the recording's mean window embedding before clustering
    hop_s: float = 0.5  # speech between window starts
    split_gap_s: float = 0.5  # no window spans a pause longer than this
    min_window_s: float = 0.5  # a stretch of speech shorter than a window gets one window if at least this long
    # "auto": PLDA merging when the count is estimated (cosine "ahc" when the model has no PLDA file beside
    # it), spherical k-means when it is given (each measured best there); or "plda", "ahc", "kmeans",
    # "spectral" (eigengap count) always
    clustering: str = "auto"
    plda_threshold: float = -5.0  # plda: clusters merge while "one speaker" is this much (log) as likely as two
    plda_group_windows: int = 4  # plda: runs of this many windows of a stretch of speech start as one cluster
    plda_window_weight: float = 1 / 3  # plda: evidence per window (1.5 s windows every 0.5 s: a third is new)
    kmeans_restarts: int = 20  # kmeans: seeded k-means++ starts, the best fit kept
    # online (deep_speaker.online_diarization): a run of windows joins the likeliest speaker so far when "one
    # speaker" is at least this (log) likely against "a new one"
    online_threshold: float = 5.0
    threshold: float = 0.4  # ahc: cosine similarity at which agglomerative clustering stops merging
    prune: float = 0.2  # spectral: each window keeps its affinities to this share of the others, its nearest
    merge_threshold: float = 1.0  # clusters whose mean embeddings reach this cosine similarity are merged
    refine_iterations: int = 2
    min_cluster_s: float = 2.0  # ahc: a cluster with less speech joins its nearest (PLDA weighs sizes itself)
    smooth_s: float = 0.5  # moving average of each frame's speaker scores
    min_turn_s: float = 0.3  # a shorter turn that touches another speaker's joins it
    max_speakers: int = 20  # the most speakers found when no count is given
    # An enrolled name goes to a speaker whose mean window embedding reaches this cosine similarity with the
    # enrolled embedding: under 1 % of names wrong on the calibration conversations (the model's verification
    # threshold, 0.38, gave 32 %; bench/diarization.py --naming)
    naming_threshold: float = 0.68
    # Online, a speaker is recognised once its mean so far reaches this; an online speaker is less pure than
    # an offline cluster, so the same rule (under 1 % wrong names on the calibration conversations,
    # bench/diarization.py --naming --online) asks more.
    online_naming_threshold: float = 0.8


@dataclass
class Diarization:
    """Who spoke when: `segments` [(start_s, end_s, label)], sorted; `reason` says why none when empty;
    `embeddings` {label: unit mean of that speaker's window embeddings}, to compare the speakers found with
    other recordings or enrolments (`SpeakerEncoder.similarity`)."""

    uri: str
    segments: list[tuple[float, float, str]]
    duration_s: float
    reason: str = ""
    speech_s: float = 0.0
    settings: dict = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def speakers(self) -> list[str]:
        """The labels in order of first appearance."""
        return list(dict.fromkeys(label for _, _, label in self.segments))

    @property
    def num_speakers(self) -> int:
        return len(self.speakers)

    def to_rttm(self, path: str | Path) -> Path:
        """Write the standard RTTM file (one SPEAKER line per segment), atomically."""
        return write_rttm(path, self.uri, self.segments)

    def to_dict(self) -> dict:
        """As diarize.py --json prints it."""
        return {"uri": self.uri, "duration_s": round(self.duration_s, 3), "speech_s": round(self.speech_s, 3),
                "num_speakers": self.num_speakers, "speakers": self.speakers, "reason": self.reason,
                "segments": [{"start": round(s, 3), "end": round(e, 3), "speaker": label}
                             for s, e, label in self.segments]}


# --- RTTM ---------------------------------------------------------------------------------------

def rttm_lines(uri: str, segments: Iterable[tuple[float, float, str]]) -> list[str]:
    """RTTM lines: SPEAKER <uri> 1 <start> <duration> <NA> <NA> <label> <NA> <NA>.

    >>> rttm_lines("call", [(0.5, 1.75, "speaker_1")])
    ['SPEAKER call 1 0.500 1.250 <NA> <NA> speaker_1 <NA> <NA>']
    """
    uri = _rttm_token(uri)
    return [f"SPEAKER {uri} 1 {start:.3f} {end - start:.3f} <NA> <NA> {_rttm_token(label)} <NA> <NA>"
            for start, end, label in segments]


def _rttm_token(text: str) -> str:
    """RTTM fields are separated by spaces: none inside one."""
    return re.sub(r"\s+", "_", str(text).strip()) or "_"


def write_rttm(path: str | Path, uri: str, segments: Iterable[tuple[float, float, str]]) -> Path:
    path = Path(path)
    lines = rttm_lines(uri, segments)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


def read_rttm(path: str | Path) -> dict[str, list[tuple[float, float, str]]]:
    """{uri: sorted [(start_s, end_s, label)]} of the SPEAKER lines of an RTTM file; InputError naming the
    line for anything else that is not a comment or blank."""
    found: dict[str, list[tuple[float, float, str]]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";")):
            continue
        if fields[0] != "SPEAKER":
            continue  # other RTTM types (SPKR-INFO, ...) say nothing of who spoke when
        try:
            start, duration = float(fields[3]), float(fields[4])
            label = fields[7]
        except (IndexError, ValueError):
            raise InputError(f"{path}:{number}: not an RTTM SPEAKER line ({line.strip()[:80]!r})") from None
        if not (math.isfinite(start) and math.isfinite(duration)) or duration < 0 or start < 0:
            raise InputError(f"{path}:{number}: start and duration must be non-negative numbers")
        found.setdefault(fields[1], []).append((round(start, 3), round(start + duration, 3), label))
    return {uri: sorted(segments) for uri, segments in found.items()}


# --- 1. speech at frame level -------------------------------------------------------------------

def speech_frames(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per 10 ms frame: speech by `deep_speaker.speech`'s rule, judged within this chunk of audio."""
    energy_db, flatness, peak_share = _frame_statistics(np.asarray(audio, np.float32), sample_rate)
    loud = energy_db > SPEECH_FLOOR_DBFS
    reference = float(np.percentile(energy_db[loud], 99)) if loud.any() else 0.0
    return _in_runs(speech_like(energy_db, flatness, peak_share, reference), MIN_RUN_FRAMES)


def speech_like(energy_db: np.ndarray, flatness: np.ndarray, peak_share: np.ndarray, loud_db: float) -> np.ndarray:
    """Frames that pass the speech rule before the run-length test: band energy above the floor and within
    `SPEECH_RANGE_DB` of `loud_db` (the loud frames' level), not noise-like, not a pure tone."""
    return ((energy_db > SPEECH_FLOOR_DBFS) & (energy_db > loud_db - SPEECH_RANGE_DB)
            & (flatness < SPEECH_MAX_FLATNESS) & (peak_share < MAX_PEAK_SHARE))


# --- streamed features and windows --------------------------------------------------------------

@dataclass
class _Frames:
    """What one pass over a recording keeps: per-frame speech flags, and the windows' embeddings."""

    speech: np.ndarray  # (num_frames,) raw speech flags
    starts: np.ndarray  # (num_windows,) index into the speech frames (the compressed axis) of each window
    lengths: np.ndarray  # (num_windows,) frames per window
    embeddings: np.ndarray  # (num_windows, dim)
    speech_index: np.ndarray  # (num_speech_frames,) timeline frame of each speech frame
    num_frames: int
    stretches: np.ndarray  # (num_windows,) the stretch of speech (between pauses over split_gap_s) of each window


class _WindowStream:
    """Cuts the stream of speech frames into windows and embeds them in batches. A pause longer than
    `split_gap` frames ends a stretch of speech: windows never span one (the last window of a stretch ends
    at its end; a stretch shorter than a window but of at least `min_frames` gets one window of its own)."""

    def __init__(self, embed, window: int, hop: int, dim: int, split_gap: int, min_frames: int,
                 per_window: bool = True):
        self.embed, self.window, self.hop, self.dim = embed, window, hop, dim
        self.per_window = per_window
        self.split_gap, self.min_frames = split_gap, min_frames
        self.buffer = np.zeros((0, 0), np.float32)  # speech fbank frames not yet past every window
        self.offset = 0  # compressed index of buffer[0]
        self.next_start = 0  # compressed index of the next window's start
        self.stretch_start = 0  # compressed index where the current stretch of speech began
        self.stretch = 0  # number of the current stretch
        self.stretches: list[int] = []  # stretch of each window
        self.last_start = -1  # compressed index of the last window queued
        self.last_frame = None  # timeline index of the last speech frame seen
        self.pending: list[np.ndarray] = []
        self.starts: list[int] = []
        self.lengths: list[int] = []
        self.rows: list[np.ndarray] = []

    def add(self, fbank: np.ndarray, frames: np.ndarray) -> None:
        """Speech frames' fbank rows and their timeline indices."""
        previous = np.concatenate([[frames[0] if self.last_frame is None else self.last_frame], frames[:-1]])
        breaks = np.flatnonzero(frames - previous > self.split_gap)
        pieces = np.split(np.arange(len(frames)), breaks)
        for k, piece in enumerate(pieces):
            if k > 0 or (len(breaks) and breaks[0] == 0):
                self.close_stretch()
            if len(piece):
                self._add(fbank[piece])
        self.last_frame = int(frames[-1])

    def _add(self, fbank: np.ndarray) -> None:
        self.buffer = fbank if self.buffer.size == 0 else np.concatenate([self.buffer, fbank])
        end = self.offset + len(self.buffer)
        while self.next_start + self.window <= end:
            local = self.next_start - self.offset
            self._queue(self.next_start, self.buffer[local:local + self.window])
            self.next_start += self.hop
        keep = min(self.next_start, end - self.window) - self.offset  # the stretch's last window may need them
        if keep > 0:
            self.buffer = self.buffer[keep:]
            self.offset += keep

    def close_stretch(self) -> None:
        """End the current stretch of speech: its last window, then a new grid."""
        end = self.offset + len(self.buffer)
        length = end - self.stretch_start
        if length >= self.window and self.last_start + self.window < end:
            self._queue(end - self.window, self.buffer[end - self.window - self.offset:])
        elif self.min_frames <= length < self.window:
            self._queue(self.stretch_start, self.buffer[self.stretch_start - self.offset:])
        self.buffer = np.zeros((0, 0), np.float32)
        self.offset = self.next_start = self.stretch_start = end
        self.stretch += 1

    def _queue(self, start: int, frames: np.ndarray) -> None:
        self.pending.append(normalize_utterance(frames) if self.per_window else np.asarray(frames, np.float32))
        self.last_start = start
        self.starts.append(start)
        self.stretches.append(self.stretch)
        self.lengths.append(len(frames))
        if len(self.pending) >= BATCH_WINDOWS:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        by_length: dict[int, list[int]] = {}
        for i, frames in enumerate(self.pending):
            by_length.setdefault(len(frames), []).append(i)
        out = np.zeros((len(self.pending), self.dim), np.float32)
        for indices in by_length.values():
            batch = np.stack([self.pending[i] for i in indices])[..., None]
            out[indices] = self.embed(batch)
        self.rows.append(out)
        self.pending = []

    def finish(self) -> None:
        self.close_stretch()
        self._flush()

    @property
    def stretch_open(self) -> bool:
        """Whether the current stretch of speech has frames (close_stretch would end something)."""
        return self.offset + len(self.buffer) > self.stretch_start

    @property
    def earliest_next_start(self) -> int:
        """No window queued from now on starts before this compressed index: the grid has passed it, and the
        open stretch's closing window ends at its end, a window's length on."""
        end = self.offset + len(self.buffer)
        return self.stretch_start if end - self.stretch_start < self.window else max(self.stretch_start,
                                                                                     end - self.window)

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The windows queued so far, embedded, as (starts, lengths, stretches, embeddings); forgotten here
        (what the online diarizer keeps instead, so its memory does not grow with the stream)."""
        self._flush()
        taken = (np.asarray(self.starts, np.int64), np.asarray(self.lengths, np.int64),
                 np.asarray(self.stretches, np.int64), self.embeddings())
        self.starts, self.lengths, self.stretches, self.rows = [], [], [], []
        return taken

    def embeddings(self) -> np.ndarray:
        return np.concatenate(self.rows) if self.rows else np.zeros((0, self.dim), np.float32)


def _stream_frames(blocks: Iterable[np.ndarray], config, settings: DiarizationSettings, embed, dim: int) -> _Frames:
    """One pass: speech flags per frame, and embeddings of windows of speech (the module's steps 1-2)."""
    rate = config.sample_rate_hz
    hop = config.frame_shift_samples
    length = config.frame_length_samples
    chunk = int(CHUNK_S * rate)
    window = int(round(settings.window_s / FRAME_S))
    stream = _WindowStream(embed, window, max(1, int(round(settings.hop_s / FRAME_S))), dim,
                           int(round(settings.split_gap_s / FRAME_S)),
                           max(10, int(round(settings.min_window_s / FRAME_S))), settings.normalise == "window")
    flags, indices = [], []
    frame0 = 0  # timeline index of the next frame
    buffer = np.zeros(0, np.float32)

    def analyse(audio: np.ndarray) -> int:
        """Frames of `audio` (whole frames only); returns how many."""
        nonlocal frame0
        count = 1 + (len(audio) - length) // hop
        used = audio[:length + (count - 1) * hop]
        speech = speech_frames(used, rate)[:count]
        speech = np.pad(speech, (0, count - len(speech)))
        fbank = compute_fbank(used, config)
        flags.append(speech)
        where = np.flatnonzero(speech)
        indices.append(frame0 + where)
        if len(where):
            voiced = fbank[where]
            if settings.normalise == "chunk":  # mean and variance of the chunk's speech frames
                voiced = normalize_utterance(voiced)
            stream.add(voiced, frame0 + where)
        frame0 += count
        return count

    for block in blocks:
        buffer = np.concatenate([buffer, block]) if len(buffer) else block
        if len(buffer) >= chunk + length:
            count = analyse(buffer[:chunk + length - hop])
            buffer = buffer[count * hop:]
    if len(buffer) >= length:
        analyse(buffer)
    speech_index = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    stream.finish()
    speech = np.concatenate(flags) if flags else np.zeros(0, bool)
    return _Frames(speech, np.asarray(stream.starts, np.int64), np.asarray(stream.lengths, np.int64),
                   stream.embeddings(), speech_index, frame0, np.asarray(stream.stretches, np.int64))


def window_embeddings(blocks: Iterable[np.ndarray], encoder, settings: DiarizationSettings | None = None) -> np.ndarray:
    """The window embeddings (n, dim) that step 2 makes of a recording: of one-speaker files, what the PLDA is
    fitted on (`bench/diarization.py --fit_plda`)."""
    settings = settings or DiarizationSettings()
    return _stream_frames(blocks, encoder.config, settings, encoder._embedder.embed_batch,
                          encoder.embedding_dim).embeddings


# --- 3. clustering ------------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cluster(embeddings: np.ndarray, weights: np.ndarray, settings: DiarizationSettings,
            num_speakers: int | None = None, min_speakers: int = 1, max_speakers: int | None = None,
            stretches: np.ndarray | None = None, plda=None) -> np.ndarray:
    """Cluster labels 0..k-1 of unit window embeddings (the module's step 3). `stretches` (the stretch of
    speech of each window) lets PLDA start from runs of windows, and `settings.cluster_stretches` cluster
    the stretches' mean embeddings; `plda` (deep_speaker.plda.PLDA) is what "plda" and "auto" merge with."""
    n = len(embeddings)
    max_speakers = settings.max_speakers if max_speakers is None else max_speakers
    if n == 1:
        return np.zeros(1, np.int64)
    method = clustering_method(settings, num_speakers, plda is not None)
    if method == "plda":
        if stretches is None:
            stretches = np.zeros(n, np.int64)
        labels = plda_labels(embeddings, stretches, plda, settings, num_speakers, min_speakers, max_speakers)
        # Windows move to their nearest speaker; no size floor, since PLDA has weighed each cluster's size.
        return _refined(embeddings, weights, labels, dataclasses.replace(settings, min_cluster_s=0.0),
                        num_speakers, min_speakers)
    points, point_weights = embeddings, weights
    if settings.cluster_stretches and stretches is not None:
        _, group = np.unique(stretches, return_inverse=True)
        points = _centroids(embeddings, group, weights).astype(np.float32)
        point_weights = np.bincount(group, weights)
        if len(points) < 2:
            points, point_weights = embeddings, weights
    m = len(points)
    subset = np.arange(m) if m <= MAX_CLUSTER_WINDOWS else np.linspace(0, m - 1, MAX_CLUSTER_WINDOWS).astype(int)
    if method == "kmeans":
        count = num_speakers if num_speakers is not None else int(np.clip(
            _ahc_labels(points[subset], settings, None, min_speakers, max_speakers).max(), min_speakers, max_speakers))
        labels = spherical_kmeans(points[subset], point_weights[subset], count, settings.kmeans_restarts) + 1
    elif method == "spectral":
        labels = spectral_labels(points[subset], settings.prune, num_speakers, min_speakers, max_speakers) + 1
    else:
        labels = _ahc_labels(points[subset], settings, num_speakers, min_speakers, max_speakers)
    centroids = _centroids(points[subset], labels - 1, point_weights[subset])
    assigned = np.argmax(embeddings @ centroids.T, axis=1)
    return _refined(embeddings, weights, assigned, settings, num_speakers, min_speakers)


def clustering_method(settings: DiarizationSettings, num_speakers: int | None, have_plda: bool) -> str:
    """What step 3 uses: the setting, with "auto" resolved (k-means for a given count, else PLDA when the
    model has one, else cosine agglomerative clustering)."""
    if settings.clustering == "auto":
        return "kmeans" if num_speakers is not None else ("plda" if have_plda else "ahc")
    if settings.clustering == "plda" and not have_plda:
        raise InputError(f"clustering 'plda' needs the model's {PLDA_FILE} (python bench/diarization.py --fit_plda)")
    if settings.clustering not in CLUSTERINGS:
        raise InputError(f"clustering must be one of auto, {', '.join(CLUSTERINGS)}; got {settings.clustering!r}")
    return settings.clustering


def plda_labels(embeddings: np.ndarray, stretches: np.ndarray, plda, settings: DiarizationSettings,
                num_speakers: int | None, min_speakers: int, max_speakers: int) -> np.ndarray:
    """Labels 0..k-1 by PLDA merging: every run of `plda_group_windows` windows of a stretch of speech starts
    as a cluster; the two clusters most likely one speaker merge, again and again, until "one speaker" is
    less likely than `plda_threshold` says (or the count is reached). A window counts `plda_window_weight`
    (overlapping windows repeat each other's speech). More than MAX_CLUSTER_WINDOWS starting clusters: an
    evenly spread subset is merged and the others join the nearest result."""
    n = len(embeddings)
    stretch = np.cumsum(np.r_[0, np.diff(stretches) != 0])  # 0, 0, 1, 1, 1, 2, ...: each window's stretch
    first = np.flatnonzero(np.r_[True, np.diff(stretch) != 0])  # each stretch's first window
    position = np.arange(n) - first[stretch]  # each window's place in its stretch
    _, group = np.unique(stretch * (n + 1) + position // max(1, settings.plda_group_windows), return_inverse=True)
    projected = plda.project(embeddings)
    counts = np.bincount(group).astype(np.float64)
    totals = np.zeros((len(counts), plda.rank))
    np.add.at(totals, group, projected)
    m = len(counts)
    subset = np.arange(m) if m <= MAX_CLUSTER_WINDOWS else np.linspace(0, m - 1, MAX_CLUSTER_WINDOWS).astype(int)
    merged = _plda_merge(plda, counts[subset] * settings.plda_window_weight,
                         totals[subset] * settings.plda_window_weight, settings.plda_threshold,
                         num_speakers, min_speakers, max_speakers)
    if m > len(subset):  # the other groups' windows join the nearest cluster (cosine, the model's space)
        by_group = np.full(m, -1, np.int64)
        by_group[subset] = merged
        known = by_group[group] >= 0
        centroids = _centroids(embeddings[known], by_group[group][known], np.ones(int(known.sum())))
        return np.argmax(embeddings @ centroids.T, axis=1)
    return merged[group]


def _plda_merge(plda, counts: np.ndarray, totals: np.ndarray, threshold: float, num_speakers: int | None,
                min_speakers: int, max_speakers: int) -> np.ndarray:
    """Greedy agglomerative merging by PLDA log-likelihood ratio; labels 0..k-1 of the starting clusters.
    Each row's best partner is kept, so a merge costs one new row of scores, not a new matrix."""
    m = len(counts)
    counts, totals = counts.astype(np.float64).copy(), totals.astype(np.float64).copy()
    alive = np.ones(m, bool)
    score = np.stack([plda.merge_scores(counts[i], totals[i], counts, totals) for i in range(m)])
    np.fill_diagonal(score, -np.inf)
    best, partner = score.max(axis=1), score.argmax(axis=1)
    label = np.arange(m)
    clusters = m
    while clusters > 1:
        i = int(np.argmax(best))
        j, value = int(partner[i]), float(best[i])
        if not np.isfinite(value):
            break
        if num_speakers is not None:
            if clusters <= num_speakers:
                break
        elif clusters <= min_speakers or (value < threshold and clusters <= max_speakers):
            break
        counts[i] += counts[j]
        totals[i] += totals[j]
        alive[j] = False
        label[label == j] = i
        score[j, :] = score[:, j] = -np.inf
        row = plda.merge_scores(counts[i], totals[i], counts, totals)
        row[~alive] = -np.inf
        row[i] = -np.inf
        score[i, :] = score[:, i] = row
        best[j] = -np.inf
        stale = np.flatnonzero(alive & ((partner == i) | (partner == j)))
        stale = np.union1d(stale, [i])
        best[stale], partner[stale] = score[stale].max(axis=1), score[stale].argmax(axis=1)
        better = alive & (row > best)
        best[better], partner[better] = row[better], i
        clusters -= 1
    return np.unique(label, return_inverse=True)[1]


def spherical_kmeans(points: np.ndarray, weights: np.ndarray, k: int, restarts: int, seed: int = 0,
                     iterations: int = 30) -> np.ndarray:
    """Labels 0..k-1 of unit rows: k-means on the sphere (each point to the centroid of highest cosine), from
    `restarts` seeded k-means++ starts; the start that fits best (largest sum of the clusters' weighted
    resultant lengths) is kept."""
    n = len(points)
    k = min(k, n)
    if k <= 1:
        return np.zeros(n, np.int64)
    x = points.astype(np.float64)
    rng = np.random.default_rng(seed)
    best_fit, best_labels = -np.inf, np.zeros(n, np.int64)
    for _ in range(max(1, restarts)):
        centres = [x[rng.integers(n)]]
        for _ in range(1, k):  # k-means++: the next centre far from those chosen (cosine distance, squared)
            distance = np.maximum(1.0 - np.max(x @ np.array(centres).T, axis=1), 0.0) ** 2
            total = distance.sum()
            centres.append(x[rng.choice(n, p=distance / total)] if total > 0 else x[rng.integers(n)])
        labels = np.argmax(x @ np.array(centres).T, axis=1)
        for _ in range(iterations):
            sums = np.zeros((k, x.shape[1]))
            np.add.at(sums, labels, x * weights[:, None])
            empty = np.flatnonzero(np.linalg.norm(sums, axis=1) == 0)
            if len(empty):  # an empty cluster restarts at the point that fits its own worst
                worst = np.argsort(np.sum(x * _unit(sums)[labels], axis=1))[:len(empty)]
                sums[empty] = x[worst]
            new = np.argmax(x @ _unit(sums).T, axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
        sums = np.zeros((k, x.shape[1]))
        np.add.at(sums, labels, x * weights[:, None])
        fit = np.linalg.norm(sums, axis=1).sum()
        if fit > best_fit:
            best_fit, best_labels = fit, labels
    return np.unique(best_labels, return_inverse=True)[1]


def spectral_labels(embeddings: np.ndarray, prune: float, num_speakers: int | None, min_speakers: int,
                    max_speakers: int) -> np.ndarray:
    """Spectral clustering of unit rows: cosine affinities, each row pruned to its nearest `prune` share and
    symmetrised, the normalised Laplacian's smallest eigenvectors; the count is `num_speakers` or the
    largest gap among the first `max_speakers` + 1 eigenvalues (clamped to `min_speakers`); k-means++ on the
    row-normalised eigenvectors (scipy.cluster.vq, seeded)."""
    from scipy.cluster.vq import kmeans2
    from scipy.linalg import eigh

    n = len(embeddings)
    affinity = np.clip(embeddings.astype(np.float64) @ embeddings.T.astype(np.float64), 0.0, None)
    keep = max(2, int(math.ceil(prune * n)))
    if keep < n:
        cut = np.partition(affinity, n - keep, axis=1)[:, n - keep][:, None]
        affinity = np.where(affinity >= cut, affinity, 0.0)
    affinity = (affinity + affinity.T) / 2
    degree = np.maximum(affinity.sum(axis=1), 1e-12)
    scale = 1.0 / np.sqrt(degree)
    laplacian = np.eye(n) - scale[:, None] * affinity * scale[None, :]
    top = min(n - 1, max_speakers)
    values, vectors = eigh(laplacian, subset_by_index=[0, top])
    if num_speakers is not None:
        k = min(num_speakers, n)
    else:
        k = int(np.argmax(np.diff(values[:top + 1]))) + 1
        k = int(np.clip(k, min_speakers, max_speakers))
    if k == 1:
        return np.zeros(n, np.int64)
    points = vectors[:, :k]
    points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    _, labels = kmeans2(points, k, minit="++", seed=np.random.default_rng(0), iter=30)
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def _ahc_labels(embeddings: np.ndarray, settings: DiarizationSettings, num_speakers: int | None,
                min_speakers: int, max_speakers: int) -> np.ndarray:
    """Agglomerative clustering (average linkage, cosine), labels 1..k."""
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(embeddings.astype(np.float64), method="average", metric="cosine")
    if num_speakers is not None:
        return fcluster(tree, t=min(num_speakers, len(embeddings)), criterion="maxclust")
    labels = fcluster(tree, t=1.0 - settings.threshold, criterion="distance")
    k = len(np.unique(labels))
    if not min_speakers <= k <= max_speakers:
        labels = fcluster(tree, t=int(np.clip(k, min_speakers, max_speakers)), criterion="maxclust")
    return np.unique(labels, return_inverse=True)[1] + 1


def _refined(embeddings: np.ndarray, weights: np.ndarray, assigned: np.ndarray, settings: DiarizationSettings,
             num_speakers: int | None, min_speakers: int) -> np.ndarray:
    """Windows reassigned to their nearest centroid, then too small clusters merged into their nearest."""
    for _ in range(settings.refine_iterations):
        centroids = _centroids(embeddings, assigned, weights)
        assigned = np.argmax(embeddings @ centroids.T, axis=1)
    if num_speakers is None and settings.merge_threshold < 1.0:
        # Clusters whose mean embeddings (far less noisy than one window's) are this similar are one speaker.
        while True:
            present = np.unique(assigned)
            if len(present) <= max(min_speakers, 1):
                break
            centroids = _centroids(embeddings, assigned, weights)[present]
            similarity = centroids @ centroids.T
            np.fill_diagonal(similarity, -np.inf)
            a, b = divmod(int(np.argmax(similarity)), len(present))
            if similarity[a, b] < settings.merge_threshold:
                break
            assigned[assigned == present[b]] = present[a]
        for _ in range(settings.refine_iterations):
            centroids = _centroids(embeddings, assigned, weights)
            assigned = np.unique(np.argmax(embeddings @ centroids.T, axis=1), return_inverse=True)[1]
    if num_speakers is None:  # too little speech for a speaker of its own: merged into its nearest
        floor = max(min_speakers, 1)
        while True:
            centroids = _centroids(embeddings, assigned, weights)
            present = np.unique(assigned)
            # Speech of a cluster: its windows times the hop (each second of speech starts one window per hop).
            mass = np.bincount(assigned, minlength=len(centroids))[present] * settings.hop_s
            smallest = present[np.argmin(mass)]
            if len(present) <= floor or mass.min() >= settings.min_cluster_s:
                break
            others = present[present != smallest]
            members = assigned == smallest
            assigned[members] = others[np.argmax(embeddings[members] @ centroids[others].T, axis=1)]
    _, assigned = np.unique(assigned, return_inverse=True)
    return assigned


def _centroids(embeddings: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    k = int(labels.max()) + 1
    sums = np.zeros((k, embeddings.shape[1]))
    np.add.at(sums, labels, embeddings * weights[:, None])
    return _unit(sums)


# --- 4. frame-level boundaries ------------------------------------------------------------------

def frame_labels(frames: _Frames, labels: np.ndarray, settings: DiarizationSettings) -> np.ndarray:
    """Label (0..k-1) of every speech frame on the compressed axis, -1 where no window covers it (the module's
    step 4). Computed in blocks of `LABEL_BLOCK_FRAMES`, with the context the smoothing needs, so its memory
    does not grow with the recording."""
    centroids = _centroids(frames.embeddings, labels, frames.lengths.astype(np.float64))
    scores = (frames.embeddings @ centroids.T).astype(np.float32)  # (windows, k)
    total = len(frames.speech_index)
    starts, ends = frames.starts, np.minimum(frames.starts + frames.lengths, total)
    out = np.full(total, -1, np.int64)
    for first in range(0, total, LABEL_BLOCK_FRAMES):
        last = min(total, first + LABEL_BLOCK_FRAMES)
        out[first:last] = smoothed_labels(starts, ends, scores, first, last, total, settings.smooth_s)
    return out


def smoothed_labels(starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, first: int, last: int, total: int,
                    smooth_s: float) -> np.ndarray:
    """Labels of speech frames first..last-1 (compressed axis; -1 where no window covers a frame): each frame's
    mean score per speaker over the windows [starts, ends) covering it (`scores`: windows x speakers), averaged
    over `smooth_s` (the edge values repeated at frame 0 and at `total`), the best speaker."""
    k = scores.shape[1]
    width = max(1, int(round(smooth_s / FRAME_S)))
    half = width // 2
    low, high = max(0, first - half - 1), min(total, last + width)  # the block and its smoothing context
    inside = (starts < high) & (ends > low)
    begin, finish = np.clip(starts[inside], low, high) - low, np.clip(ends[inside], low, high) - low
    acc = np.zeros((high - low + 1, k), np.float64)
    np.add.at(acc, begin, scores[inside])
    np.add.at(acc, finish, -scores[inside])
    count = np.zeros(high - low + 1)
    np.add.at(count, begin, 1)
    np.add.at(count, finish, -1)
    covered = np.cumsum(count)[:high - low]
    mean = np.cumsum(acc, axis=0)[:high - low] / np.maximum(covered, 1)[:, None]
    if width > 1:  # moving average over `width` frames
        padded = np.pad(mean, ((half, width - 1 - half), (0, 0)), mode="edge")
        cumulative = np.concatenate([np.zeros((1, k)), np.cumsum(padded, axis=0)])
        mean = (cumulative[width:] - cumulative[:-width])[:high - low] / width
    block = slice(first - low, last - low)
    return np.where(covered[block] > 0, np.argmax(mean[block], axis=1), -1)


def _timeline_segments(frames: _Frames, compressed: np.ndarray, settings: DiarizationSettings
                       ) -> list[tuple[float, float, int]]:
    """Segments (start_s, end_s, cluster) on the timeline: the bridged speech mask, each frame taking the label
    of the nearest labelled speech frame."""
    mask = bridge(frames.speech, int(round(settings.bridge_s / FRAME_S)), int(round(settings.min_speech_s / FRAME_S)))
    if not mask.any() or not (compressed >= 0).any():
        return []
    n = frames.num_frames
    label = np.full(n, -1, np.int64)
    label[frames.speech_index] = compressed
    known = label >= 0
    positions = np.arange(n)
    before = np.maximum.accumulate(np.where(known, positions, -1))
    after = np.minimum.accumulate(np.where(known, positions, n)[::-1])[::-1]
    use_after = (before < 0) | ((after < n) & (after - positions < positions - before))
    nearest = np.where(use_after, np.minimum(after, n - 1), np.maximum(before, 0))
    filled = np.where(mask, label[nearest], -1)
    change = np.flatnonzero(np.diff(np.concatenate([[-1], filled, [-1]])) != 0)
    runs_ = [[int(start), int(end), int(filled[start])] for start, end in zip(change[:-1], change[1:])
             if filled[start] >= 0]
    # A turn shorter than min_turn_s that touches another speaker's turn is that turn's (a voice does not
    # change for a few frames); loops over turns, not frames.
    shortest = int(round(settings.min_turn_s / FRAME_S))
    merged: list[list[int]] = []
    for run in runs_:
        if merged and merged[-1][1] == run[0] and (run[1] - run[0] < shortest or merged[-1][2] == run[2]):
            merged[-1][1] = run[1]
        elif merged and merged[-1][1] == run[0] and merged[-1][1] - merged[-1][0] < shortest:
            merged[-1][1], merged[-1][2] = run[1], run[2]
        else:
            merged.append(run)
    return [(round(start * FRAME_S, 3), round(end * FRAME_S, 3), label) for start, end, label in merged]


# --- the whole -----------------------------------------------------------------------------------

def diarize_blocks(blocks: Iterable[np.ndarray], uri: str, encoder, *, num_speakers: int | None = None,
                   min_speakers: int | None = None, max_speakers: int | None = None, enrolment=None,
                   settings: DiarizationSettings | None = None) -> Diarization:
    """Diarize a stream of mono float32 blocks at the model's rate (see `SpeakerEncoder.diarize`)."""
    settings = settings or DiarizationSettings()
    check_counts(num_speakers, min_speakers, max_speakers)
    config = encoder.config
    frames = _stream_frames(blocks, config, settings, encoder._embedder.embed_batch, encoder.embedding_dim)
    duration = frames.num_frames * FRAME_S
    speech_s = float(frames.speech.sum()) * FRAME_S
    settings_dict = asdict(settings)
    if frames.num_frames == 0:
        return Diarization(uri, [], duration, "no speech detected (the recording is shorter than one frame)",
                           0.0, settings_dict)
    if len(frames.embeddings) == 0:
        reason = (f"no speech detected ({speech_s:.2f} s of speech-like frames, at least "
                  f"{settings.min_window_s:g} s are needed)")
        return Diarization(uri, [], duration, reason, speech_s, settings_dict)
    raw = frames.embeddings
    if settings.center and len(raw) > 1:  # what all windows of the recording share is not who speaks
        frames.embeddings = _unit(raw - raw.mean(axis=0, keepdims=True)).astype(np.float32)
    plda = model_plda(encoder) if clustering_wants_plda(settings, num_speakers) else None
    labels = cluster(frames.embeddings, frames.lengths.astype(np.float64), settings, num_speakers,
                     min_speakers or 1, max_speakers, frames.stretches, plda)
    compressed = frame_labels(frames, labels, settings)
    segments = _timeline_segments(frames, compressed, settings)
    # Each speaker's embedding, in the model's own space (what enrolled speakers are compared with).
    centroids = _centroids(raw, labels, frames.lengths.astype(np.float64)).astype(np.float32)
    names = _names(segments, centroids, encoder, enrolment, settings.naming_threshold)
    embeddings = {names[c]: centroids[c] for c in dict.fromkeys(c for _, _, c in segments)}
    return Diarization(uri, [(s, e, names[c]) for s, e, c in segments], duration, "" if segments else
                       "no speech left after dropping speech islands shorter than "
                       f"{settings.min_speech_s:g} s", speech_s, settings_dict, embeddings)


def clustering_wants_plda(settings: DiarizationSettings, num_speakers: int | None) -> bool:
    return settings.clustering == "plda" or (settings.clustering == "auto" and num_speakers is None)


def model_plda(encoder):
    """The PLDA beside the encoder's model (deep_speaker.plda), loaded once per encoder; None when there is
    none. One fitted on another model is not used: "auto" then clusters by cosine, with a warning."""
    if not hasattr(encoder, "_diarization_plda"):
        path = Path(encoder.model_path).parent / PLDA_FILE
        plda = None
        if path.is_file():
            try:
                plda = load_plda(path, encoder.model_identity["sha256"])
            except PLDAError as error:
                import warnings

                warnings.warn(f"{error}: speakers are counted by cosine clustering instead", stacklevel=3)
        encoder._diarization_plda = plda
    return encoder._diarization_plda


def check_counts(num_speakers: int | None, min_speakers: int | None, max_speakers: int | None) -> None:
    """One-line errors for speaker counts that cannot be met.

    >>> check_counts(None, 3, 2)
    Traceback (most recent call last):
    ...
    deep_speaker.errors.InputError: min_speakers 3 is more than max_speakers 2
    """
    for name, value in (("num_speakers", num_speakers), ("min_speakers", min_speakers),
                        ("max_speakers", max_speakers)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if num_speakers is not None and (min_speakers is not None or max_speakers is not None):
        raise InputError("give num_speakers or min_speakers/max_speakers, not both")
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise InputError(f"min_speakers {min_speakers} is more than max_speakers {max_speakers}")


def _names(segments, centroids: np.ndarray, encoder, enrolment, threshold: float) -> dict[int, str]:
    """speaker_1.. in order of first appearance; enrolled names for clusters that match (cosine similarity of
    the cluster's mean window embedding, its row of `centroids`, and the enrolled embedding at least
    `threshold`)."""
    order = list(dict.fromkeys(c for _, _, c in segments))
    names = {c: f"speaker_{i}" for i, c in enumerate(order, start=1)}
    if enrolment is None or not order:
        return names
    from deep_speaker.identification import enrolment_settings

    enrolment.check_compatible(encoder.model_identity, enrolment_settings(encoder.config))
    scores = centroids[order] @ _unit(np.asarray(enrolment.embeddings, np.float64)).T  # (clusters, enrolled)
    matched = match_enrolled(scores, threshold)
    for c, e in matched.items():
        names[order[c]] = enrolment.speakers[e]
    numbered = [order[c] for c in range(len(order)) if c not in matched]
    for i, c in enumerate(numbered, start=1):  # the rest stay numbered, 1.. in order of appearance
        names[c] = f"speaker_{i}"
    return names


def match_enrolled(scores: np.ndarray, threshold: float) -> dict[int, int]:
    """{row: column} of a (speakers found, enrolled) score matrix: best pairs first, each row and column
    once, none below `threshold`.

    >>> match_enrolled(np.array([[0.9, 0.8], [0.85, 0.3]]), 0.5)
    {0: 0}
    """
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for flat in np.argsort(-scores, axis=None, kind="stable"):
        row, column = divmod(int(flat), scores.shape[1])
        if scores[row, column] < threshold:
            break
        if row not in matched and column not in taken:
            matched[row] = column
            taken.add(column)
    return matched


def waveform_blocks(audio: np.ndarray, block: int) -> Iterator[np.ndarray]:
    """Views of audio already in memory, `block` samples at a time."""
    for start in range(0, len(audio), block):
        yield audio[start:start + block]


def diarization_json(results: list[Diarization]) -> str:
    return json.dumps([r.to_dict() for r in results])
