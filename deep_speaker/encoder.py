"""The Python API: `SpeakerEncoder` loads a model once and embeds waveforms and
files, compares, verifies, enrols and identifies speakers.

Every scoring command (get_emb.py, comp_cos.py, evaluate.py, identify.py) is
built on this class, so the API and the commands give the same numbers. A
recording up to 60 s is embedded whole, exactly as the commands always did:
decode, mix to mono, resample (soxr HQ), trim, log fbank with per-utterance
CMVN, the ResCNN; longer ones in overlapping 30 s segments in bounded memory
(`deep_speaker.long_audio`). A recording in which `deep_speaker.speech` finds
no speech raises `NoSpeechError` unless `require_speech=False`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np

from deep_speaker.audio import (MAX_INPUT_RATE_HZ, MIN_INPUT_RATE_HZ, AudioError, TrimmedAudio, load_utterance,
                                read_audio, resample, trim_utterance)
from deep_speaker.checkpoints import ResolvedModel, resolve_model
from deep_speaker.config import SCORING_ENVIRONMENT, SCORING_SEED, Config
from deep_speaker.features import utterance_features
from deep_speaker.identification import (Enrolment, EnrolmentError, Identification, enrolment_settings,
                                         model_identity)
from deep_speaker.long_audio import (LONG_RECORDING_S, SEGMENT_S, is_long_recording, recording_seconds, segments,
                                     stream_audio, waveform_segments)
from deep_speaker.parallel import default_workers
from deep_speaker.score_norm import ScoreNormalizer, cohort_beside
from deep_speaker.scoring import MIN_SCORING_FRAMES, Embedder, ScoringError, min_scoring_speech_ms, speaker_embedding
from deep_speaker.speech import detect_speech

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
# Beside the model: {"threshold": cosine similarity, "as_norm_threshold": AS-norm score (when the model
# ships a score cohort), "eer": ..., "source": ...}, the EER operating points of its held-out trials.
THRESHOLD_FILE = "threshold.json"
# How embed_files prepares the next files while the model runs: "thread" or "process"
# (bench/embed_files.py measures both; threads won on 2 cores, see docs/results.md).
_POOL_KIND = "thread"


class NoSpeechError(AudioError):
    """A recording in which no speech was detected (see `deep_speaker.speech`)."""


class FileEmbeddings(NamedTuple):
    """What `SpeakerEncoder.embed_files(..., skip=True)` returns."""

    embeddings: np.ndarray  # (len(files), dim), in input order
    files: list[str]  # the files embedded
    skipped: list[tuple[str, str]]  # (file, reason) of the files that could not be


@dataclass(frozen=True)
class Verification:
    """The decision of `SpeakerEncoder.verify`; true when it is the same speaker."""

    same_speaker: bool
    similarity: float  # cosine similarity
    threshold: float  # on the scale of `score`
    score: float | None = None  # what was compared with the threshold (the cosine when None)
    score_kind: str = "cosine"  # "cosine", or "as-norm" (see deep_speaker.score_norm)

    def __bool__(self) -> bool:
        return self.same_speaker


class SpeakerEncoder:
    """A loaded speaker-embedding model.

    model: a .keras file with its config.json beside it; None picks as every
    command does (the best checkpoint of `checkpoint_dir` when given, else the
    pretrained model shipped with deep-speaker). require_speech: refuse
    recordings without detectable speech (default; each method can override it).
    workers: threads that decode and featurise the next files in `embed_files`
    while the model runs (default: the number of CPUs). Created before
    TensorFlow is imported, it sets TF_ENABLE_ONEDNN_OPTS=0 unless set (as the
    commands do: faster for utterances of many lengths, see inference.py).
    score_norm: verify with AS-norm scores against the score cohort shipped beside
    the model (`score_cohort.npz`, see deep_speaker.score_norm) when there is one;
    False: raw cosine similarity. `similarity` is always the raw cosine.
    runtime: what runs the model (`deep_speaker.runtimes`): "onnx" (ONNX Runtime on
    the model's .onnx export, no TensorFlow), "keras" (TensorFlow; the `train`
    extra) or "auto" (default: ONNX when an export of this model file lies beside
    it, as for the pretrained model, else Keras). Both give the same embeddings.
    """

    def __init__(self, model: PathLike | None = None, *, checkpoint_dir: PathLike | None = None,
                 require_speech: bool = True, workers: int | None = None, score_norm: bool = True,
                 runtime: str = "auto"):
        resolved = resolve_model(model, checkpoint_dir)
        if "tensorflow" not in sys.modules:  # as the commands: TensorFlow's own convolutions (see inference.py)
            for name, value in SCORING_ENVIRONMENT.items():
                os.environ.setdefault(name, value)
        self._identity: dict[str, str] = model_identity(resolved.path)  # also ties an .onnx export to this file
        self._embedder = Embedder(resolved, runtime, keras_sha256=self._identity["sha256"])
        self.require_speech = require_speech
        self.workers = workers if workers is not None else default_workers()
        self._thresholds = _read_thresholds(self.model_path.parent / THRESHOLD_FILE)
        cohort = cohort_beside(self.model_path)
        self._normalizer = (ScoreNormalizer.load(cohort, self.model_path, self._identity["sha256"])
                            if score_norm and cohort.is_file() else None)

    # --- what the encoder is ------------------------------------------------------------------------

    @property
    def resolved(self) -> ResolvedModel:
        """Which model was loaded, from where, with which config."""
        return self._embedder.resolved

    @property
    def config(self) -> Config:
        """The model's config.json (feature settings, width, ...)."""
        return self._embedder.config

    @property
    def model_path(self) -> Path:
        """The model file."""
        return self._embedder.resolved.path

    @property
    def runtime(self) -> str:
        """What runs the model: "onnx" (ONNX Runtime) or "keras" (TensorFlow)."""
        return self._embedder.runtime

    @property
    def embedding_dim(self) -> int:
        return self._embedder.embedding_dim

    @property
    def threshold(self) -> float | None:
        """The model's EER threshold (cosine similarity) from threshold.json beside it, if stored."""
        return self._thresholds.get("threshold")

    @property
    def score_normalizer(self) -> ScoreNormalizer | None:
        """The AS-norm of `score`, or None when scores are raw cosines."""
        return self._normalizer

    @property
    def score_kind(self) -> str:
        """"as-norm" when `score` normalises against the model's cohort, else "cosine"."""
        return "as-norm" if self._normalizer is not None else "cosine"

    @property
    def score_threshold(self) -> float | None:
        """The model's stored EER threshold on the scale of `score`, if stored."""
        return self._thresholds.get("as_norm_threshold" if self._normalizer is not None else "threshold")

    @property
    def model_identity(self) -> dict[str, str]:
        """SHA-256 and path of the .keras model file (what an enrolment records, whichever runtime runs it)."""
        return self._identity

    # --- embeddings ---------------------------------------------------------------------------------

    def embed_file(self, path: PathLike, *, require_speech: bool | None = None) -> np.ndarray:
        """The (embedding_dim,) unit embedding of one audio file (wav/flac/ogg/mp3,
        any rate from 8 to 192 kHz, any channel count). Raises AudioError
        (NoSpeechError for no speech) or ScoringError naming the file."""
        require = self._require(require_speech)
        return self._embed_prepared(str(path), _prepare_file(str(path), self.config, require), require)

    def embed_files(self, paths: Iterable[PathLike], batch_size: int = 32, *, skip: bool = False,
                    require_speech: bool | None = None, progress: bool = False) -> np.ndarray | FileEmbeddings:
        """Embeddings of many files, (len(paths), embedding_dim), in order.

        Up to `batch_size` files ahead are decoded, resampled and featurised by
        the worker pool while the model embeds the current one (each utterance
        runs at its own length, so the numbers equal `embed_file`'s). A file
        that cannot be embedded raises naming it; with skip=True it is left out
        and a `FileEmbeddings(embeddings, files, skipped)` is returned instead.
        """
        from deep_speaker.progress import progress_bar

        paths = [str(p) for p in paths]
        require = self._require(require_speech)
        rows, done, skipped = [], [], []
        with progress_bar(total=len(paths), desc="embeddings", unit="file", enabled=progress) as bar:
            for path, prepared in self._prepared(paths, max(1, batch_size), require):
                try:
                    rows.append(self._embed_prepared(path, prepared(), require))
                    done.append(path)
                except (AudioError, ScoringError) as error:
                    if not skip:
                        raise
                    skipped.append((path, _without_prefix(str(error), path)))
                bar.update(1)
        embeddings = np.stack(rows) if rows else np.zeros((0, self.embedding_dim), np.float32)
        return FileEmbeddings(embeddings, done, skipped) if skip else embeddings

    def embed_waveform(self, samples: np.ndarray, sample_rate: int, *, require_speech: bool | None = None
                       ) -> np.ndarray:
        """The unit embedding of samples in memory: (n,) or (n, channels), float
        at full scale 1.0 (integers are scaled from their type's range), any
        rate from 8 to 192 kHz."""
        require = self._require(require_speech)
        audio = _mono(samples)
        if not MIN_INPUT_RATE_HZ <= int(sample_rate) <= MAX_INPUT_RATE_HZ:
            raise AudioError(f"waveform: sample rate {sample_rate} Hz outside "
                             f"{MIN_INPUT_RATE_HZ}-{MAX_INPUT_RATE_HZ} Hz")
        audio = resample(audio, int(sample_rate), self.config.sample_rate_hz)
        if len(audio) > LONG_RECORDING_S * self.config.sample_rate_hz:
            return self._embed_segments(waveform_segments(audio, self.config.sample_rate_hz), "waveform", require)
        try:
            trimmed = trim_utterance(audio, self.config)
        except AudioError as error:
            raise AudioError(f"waveform: {_explained(error, self.config)}") from None
        return self._embed_features_of("waveform", _checked_features(trimmed, self.config, require, "waveform"))

    def embed_features(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Low level: embeddings of normalised log fbank features, one
        (num_frames, num_fbanks) array per utterance (e.g. of the audio cache)."""
        return self._embedder.embed_features(list(features))

    def embed_speaker(self, paths: Iterable[PathLike], *, skip: bool = False,
                      require_speech: bool | None = None) -> np.ndarray:
        """A speaker's embedding: the renormalised mean of its files' embeddings (as comp_cos.py)."""
        result = self.embed_files(paths, skip=skip, require_speech=require_speech)
        embeddings = result.embeddings if skip else result
        if len(embeddings) == 0:
            raise ScoringError("no file of this speaker could be embedded"
                               + (f" ({result.skipped[0][0]}: {result.skipped[0][1]})" if skip and result.skipped
                                  else ""))
        return speaker_embedding(embeddings)

    # --- comparisons --------------------------------------------------------------------------------

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of two embeddings (1 - the commands' distance).

        >>> SpeakerEncoder.similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0]))
        0.7071...
        """
        u, v = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        if u.shape != v.shape:
            raise ValueError(f"embeddings of different sizes: {u.shape[0]} and {v.shape[0]}")
        norms = float(np.linalg.norm(u) * np.linalg.norm(v))
        if norms == 0.0:
            raise ValueError("cosine similarity of a zero vector is undefined")
        return float(np.dot(u, v) / norms)

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        """The verification score of two embeddings: AS-norm against the model's
        cohort when it ships one (and score_norm was not turned off), else the
        cosine similarity. Higher means more likely the same speaker."""
        similarity = self.similarity(a, b)
        if self._normalizer is None:
            return similarity
        u, v = (np.asarray(x, np.float32).ravel() for x in (a, b))
        return self._normalizer.pair_score(u / np.linalg.norm(u), v / np.linalg.norm(v))

    def verify(self, a: PathLike | np.ndarray, b: PathLike | np.ndarray,
               threshold: float | None = None) -> Verification:
        """Same speaker? a and b are files or embeddings; same when their `score`
        reaches `threshold` (on the score's scale; default: the model's stored EER
        threshold)."""
        if threshold is None:
            threshold = self.score_threshold
        if threshold is None:
            raise ScoringError(f"no verification threshold: {self.model_path.parent / THRESHOLD_FILE} holds none "
                               f"for {self.score_kind} scores; pass threshold=<score>, e.g. the eer_threshold "
                               f"of evaluate.py")
        u, v = self._as_embedding(a), self._as_embedding(b)
        score = self.score(u, v)
        return Verification(bool(score >= threshold), self.similarity(u, v), float(threshold), score,
                            self.score_kind)

    # --- identification -----------------------------------------------------------------------------

    def enroll(self, speakers: PathLike | Mapping[str, Sequence[PathLike]], *, max_utterances: int | None = None,
               seed: int = SCORING_SEED, require_speech: bool | None = None) -> Enrolment:
        """Enrol speakers: a folder with one folder per speaker (as everywhere in
        deep-speaker), or {name: [files]}. Each speaker's embedding is the
        renormalised mean of up to max_utterances of its files (seeded choice);
        files that cannot be embedded are left out and listed in `.skipped`."""
        if isinstance(speakers, (str, Path)):
            from deep_speaker.corpus import discover_utterances

            found: dict[str, list[str]] = {}
            for utterance in discover_utterances([speakers]):
                found.setdefault(utterance.speaker_id, []).append(str(utterance.path))
            if not found:
                raise ScoringError(f"{speakers}: no audio files found (one folder per speaker expected)")
            speakers = found
        chosen: dict[str, list[str]] = {}
        for name, files in speakers.items():
            files = [str(f) for f in files]
            if max_utterances is not None and len(files) > max_utterances:
                picked = np.random.default_rng(seed).choice(len(files), size=max_utterances, replace=False)
                files = [files[i] for i in sorted(picked)]
            chosen[str(name)] = files
        all_files = [f for files in chosen.values() for f in files]
        embedded = self.embed_files(all_files, skip=True, require_speech=require_speech,
                                    progress=len(all_files) >= 20)
        row_of = {path: row for row, path in enumerate(embedded.files)}
        names, vectors, counts = [], [], []
        for name, files in chosen.items():
            rows = [row_of[f] for f in files if f in row_of]
            if not rows:
                log.warning("speaker %s: none of its %d file(s) could be embedded; not enrolled", name, len(files))
                continue
            names.append(name)
            vectors.append(speaker_embedding(embedded.embeddings[rows]))
            counts.append(len(rows))
        if not names:
            raise ScoringError(f"no speaker could be enrolled: none of the {len(all_files)} file(s) could be embedded")
        return Enrolment(names, np.stack(vectors), counts, self.model_identity, enrolment_settings(self.config),
                         list(embedded.skipped))

    def identify(self, queries: PathLike | np.ndarray | Sequence[PathLike], enrolment: Enrolment | PathLike,
                 top_k: int = 3, threshold: float | None = None,
                 names: Sequence[str] | None = None) -> Identification | list[Identification]:
        """Who is this? The top_k enrolled speakers of each query, best first;
        `.speaker` is "unknown" when the best similarity is below `threshold`
        (default: the model's stored EER threshold if any, else always the best
        match). queries: one file or embedding (-> one Identification), or
        several files or an (n, dim) array (-> a list). An enrolment made with
        another model or other feature settings raises EnrolmentError."""
        enrolment = self._compatible_enrolment(enrolment)
        if threshold is None:
            threshold = self.threshold
        single = isinstance(queries, (str, Path)) or (isinstance(queries, np.ndarray) and queries.ndim == 1)
        if isinstance(queries, np.ndarray):
            embeddings = np.atleast_2d(queries)
            labels = list(names) if names is not None else [f"query {i}" for i in range(len(embeddings))]
        else:
            files = [str(queries)] if single else [str(q) for q in queries]
            embeddings = self.embed_files(files)
            labels = list(names) if names is not None else files
        found = enrolment.rank(embeddings, labels, top_k, threshold)
        return found[0] if single else found

    # --- diarization ----------------------------------------------------------------------------------

    def diarize(self, recording: PathLike | np.ndarray, num_speakers: int | None = None,
                min_speakers: int | None = None, max_speakers: int | None = None,
                enrolment: Enrolment | PathLike | None = None, *, sample_rate: int | None = None,
                settings=None):
        """Who spoke when (`deep_speaker.diarization`): a file (streamed, any length in bounded memory) or
        samples with `sample_rate`. num_speakers: exactly that many speakers; else their number is
        estimated, within min_speakers..max_speakers when given. enrolment: clusters that match an
        enrolled speaker at the identification threshold take its name. A recording without speech
        gives an empty `Diarization` whose `.reason` says why; an unreadable file raises AudioError."""
        from deep_speaker.diarization import diarize_blocks, waveform_blocks

        if enrolment is not None and not isinstance(enrolment, Enrolment):
            enrolment = Enrolment.load(enrolment)
        rate = self.config.sample_rate_hz
        if isinstance(recording, (str, Path)):
            path = str(recording)
            try:
                if Path(path).is_file() and recording_seconds(path) is None:
                    # A format libsndfile cannot read (some mp3): decoded whole by the audio extra, as embed_file does.
                    samples, file_rate = read_audio(path)
                    return diarize_blocks(waveform_blocks(resample(samples, file_rate, rate), 5 * rate),
                                          Path(path).stem, self, num_speakers=num_speakers, min_speakers=min_speakers,
                                          max_speakers=max_speakers, enrolment=enrolment, settings=settings)
                return diarize_blocks(stream_audio(path, rate), Path(path).stem, self, num_speakers=num_speakers,
                                      min_speakers=min_speakers, max_speakers=max_speakers, enrolment=enrolment,
                                      settings=settings)
            except AudioError as error:
                raise type(error)(f"{path}: {_without_prefix(str(error), path)}") from None
        if sample_rate is None:
            raise ValueError("diarize(samples) needs sample_rate=")
        if not MIN_INPUT_RATE_HZ <= int(sample_rate) <= MAX_INPUT_RATE_HZ:
            raise AudioError(f"waveform: sample rate {sample_rate} Hz outside "
                             f"{MIN_INPUT_RATE_HZ}-{MAX_INPUT_RATE_HZ} Hz")
        audio = resample(_mono(recording), int(sample_rate), rate)
        return diarize_blocks(waveform_blocks(audio, 5 * rate), "waveform", self, num_speakers=num_speakers,
                              min_speakers=min_speakers, max_speakers=max_speakers, enrolment=enrolment,
                              settings=settings)

    def diarize_stream(self, sample_rate: int | None = None, enrolment: Enrolment | PathLike | None = None, *,
                       max_speakers: int | None = None, uri: str = "stream", settings=None):
        """Online diarization (`deep_speaker.online_diarization.OnlineDiarizer`): push() blocks of samples at
        `sample_rate` (default: the model's) as they arrive and get each turn once it is final; close() at
        the end. Speakers are decided as they come, so the count is never given; max_speakers caps it."""
        from deep_speaker.online_diarization import OnlineDiarizer

        if enrolment is not None:
            enrolment = self._compatible_enrolment(enrolment)
        rate = int(sample_rate or self.config.sample_rate_hz)
        if not MIN_INPUT_RATE_HZ <= rate <= MAX_INPUT_RATE_HZ:
            raise AudioError(f"stream: sample rate {rate} Hz outside {MIN_INPUT_RATE_HZ}-{MAX_INPUT_RATE_HZ} Hz")
        return OnlineDiarizer(self, sample_rate=rate, uri=uri, enrolment=enrolment, max_speakers=max_speakers,
                              settings=settings)

    # --- internals ----------------------------------------------------------------------------------

    def _compatible_enrolment(self, enrolment: Enrolment | PathLike) -> Enrolment:
        """The enrolment (loaded when a path is given), checked to be of this model and feature settings:
        EnrolmentError naming the file otherwise."""
        if isinstance(enrolment, Enrolment):
            name = "the enrolment"
        else:
            name = str(enrolment)
            enrolment = Enrolment.load(enrolment)
        enrolment.check_compatible(self.model_identity, enrolment_settings(self.config), name)
        return enrolment

    def _require(self, require_speech: bool | None) -> bool:
        return self.require_speech if require_speech is None else bool(require_speech)

    def _as_embedding(self, item: PathLike | np.ndarray) -> np.ndarray:
        if isinstance(item, (str, Path)):
            return self.embed_file(item)
        vector = np.asarray(item, np.float32)
        if vector.shape != (self.embedding_dim,):
            raise ValueError(f"expected a file or a ({self.embedding_dim},) embedding, got shape {vector.shape}")
        return vector

    def _prepared(self, paths: list[str], ahead: int, require: bool) -> Iterator[tuple[str, object]]:
        """(path, callable giving its prepared features) in order, with up to
        `ahead` files prepared by the pool while the caller embeds."""
        if self.workers <= 1 or len(paths) <= 1:
            for path in paths:
                yield path, lambda path=path: _prepare_file(path, self.config, require)
            return
        with _executor(min(self.workers, len(paths))) as pool:
            pending: deque = deque()
            upcoming = iter(paths)
            for path in upcoming:
                pending.append((path, pool.submit(_prepare_file, path, self.config, require)))
                if len(pending) >= ahead:
                    break
            try:
                while pending:
                    path, future = pending.popleft()
                    following = next(upcoming, None)
                    if following is not None:
                        pending.append((following, pool.submit(_prepare_file, following, self.config, require)))
                    yield path, future.result
            finally:  # the caller stopped early (an error): do not prepare the rest
                for _, future in pending:
                    future.cancel()

    def _embed_prepared(self, path: str, features: np.ndarray | None, require: bool) -> np.ndarray:
        if features is None:  # a long recording: streamed segment by segment here
            try:
                blocks = stream_audio(path, self.config.sample_rate_hz)
                return self._embed_segments(segments(blocks, self.config.sample_rate_hz), path, require)
            except AudioError as error:
                message = str(error)
                if message.startswith(f"{path}: "):
                    raise
                raise type(error)(f"{path}: {message}") from None
        return self._embed_features_of(path, features)

    def _embed_features_of(self, name: str, features: np.ndarray) -> np.ndarray:
        try:
            return self._embedder.embed_features([features])[0]
        except ScoringError as error:
            raise ScoringError(f"{name}: {error}") from None

    def _embed_segments(self, pieces: Iterable[np.ndarray], name: str, require: bool) -> np.ndarray:
        """Frame-weighted, renormalised mean of the embeddings of a long recording's segments."""
        total = np.zeros(self.embedding_dim, np.float64)
        weight, count, reasons = 0, 0, []
        for piece in pieces:
            count += 1
            try:
                features = _checked_features(trim_utterance(piece, self.config), self.config, require, None)
                row = self._embedder.embed_features([features])[0]
            except (AudioError, ScoringError) as error:
                reasons.append(error)
                continue
            total += len(features) * row.astype(np.float64)
            weight += len(features)
        if weight == 0:
            if count == 0:
                raise AudioError(f"{name}: no samples in file")
            kind = NoSpeechError if all(isinstance(r, NoSpeechError) for r in reasons) else AudioError
            raise kind(f"{name}: none of its {count} segments of {SEGMENT_S:g} s could be embedded "
                       f"(first: {reasons[0]})")
        norm = float(np.linalg.norm(total))
        if not math.isfinite(norm) or norm == 0.0:
            raise ScoringError(f"{name}: segment embeddings cancel out: no speaker direction")
        return (total / norm).astype(np.float32)


# --- module-level helpers (picklable, so a process pool can run them) -----------------------------

def _prepare_file(path: str, config: Config, require_speech: bool) -> np.ndarray | None:
    """Model input of one short file (decode, resample, trim, features, checks),
    or None for a long recording, which the caller streams segment by segment."""
    try:
        if is_long_recording(path):
            return None
        trimmed = load_utterance(path, config)
    except AudioError as error:
        raise AudioError(f"{path}: {_explained(error, config)}") from None
    except OSError as error:  # unreadable: permissions, a folder, ...
        raise AudioError(f"{path}: {error.strerror or error}") from None
    return _checked_features(trimmed, config, require_speech, path)


def _checked_features(trimmed: TrimmedAudio, config: Config, require_speech: bool, name: str | None) -> np.ndarray:
    """Features of the voiced part; errors for too few frames, then for no speech."""
    prefix = f"{name}: " if name else ""
    features = utterance_features(trimmed.audio_voice_only, config)
    if len(features) < MIN_SCORING_FRAMES:
        raise ScoringError(f"{prefix}utterance of {len(features)} frames: at least {MIN_SCORING_FRAMES} frames "
                           f"({min_scoring_speech_ms(config):.0f} ms of speech) are needed")
    if require_speech:
        report = detect_speech(trimmed.audio, config.sample_rate_hz)
        if not report.has_speech:
            raise NoSpeechError(f"{prefix}{report.reason}")
    return features


def _explained(error: AudioError, config: Config) -> str:
    reason = str(error)
    if "needed" not in reason and reason.startswith("audio is all silent"):
        reason += f"; at least {min_scoring_speech_ms(config):.0f} ms of speech are needed"
    return reason


def _mono(samples: np.ndarray) -> np.ndarray:
    audio = np.asarray(samples)
    if audio.dtype.kind in "iu":  # integer PCM: scale to full scale 1.0
        info = np.iinfo(audio.dtype)
        audio = (audio.astype(np.float64) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    audio = audio.astype(np.float32, copy=False)
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    if audio.ndim != 1:
        raise AudioError(f"waveform: expected samples of shape (n,) or (n, channels), got {audio.shape}")
    if audio.size == 0:
        raise AudioError("waveform: no samples")
    if not np.all(np.isfinite(audio)):
        raise AudioError("waveform: audio holds NaN or infinite samples")
    return np.ascontiguousarray(audio)


def _without_prefix(message: str, path: str) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _executor(workers: int) -> Executor:
    if _POOL_KIND == "process":
        import multiprocessing

        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deep-speaker-prepare")


def _read_thresholds(path: Path) -> dict[str, float]:
    """The thresholds of a threshold.json ("threshold": cosine, "as_norm_threshold":
    AS-norm score), {} when there is none."""
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        thresholds = {"threshold": stored["threshold"]}
        if "as_norm_threshold" in stored:
            thresholds["as_norm_threshold"] = stored["as_norm_threshold"]
        for name, value in thresholds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"{name} {value!r} is not a number")
        if not -1.0 <= thresholds["threshold"] <= 1.0:
            raise ValueError(f"threshold {thresholds['threshold']!r} is not a cosine similarity in [-1, 1]")
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise ScoringError(f"{path}: not a usable threshold file ({error}); expected "
                           f'{{"threshold": <cosine similarity>, "as_norm_threshold": <score>, "eer": ..., '
                           f'"source": ...}}') from None
    return {name: float(value) for name, value in thresholds.items()}


__all__ = ["SpeakerEncoder", "NoSpeechError", "FileEmbeddings", "Verification", "Enrolment", "EnrolmentError",
           "Identification"]
