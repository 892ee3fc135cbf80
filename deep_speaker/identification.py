"""Speaker identification: enrolments ("who is who"), ranking, accuracy.

An enrolment holds one unit embedding per speaker (the renormalised mean of its
utterance embeddings), the identity of the model that made them (SHA-256 of the
model file, and its path for the message) and the settings that shape the
features (`enrolment_settings`). Embeddings of another model or of other
features live in another space, so an enrolment is only used with the model
and settings it was made with; anything else is refused in one line.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deep_speaker.config import Config
from deep_speaker.io_utils import atomic_write
from deep_speaker.long_audio import LONG_RECORDING_S, SEGMENT_HOP_S, SEGMENT_S
from deep_speaker.scoring import ScoringError

UNKNOWN = "unknown"
_FORMAT = "deep-speaker enrolment 1"


class EnrolmentError(ScoringError):
    """An enrolment file that cannot be used here; the message says why, on one line."""


def model_identity(path: str | Path) -> dict[str, str]:
    """{"sha256": digest of the model file, "path": its absolute path}."""
    from deep_speaker.score_norm import model_fingerprint

    path = Path(path)
    return {"sha256": model_fingerprint(path), "path": str(path.resolve())}


def enrolment_settings(config: Config) -> dict[str, Any]:
    """Everything that shapes an embedding besides the weights: the feature
    settings, the trim rule and the segmenting of long recordings.

    >>> sorted(enrolment_settings(Config()))[:3]
    ['fft_size', 'frame_length_ms', 'frame_shift_ms']
    """
    settings = dict(config.feature_settings())
    settings.update(trim=config.trim, trim_percentile=config.trim_percentile, trim_top_db=config.trim_top_db,
                    min_voice_ms=config.min_voice_ms, long_recording_s=LONG_RECORDING_S, segment_s=SEGMENT_S,
                    segment_hop_s=SEGMENT_HOP_S)
    return settings


@dataclass(frozen=True)
class Match:
    """One enrolled speaker and the query's cosine similarity to it."""

    speaker: str
    similarity: float


@dataclass(frozen=True)
class Identification:
    """The best-matching enrolled speakers of one query, best first."""

    query: str
    matches: tuple[Match, ...]
    threshold: float | None = None

    @property
    def speaker(self) -> str:
        """The best match, or "unknown" when its similarity is below the threshold."""
        best = self.matches[0]
        return UNKNOWN if self.threshold is not None and best.similarity < self.threshold else best.speaker

    def to_dict(self) -> dict[str, Any]:
        """As identify.py --json prints it."""
        return {"file": self.query, "speaker": self.speaker, "threshold": self.threshold,
                "matches": [{"speaker": m.speaker, "similarity": round(m.similarity, 6)} for m in self.matches]}


@dataclass
class Enrolment:
    """Enrolled speakers: names, (n, dim) unit embeddings, utterances used per
    speaker, and the model and settings they were made with."""

    speakers: list[str]
    embeddings: np.ndarray
    utterances: list[int]
    model: dict[str, str]
    settings: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason); not saved

    def save(self, path: str | Path) -> Path:
        """Write an .npz atomically (plain arrays and one JSON string: no pickles)."""
        path = Path(path)
        meta = json.dumps({"format": _FORMAT, "model": self.model, "settings": self.settings})

        def write(handle):
            np.savez(handle, speakers=np.array(self.speakers, dtype=str),
                     embeddings=np.asarray(self.embeddings, np.float32),
                     utterances=np.asarray(self.utterances, np.int64), meta=np.array(meta))
        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Enrolment":
        """Read an enrolment written by `save`; EnrolmentError naming the file otherwise."""
        path = Path(path)
        if not path.is_file():
            raise EnrolmentError(f"{path}: enrolment file not found; make one with identify.py --enroll")
        try:
            with np.load(path, allow_pickle=False) as data:
                speakers = [str(s) for s in data["speakers"]]
                embeddings = np.asarray(data["embeddings"], np.float32)
                utterances = [int(n) for n in data["utterances"]]
                meta = json.loads(str(data["meta"]))
        except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as error:
            raise EnrolmentError(f"{path}: not a deep-speaker enrolment ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0] if str(error) else ''})") from None
        if (not isinstance(meta, dict) or meta.get("format") != _FORMAT or embeddings.ndim != 2
                or len(speakers) != len(embeddings) or len(utterances) != len(speakers) or not speakers):
            raise EnrolmentError(f"{path}: not a deep-speaker enrolment (unexpected content)")
        return cls(speakers, embeddings, utterances, dict(meta.get("model", {})), dict(meta.get("settings", {})))

    def check_compatible(self, model: dict[str, str], settings: dict[str, Any], name: str = "enrolment") -> None:
        """Raise EnrolmentError when this enrolment was made with another model or other settings."""
        if self.model.get("sha256") != model["sha256"]:
            raise EnrolmentError(
                f"{name} was made with another model ({self.model.get('path', '?')}, sha256 "
                f"{str(self.model.get('sha256', '?'))[:12]}) than this one ({model['path']}, sha256 "
                f"{model['sha256'][:12]}); enrol again with this model or pass --checkpoint {self.model.get('path')}")
        differences = [f"{key} {self.settings.get(key)!r} there, {value!r} here" for key, value in settings.items()
                       if self.settings.get(key) != value]
        if differences:
            raise EnrolmentError(f"{name} was made with other feature settings ({'; '.join(differences)}); "
                                 f"enrol again with this model's settings")

    def rank(self, embeddings: np.ndarray, names: list[str], top_k: int = 3,
             threshold: float | None = None) -> list[Identification]:
        """The top_k enrolled speakers of each row of (n, dim) unit `embeddings`."""
        embeddings = np.atleast_2d(np.asarray(embeddings, np.float32))
        if embeddings.shape[1] != self.embeddings.shape[1]:
            raise EnrolmentError(f"queries are {embeddings.shape[1]}-d but the enrolment holds "
                                 f"{self.embeddings.shape[1]}-d embeddings")
        scores = embeddings.astype(np.float64) @ self.embeddings.astype(np.float64).T
        k = max(1, min(top_k, len(self.speakers)))
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [Identification(name, tuple(Match(self.speakers[j], float(row[j])) for j in order), threshold)
                for name, row, order in zip(names, scores, best)]


def identification_accuracy(embeddings: np.ndarray, speakers: list[str], ks: tuple[int, ...] = (1, 5)
                            ) -> dict[str, Any]:
    """Closed-set identification on labelled utterances: each speaker is enrolled
    with its first utterance, every other utterance is a query ranked against
    all enrolled speakers. Returns top-k accuracy for each k (None without queries).

    >>> e = np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2]]
    >>> identification_accuracy(e, ["a", "a", "b", "b", "c"])["top1_accuracy"]
    1.0
    """
    speakers = np.asarray(speakers, dtype=str)
    names, first = np.unique(speakers, return_index=True)
    enrolled = np.asarray(embeddings, np.float64)[first]
    queries = np.setdiff1d(np.arange(len(speakers)), first)
    result: dict[str, Any] = {"identification_speakers": int(len(names)), "identification_queries": int(len(queries))}
    if len(queries) == 0 or len(names) < 2:
        result.update({f"top{k}_accuracy": None for k in ks})
        return result
    scores = np.asarray(embeddings, np.float64)[queries] @ enrolled.T
    truth = np.searchsorted(names, speakers[queries])
    true_scores = scores[np.arange(len(queries)), truth]
    rank = (scores > true_scores[:, None]).sum(axis=1)  # 0 = the true speaker scores highest
    result.update({f"top{k}_accuracy": float(np.mean(rank < k)) for k in ks})
    return result
