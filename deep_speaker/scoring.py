"""Scoring: embeddings of files and cached speakers, SAN/SAP (which model: `deep_speaker.checkpoints`).

The features a model sees at scoring time are made exactly as in training:
decode -> resample -> trim (audio stage) -> log fbank -> per-utterance CMVN
(`deep_speaker.features.utterance_features`). Speaker embedding = the
renormalised mean of its utterance embeddings.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deep_speaker.audio import AudioError, load_utterance
from deep_speaker.audio_cache import audio_cache_dir, load_cached_utterance, read_cache_index, speakers_in_cache
from deep_speaker.checkpoints import ResolvedModel
from deep_speaker.config import SCORING_SEED, Config
from deep_speaker.errors import InputError
from deep_speaker.features import utterance_features
from deep_speaker.metrics import cosine_distance

log = logging.getLogger(__name__)

MIN_SCORING_FRAMES = 10  # 115 ms of voice at 25/10 ms framing; fewer frames leave the model nothing to average


def min_scoring_speech_ms(config: Config) -> float:
    """Voiced audio a file needs to be scored: MIN_SCORING_FRAMES whole frames,
    and never less than the audio stage's own minimum.

    >>> min_scoring_speech_ms(Config())
    115.0
    """
    frames_ms = config.frame_length_ms + (MIN_SCORING_FRAMES - 1) * config.frame_shift_ms
    return float(max(config.min_voice_ms, frames_ms))


class ScoringError(InputError):
    """A scoring request that cannot be served; the message says why and what to do."""


class Embedder:
    """Whole-utterance embeddings from a resolved model (`deep_speaker.checkpoints.resolve_model`):
    (num_frames, num_fbanks) -> (embedding_dim,), in the runtime `runtime` picks
    ("auto", "onnx" or "keras": `deep_speaker.runtimes`). keras_sha256: the model
    file's digest, when the caller has it already."""

    def __init__(self, resolved: ResolvedModel, runtime: str = "auto", keras_sha256: str | None = None):
        from deep_speaker.runtimes import load_runtime

        self.resolved = resolved
        self.config = resolved.config
        loaded = load_runtime(resolved, runtime, keras_sha256)
        self.runtime = loaded.name  # the runtime in use: "onnx" or "keras"
        self.embedding_dim = loaded.embedding_dim
        self._embed_one = loaded.forward

    def embed_features(self, features: list[np.ndarray]) -> np.ndarray:
        """(len(features), embedding_dim) unit rows, one per utterance."""
        rows = []
        for frames in features:
            if len(frames) < MIN_SCORING_FRAMES:
                raise ScoringError(f"utterance of {len(frames)} frames: at least {MIN_SCORING_FRAMES} frames "
                                   f"({min_scoring_speech_ms(self.config):.0f} ms of speech) are needed")
            row = np.asarray(self._embed_one(frames[None, :, :, None].astype(np.float32)))[0]
            norm = float(np.linalg.norm(row))
            if not (np.all(np.isfinite(row)) and abs(norm - 1.0) < 1e-3):
                raise ScoringError(f"the model gave no usable embedding (norm {norm:.3g} instead of 1): the "
                                   f"utterance's features carry no varying signal (e.g. an exactly periodic "
                                   f"or constant sound)")
            rows.append(row)
        return np.stack(rows) if rows else np.zeros((0, self.embedding_dim), np.float32)

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """(n, frames, num_fbanks, 1) float32 features of equal length -> (n, embedding_dim) rows in one model
        call (diarization's windows; their length is checked by the caller)."""
        return np.asarray(self._embed_one(np.asarray(batch, np.float32)))

    def file_features(self, path: str | Path) -> np.ndarray:
        """Features of one audio file, made exactly as the pipeline makes them."""
        try:
            trimmed = load_utterance(path, self.config)
        except AudioError as error:
            reason = str(error)
            if "needed" not in reason and reason.startswith("audio is all silent"):
                reason += f"; at least {min_scoring_speech_ms(self.config):.0f} ms of speech are needed"
            raise AudioError(f"{path}: {reason}") from None
        return utterance_features(trimmed.audio_voice_only, self.config)

    def embed_file(self, path: str | Path) -> np.ndarray:
        features = self.file_features(path)
        try:
            return self.embed_features([features])[0]
        except ScoringError as error:  # too short: say which file
            raise ScoringError(f"{path}: {error}") from None


def speaker_embedding(utterance_embeddings: np.ndarray) -> np.ndarray:
    """Renormalised mean of unit utterance embeddings.

    >>> speaker_embedding(np.array([[1., 0.], [0., 1.]])).astype(float).round(4).tolist()
    [0.7071, 0.7071]
    """
    mean = np.asarray(utterance_embeddings, dtype=np.float64).mean(axis=0)
    norm = np.linalg.norm(mean)
    if norm == 0:
        raise ScoringError("utterance embeddings cancel out: no speaker direction")
    return (mean / norm).astype(np.float32)


@dataclass
class CachedSpeaker:
    speaker_id: str
    cache_files: list[Path]


def cached_speakers(cache_dir: str | Path, names: list[str], config: Config | None = None) -> list[CachedSpeaker]:
    """The cached utterances of each named speaker; unknown names are an error
    that lists what the cache holds. With the model's `config`, a cache made with
    other audio settings (rate, trim rule) is refused (SettingsMismatchError):
    its utterances were cut otherwise than the model's training data."""
    if config is not None:
        from deep_speaker.audio_cache import check_audio_settings

        check_audio_settings(cache_dir, config, "the model")
    by_speaker = speakers_in_cache(read_cache_index(cache_dir))
    unknown = [n for n in names if n not in by_speaker]
    if unknown:
        held = list(by_speaker)
        preview = ", ".join(held[:30]) + (f", ... ({len(held) - 30} more)" if len(held) > 30 else "")
        raise ScoringError(f"unknown speaker(s) {', '.join(unknown)}; the cache {audio_cache_dir(cache_dir)} "
                           f"holds {len(held)}: {preview}")
    folder = audio_cache_dir(cache_dir)
    return [CachedSpeaker(n, [folder / f for f in by_speaker[n]]) for n in names]


def cached_features(speaker: CachedSpeaker, config: Config, max_utterances: int, seed: int) -> list[np.ndarray]:
    """Features of up to max_utterances of a cached speaker (seeded choice)."""
    files = speaker.cache_files
    if len(files) > max_utterances:
        chosen = np.random.default_rng(seed).choice(len(files), size=max_utterances, replace=False)
        files = [files[i] for i in sorted(chosen)]
    features = []
    for path in files:
        try:
            record = load_cached_utterance(path)
        except ValueError as error:  # refused (unsafe) or damaged pickle: say so, score the others
            log.warning("%s; utterance left out", error)
            continue
        if record["sample_rate"] != config.sample_rate_hz:
            raise ScoringError(f"{path}: cached at {record['sample_rate']} Hz but the model expects "
                               f"{config.sample_rate_hz} Hz features; rebuild the cache or use a matching model")
        features.append(utterance_features(record["audio_voice_only"], config))
    if not features:
        raise ScoringError(f"speaker {speaker.speaker_id}: none of its {len(files)} cached utterance(s) could be "
                           f"read (see the warnings above); rebuild the cache with preprocess.py")
    return features


@dataclass
class Comparison:
    kind: str  # "SAN" (different speakers), "SAP" (same speaker) or "files"
    distance: float  # 1 - cosine similarity
    similarity: float
    model: str
    counts: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    seconds: float = 0.0
    threshold: float | None = None  # on the scale of `score`
    score: float | None = None  # the verification score (AS-norm or cosine); None: the cosine similarity
    score_kind: str = "cosine"

    def __post_init__(self):
        if self.score is None:
            self.score = self.similarity

    @property
    def same_speaker(self) -> bool | None:
        return None if self.threshold is None else bool(self.score >= self.threshold)

    def to_dict(self) -> dict:
        result = {"kind": self.kind, "distance": self.distance, "similarity": self.similarity, "model": self.model,
                  "names": self.names, "utterances": self.counts, "seconds": round(self.seconds, 3)}
        if self.kind == "files":
            result.update(score=self.score, score_kind=self.score_kind)
        if self.threshold is not None:
            result.update(threshold=self.threshold, same_speaker=self.same_speaker)
        return result


def _split_halves(features: list[np.ndarray], seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two disjoint halves of a speaker's utterances (one utterance: split in time)."""
    if len(features) == 1:
        frames = features[0]
        middle = len(frames) // 2
        return [frames[:middle]], [frames[middle:]]
    order = np.random.default_rng(seed).permutation(len(features))
    half = len(features) // 2
    return [features[i] for i in order[:half]], [features[i] for i in order[half:]]


def compare_speakers(embedder: Embedder, cache_dir, first: str, second: str, max_utterances: int = 50,
                     seed: int = SCORING_SEED) -> Comparison:
    """SAN for two different speakers, SAP for the same one (two disjoint halves
    of its utterances, so the distance is honest rather than 0 by construction)."""
    started = time.monotonic()
    config = embedder.config
    if first == second:
        (speaker,) = cached_speakers(cache_dir, [first], config)
        halves = _split_halves(cached_features(speaker, config, max_utterances, seed), seed)
        groups, kind = halves, "SAP"
    else:
        speakers = cached_speakers(cache_dir, [first, second], config)
        groups = [cached_features(s, config, max_utterances, seed) for s in speakers]
        kind = "SAN"
    u, v = (speaker_embedding(embedder.embed_features(g)) for g in groups)
    distance = cosine_distance(u, v)
    return Comparison(kind, distance, 1.0 - distance, str(embedder.resolved.path), [len(g) for g in groups],
                      [first, second], time.monotonic() - started)


def compare_files(encoder, first, second, threshold: float | None = None) -> Comparison:
    """Score two recordings directly, no cache needed. `encoder` (a SpeakerEncoder)
    gives the verification score (AS-norm when its model ships a cohort) and,
    without `threshold`, the model's stored EER threshold for the decision."""
    started = time.monotonic()
    u, v = encoder.embed_file(first), encoder.embed_file(second)
    distance = cosine_distance(u, v)
    score_of = getattr(encoder, "score", None)
    score = score_of(u, v) if score_of is not None else None
    if threshold is None:
        threshold = getattr(encoder, "score_threshold", None)
    return Comparison("files", distance, 1.0 - distance, str(encoder.resolved.path), [1, 1],
                      [str(first), str(second)], time.monotonic() - started, threshold, score,
                      getattr(encoder, "score_kind", "cosine"))


def embed_cached_speaker(embedder: Embedder, cache_dir, name: str, max_utterances: int = 50,
                         seed: int = SCORING_SEED) -> np.ndarray:
    (speaker,) = cached_speakers(cache_dir, [name], embedder.config)
    return speaker_embedding(embedder.embed_features(cached_features(speaker, embedder.config, max_utterances, seed)))
