"""Online diarization: who is speaking, as the audio arrives (a microphone, a call, a stream).

    stream = encoder.diarize_stream(sample_rate=16000)
    for block in blocks:                    # any sizes, as they come
        for start, end, speaker in stream.push(block):
            print(start, end, speaker)      # a turn, final: it never changes afterwards
    stream.close()                          # the last turns; stream.diarization() is the whole result

The steps are the offline ones (`deep_speaker.diarization`) made causal:

1. **Speech.** The audio is analysed in pieces of `PIECE_S`; a frame is speech by the same rule, its
   loudness judged against the loud frames of the last `LOUDNESS_MEMORY_S` heard (offline: of its 30 s
   chunk, future included).
2. **Windows** of `window_s` of speech every `hop_s`, embedded as soon as they are complete.
3. **Clustering, one decision at a time.** Each run of `plda_group_windows` windows of a stretch of speech
   (or what its stretch has when a pause ends it) joins the speaker it most likely belongs to, by the same
   PLDA log-likelihood ratio as offline, if that ratio reaches `online_threshold`; else it starts a new
   speaker (up to `max_speakers`). A decision is never undone. A model without a PLDA file compares the
   run's mean embedding with each speaker's by cosine, against `threshold`.
4. **Boundaries** as offline: each speech frame takes the speaker its covering windows score best
   (smoothed over `smooth_s`), once every window that covers it is decided. Turns are assembled by the
   offline rules (pauses up to `bridge_s` bridged, islands under `min_speech_s` dropped, turns under
   `min_turn_s` joined to their neighbour) and a turn is final when the next one has begun or a pause
   longer than `bridge_s` follows it.

A turn therefore comes a second or a few after it ends (latency in docs/diarization.md). Turns carry
speaker_1, speaker_2, ... (in order of first final turn), which never change. With an enrolment, a speaker
is recognised once its mean embedding reaches `online_naming_threshold` with an enrolled speaker: that may
be after its first turns, so the name comes as an event (`new_names()`, `names`), and `diarization()`
gives the turns under the names. The result depends
on the audio only, not on the sizes of the blocks pushed. Memory is bounded: per speaker a few kB, and only
the windows and frames not yet final.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from deep_speaker.diarization import (FRAME_S, SPEECH_FLOOR_DBFS, Diarization, DiarizationSettings, _unit,
                                      _WindowStream, match_enrolled, model_plda, smoothed_labels, speech_like)
from deep_speaker.speech import MIN_RUN_FRAMES, _frame_statistics, _in_runs

PIECE_S = 0.5  # audio analysed at a time: frames, speech flags, windows, decisions
LOUDNESS_MEMORY_S = 30.0  # a frame's loudness is judged against the loud frames of this much past audio
NEW_SPEAKER = "(new speaker)"  # `current`'s label for a speaker not named yet (names come with final turns)
FILE_BLOCK_S = 0.25  # a file diarized online is pushed in blocks of this much audio, as a live source sends it


class OnlineDiarizer:
    """Diarize a stream as it arrives; see the module docstring. Made by `SpeakerEncoder.diarize_stream`."""

    def __init__(self, encoder, *, sample_rate: int | None = None, uri: str = "stream", enrolment=None,
                 max_speakers: int | None = None, settings: DiarizationSettings | None = None):
        self.settings = settings = settings or DiarizationSettings()
        self.encoder, self.uri, self.enrolment = encoder, uri, enrolment
        config = encoder.config
        self._rate = config.sample_rate_hz
        self._input_rate = int(sample_rate or self._rate)
        self._resampler = None
        if self._input_rate != self._rate:
            import soxr

            self._resampler = soxr.ResampleStream(self._input_rate, self._rate, 1, dtype="float32", quality="HQ")
        self._hop, self._length = config.frame_shift_samples, config.frame_length_samples
        self._piece = int(round(PIECE_S / FRAME_S))  # frames per piece
        self._audio = np.zeros(0, np.float32)  # model-rate samples not yet analysed
        self._frame0 = 0  # timeline index of the next frame to analyse
        self._loud = deque()  # band energies (dB) of recent loud frames, one array per piece
        self._raw_tail = np.zeros(0, bool)  # raw speech flags: `_context` decided frames, then undecided ones
        self._context = 0
        self._decided = 0  # timeline frames whose speech flag is decided
        self._fbank = np.zeros((0, config.num_fbanks), np.float32)  # fbank rows of frames not yet decided
        self._fbank0 = 0  # timeline index of its first row
        window = int(round(settings.window_s / FRAME_S))
        self._split_gap = int(round(settings.split_gap_s / FRAME_S))
        self._windows = _WindowStream(encoder._embedder.embed_batch, window,
                                      max(1, int(round(settings.hop_s / FRAME_S))), encoder.embedding_dim,
                                      self._split_gap, max(10, int(round(settings.min_window_s / FRAME_S))))
        self._last_speech = -(10 ** 9)  # timeline index of the last speech frame
        # Speech frames (compressed axis) not yet final: their timeline index; the first is `_final`.
        self._speech_index = np.zeros(0, np.int64)
        self._final = 0  # compressed frames before this are labelled and handed to the turns
        self._context_start = 0  # ... and from this one on, their windows are kept (the smoothing's context)
        self._total = 0  # compressed frames so far
        # Windows not yet past the final frontier: start, end (compressed), speaker (-1: undecided), embedding.
        dim = encoder.embedding_dim
        self._w_start = np.zeros(0, np.int64)
        self._w_end = np.zeros(0, np.int64)
        self._w_stretch = np.zeros(0, np.int64)
        self._w_speaker = np.zeros(0, np.int64)
        self._w_embedding = np.zeros((0, dim), np.float32)
        # Speakers: sums of their windows' unit embeddings and, with a PLDA, their evidence in its space.
        self._plda = model_plda(encoder)
        self._sums = np.zeros((0, dim))
        self._counts = np.zeros(0)
        self._totals = np.zeros((0, self._plda.rank if self._plda is not None else 0))
        self.max_speakers = max_speakers or settings.max_speakers
        # Turns: the open run [start, end, speaker) in timeline frames, the turns of the current island of
        # speech (pauses up to bridge_s) not yet final, and the final turns.
        self._run: list[int] | None = None
        self._tentative: list[list[int]] = []
        self._island_start: int | None = None  # timeline frame where the current island began
        self._labels: dict[int, str] = {}  # speaker -> speaker_N, given at its first final turn
        self._enrolled_names: dict[int, str] = {}  # speaker -> the enrolled name it was recognised as
        self._announced: list[tuple[str, str]] = []  # (speaker_N, name) not yet returned by new_names()
        self._changed: set[int] = set()  # speakers whose evidence or label changed since the last _recognise
        # The enrolled speakers' unit embeddings, and which names are given.
        self._enrolled = None if enrolment is None or not len(enrolment.speakers) else \
            _unit(np.asarray(enrolment.embeddings, np.float32))
        self._taken = np.zeros(0 if self._enrolled is None else len(self._enrolled), bool)
        self.turns: list[tuple[float, float, str]] = []
        self._closed = False
        self.samples_in = 0  # input samples pushed

    # --- the public surface ------------------------------------------------------------------------

    @property
    def seconds(self) -> float:
        """Audio pushed so far, in seconds."""
        return self.samples_in / self._input_rate

    @property
    def current(self) -> tuple[float, str] | None:
        """The latest turn not yet final, provisionally: (start_s, its speaker's name, or "(new speaker)" for
        a speaker with no final turn yet); None when every turn heard is final."""
        run = self._run if self._run is not None else (self._tentative[-1] if self._tentative else None)
        if run is None:
            return None
        return round(run[0] * FRAME_S, 3), self._labels.get(run[2], NEW_SPEAKER)

    def push(self, samples: np.ndarray) -> list[tuple[float, float, str]]:
        """Feed mono samples at the stream's rate; returns the turns that became final, in order."""
        if self._closed:
            raise ValueError("push() after close()")
        samples = np.asarray(samples, np.float32).reshape(-1)
        if not np.all(np.isfinite(samples)):
            raise ValueError("samples hold NaN or infinite values")
        self.samples_in += len(samples)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        self._audio = np.concatenate([self._audio, samples]) if len(self._audio) else samples
        done = len(self.turns)
        need = self._length + (self._piece - 1) * self._hop  # samples of one piece of frames
        while len(self._audio) >= need:
            self._analyse(self._audio[:need], self._piece)
            self._audio = self._audio[self._piece * self._hop:]
            self._advance(final=False)
        return self.turns[done:]

    def close(self) -> list[tuple[float, float, str]]:
        """The end of the stream: the rest is analysed and every turn left is final; returns those."""
        if self._closed:
            return []
        done = len(self.turns)
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self._audio = np.concatenate([self._audio, tail])
        if len(self._audio) >= self._length:
            count = 1 + (len(self._audio) - self._length) // self._hop
            self._analyse(self._audio[:self._length + (count - 1) * self._hop], count)
        self._audio = np.zeros(0, np.float32)
        self._flags(np.zeros(0, bool), last=True)
        self._windows.finish()
        self._closed = True
        self._advance(final=True)
        return self.turns[done:]

    @property
    def names(self) -> dict[str, str]:
        """{speaker_N: enrolled name} of the speakers recognised so far."""
        return {self._labels[speaker]: name for speaker, name in self._enrolled_names.items()}

    def new_names(self) -> list[tuple[str, str]]:
        """The (speaker_N, enrolled name) pairs found since the last call, in order."""
        found, self._announced = self._announced, []
        return found

    def diarization(self) -> Diarization:
        """The final turns so far as a `Diarization` (after close(): the whole stream's), each recognised
        speaker under its enrolled name."""
        names = self.names
        embeddings = {names.get(label, label): _unit(self._sums[speaker]).astype(np.float32)
                      for speaker, label in self._labels.items()}
        reason = "" if self.turns else "no speech detected" + ("" if self._closed else " yet")
        return Diarization(self.uri, [(s, e, names.get(label, label)) for s, e, label in self.turns],
                           self._frame0 * FRAME_S, reason, self._total * FRAME_S,
                           {**self.settings.__dict__, "online": True}, embeddings)

    # --- 1-2. frames, speech, windows ----------------------------------------------------------------

    def _analyse(self, audio: np.ndarray, count: int) -> None:
        """`count` frames of `audio`: their fbank, and their speech flags once their runs are known."""
        from deep_speaker.features import compute_fbank

        energy_db, flatness, peak_share = (v[:count] for v in _frame_statistics(audio, self._rate))
        self._loud.append(energy_db[energy_db > SPEECH_FLOOR_DBFS])
        while len(self._loud) > LOUDNESS_MEMORY_S / PIECE_S:
            self._loud.popleft()
        heard = np.concatenate(self._loud)
        reference = float(np.percentile(heard, 99)) if len(heard) else 0.0
        fbank = compute_fbank(audio, self.encoder.config)[:count]
        self._fbank = np.concatenate([self._fbank, fbank]) if len(self._fbank) else fbank
        self._frame0 += count
        self._flags(speech_like(energy_db, flatness, peak_share, reference), last=False)

    def _flags(self, raw: np.ndarray, last: bool) -> None:
        """Decide the speech flags whose runs are known: all but the last MIN_RUN_FRAMES - 1 frames (their
        run may go on into the next piece), all at the end; hand the speech frames to the windows."""
        flags = np.concatenate([self._raw_tail, raw])  # `_context` decided frames, then the undecided ones
        first = self._frame0 - len(flags)  # timeline index of flags[0]
        end = len(flags) if last else max(self._context, len(flags) - (MIN_RUN_FRAMES - 1))
        speech = _in_runs(flags, MIN_RUN_FRAMES)
        where = first + self._context + np.flatnonzero(speech[self._context:end])
        keep = max(0, end - (MIN_RUN_FRAMES - 1))  # decided frames kept as the context of the next runs
        self._raw_tail, self._context = flags[keep:], end - keep
        self._decided = first + end
        if len(where):
            self._windows.add(self._fbank[where - self._fbank0], where)
            self._speech_index = np.concatenate([self._speech_index, where])
            self._total += len(where)
            self._last_speech = int(where[-1])
        drop = self._decided - self._fbank0  # fbank rows of decided frames are no longer needed
        self._fbank, self._fbank0 = self._fbank[drop:], self._decided
        # A pause longer than split_gap_s ends the stretch now, not when speech comes back.
        if self._decided - 1 - self._last_speech > self._split_gap and self._windows.stretch_open:
            self._windows.close_stretch()

    # --- 3. decisions ------------------------------------------------------------------------------

    def _advance(self, final: bool) -> None:
        starts, lengths, stretches, embeddings = self._windows.take()
        if len(starts):
            self._w_start = np.concatenate([self._w_start, starts])
            self._w_end = np.concatenate([self._w_end, starts + lengths])
            self._w_stretch = np.concatenate([self._w_stretch, stretches])
            self._w_speaker = np.concatenate([self._w_speaker, np.full(len(starts), -1, np.int64)])
            self._w_embedding = np.concatenate([self._w_embedding, embeddings])
        self._decide(final)
        self._label(final)

    def _decide(self, final: bool) -> None:
        """Runs of undecided windows join a speaker or start one, in order."""
        group = max(1, self.settings.plda_group_windows)
        while True:
            undecided = np.flatnonzero(self._w_speaker < 0)
            if len(undecided) == 0:
                return
            stretch = self._w_stretch[undecided[0]]
            run = undecided[self._w_stretch[undecided] == stretch][:group]
            if len(run) < group and stretch == self._windows.stretch and not final:
                return  # its stretch goes on: the run may still grow
            self._w_speaker[run] = self._choose(self._w_embedding[run])

    def _choose(self, embeddings: np.ndarray) -> int:
        """The speaker a run of windows joins: the likeliest, if likely enough; else a new one."""
        settings = self.settings
        unit = _unit(embeddings.astype(np.float64))
        count = len(unit) * settings.plda_window_weight
        total = (self._plda.project(unit).sum(axis=0) * settings.plda_window_weight if self._plda is not None
                 else np.zeros(0))
        if len(self._sums):
            if self._plda is not None:
                scores = self._plda.merge_scores(count, total, self._counts, self._totals)
                threshold = settings.online_threshold
            else:
                scores = _unit(self._sums) @ _unit(unit.sum(axis=0))
                threshold = settings.threshold
            best = int(np.argmax(scores))
            if scores[best] >= threshold or len(self._sums) >= self.max_speakers:
                self._add_to(best, unit, count, total)
                return best
        self._sums = np.vstack([self._sums, np.zeros((1, unit.shape[1]))])
        self._counts = np.append(self._counts, 0.0)
        self._totals = np.vstack([self._totals, np.zeros((1, self._totals.shape[1]))])
        self._add_to(len(self._sums) - 1, unit, count, total)
        return len(self._sums) - 1

    def _add_to(self, speaker: int, unit: np.ndarray, count: float, total: np.ndarray) -> None:
        self._changed.add(speaker)
        self._sums[speaker] += unit.sum(axis=0)
        self._counts[speaker] += count
        self._totals[speaker] += total

    # --- 4. frames and turns -----------------------------------------------------------------------

    def _label(self, final: bool) -> None:
        """Label the speech frames whose windows (and smoothing context) are all decided; make turns.

        Three axes meet here: timeline frames (10 ms of audio), compressed frames (the speech frames only,
        numbered in order: what windows start and end on) and window rows. `_final` is the first compressed
        frame not labelled yet, `_speech_index[0]` its timeline frame; `frontier` the first compressed frame
        a window still to be decided (or to come) may cover."""
        undecided = self._w_speaker < 0
        frontier = self._total if final else min(
            self._windows.earliest_next_start, int(self._w_start[undecided].min()) if undecided.any() else self._total)
        # The smoothing looks `ahead` frames forward; at the end, or in a pause long enough to end a stretch
        # of speech, nothing more will come before the next speech, so the edge value stands in for it (a turn
        # is then final during the pause, not when someone speaks again).
        width = max(1, int(round(self.settings.smooth_s / FRAME_S)))
        ahead = width - 1 - width // 2
        paused = self._decided - 1 - self._last_speech > self._split_gap
        last = frontier if final or (paused and frontier == self._total) else frontier - ahead
        if last > self._final:
            timeline = self._speech_index[:last - self._final]
            if len(self._sums):
                decided = ~undecided
                low = self._context_start  # frames before `_final` kept as the smoothing's context
                scores = self._w_embedding[decided] @ _unit(self._sums).T
                labels = smoothed_labels(self._w_start[decided] - low, self._w_end[decided] - low, scores,
                                         self._final - low, last - low, frontier - low, self.settings.smooth_s)
            else:  # no window yet (speech too short for one): nobody to give these frames to
                labels = np.full(len(timeline), -1, np.int64)
            self._turns(timeline, labels)
            self._speech_index = self._speech_index[last - self._final:]
            self._final = last
            self._context_start = max(0, last - width)
            keep = (self._w_end > self._context_start) | (self._w_speaker < 0)
            self._w_start, self._w_end = self._w_start[keep], self._w_end[keep]
            self._w_stretch, self._w_speaker = self._w_stretch[keep], self._w_speaker[keep]
            self._w_embedding = self._w_embedding[keep]
        # Timeline frames before this are final: the first speech frame not labelled yet, else all decided.
        settled = int(self._speech_index[0]) if len(self._speech_index) else self._decided
        bridge = int(round(self.settings.bridge_s / FRAME_S))
        if self._run is not None and (final or settled - self._run[1] > bridge):
            self._close_run(island_ends=True)
        self._recognise()

    def _turns(self, timeline: np.ndarray, labels: np.ndarray) -> None:
        """Final labelled speech frames (timeline index, speaker; -1 where no window covers one) into runs of
        one speaker; a run ends where another speaker's starts (a short pause between them split in the
        middle, as offline each pause frame takes its nearest speech frame's speaker) or after a long pause."""
        known = labels >= 0
        timeline, labels = timeline[known], labels[known]
        if not len(timeline):
            return
        bridge = int(round(self.settings.bridge_s / FRAME_S))
        breaks = np.flatnonzero((np.diff(labels) != 0) | (np.diff(timeline) - 1 > bridge)) + 1
        for begin, finish in zip(np.r_[0, breaks], np.r_[breaks, len(timeline)]):
            start, end, speaker = int(timeline[begin]), int(timeline[finish - 1]) + 1, int(labels[begin])
            run = self._run
            if run is not None and run[2] == speaker and start - run[1] <= bridge:
                run[1] = end
                continue
            if run is not None:
                touching = start - run[1] <= bridge
                if touching:
                    run[1] = start = (run[1] + start) // 2
                self._close_run(island_ends=not touching)
            self._run = [start, end, speaker]

    def _close_run(self, island_ends: bool) -> None:
        """The open run joins the island's turns by the offline rules (diarization._timeline_segments: a turn
        under min_turn_s that touches another joins it). Only the island's last turn can still change, so the
        others are final; at the island's end all are, unless the island is under min_speech_s (not speech)."""
        run, self._run = self._run, None
        shortest = int(round(self.settings.min_turn_s / FRAME_S))
        island = self._tentative
        previous = island[-1] if island else None
        if self._island_start is None:
            self._island_start = run[0]
        if previous is not None and (run[1] - run[0] < shortest or previous[2] == run[2]):
            previous[1] = run[1]
        elif previous is not None and previous[1] - previous[0] < shortest:
            previous[1], previous[2] = run[1], run[2]
        else:
            island.append(run)
        if island_ends:
            if island[-1][1] - self._island_start < int(round(self.settings.min_speech_s / FRAME_S)):
                island.clear()
            self._emit(len(island))
            self._island_start = None
        else:
            self._emit(len(island) - 1)

    def _emit(self, count: int) -> None:
        """The island's first `count` turns become final (and their speakers get their speaker_N labels)."""
        for start, end, speaker in self._tentative[:count]:
            self.turns.append((round(start * FRAME_S, 3), round(end * FRAME_S, 3), self._name(speaker)))
        del self._tentative[:count]

    def _name(self, speaker: int) -> str:
        """A speaker's label, fixed at its first final turn: speaker_1, speaker_2, ... in that order."""
        if speaker not in self._labels:
            self._labels[speaker] = f"speaker_{len(self._labels) + 1}"
            self._changed.add(speaker)
        return self._labels[speaker]

    def _recognise(self) -> None:
        """Labelled speakers not yet recognised whose mean embedding now reaches online_naming_threshold with
        an enrolled speaker not yet recognised take that name (the best pairs first); announced once, by
        `new_names`. A name comes when the evidence is there, not necessarily with the first turn. Only the
        speakers whose evidence grew (or who just got a label) are scored: the others' scores have not moved
        and were under the threshold (names taken since only lower them), which keeps a large enrolment
        off the hot path."""
        waiting = [speaker for speaker in self._labels if speaker not in self._enrolled_names
                   and speaker in self._changed]
        self._changed.clear()
        if self._enrolled is None or not waiting or self._taken.all():
            return
        scores = (_unit(self._sums[waiting]).astype(np.float32) @ self._enrolled.T)
        scores[:, self._taken] = -np.inf
        for row, column in match_enrolled(scores, self.settings.online_naming_threshold).items():
            speaker, name = waiting[row], self.enrolment.speakers[column]
            self._enrolled_names[speaker] = name
            self._taken[column] = True
            self._announced.append((self._labels[speaker], name))


def diarize_file_online(encoder, path, *, settings: DiarizationSettings | None = None, enrolment=None,
                        max_speakers: int | None = None, latencies: list[float] | None = None) -> Diarization:
    """A file through the online diarizer as a live source would deliver it (decoded and resampled as it
    streams, in blocks of `FILE_BLOCK_S`); `latencies` gets, per turn final before the end, the seconds of
    audio pushed after its end before it came."""
    from pathlib import Path

    from deep_speaker.long_audio import stream_audio

    rate = encoder.config.sample_rate_hz
    stream = encoder.diarize_stream(rate, enrolment, max_speakers=max_speakers, uri=Path(path).stem,
                                    settings=settings)
    step = int(FILE_BLOCK_S * rate)
    for block in stream_audio(path, rate):
        for start in range(0, len(block), step):
            turns = stream.push(block[start:start + step])
            if latencies is not None:
                latencies += [stream.seconds - end for _, end, _ in turns]
    stream.close()
    return stream.diarization()
