"""Adaptive symmetric score normalisation (AS-norm) against a cohort of speakers.

A raw cosine between two embeddings depends on where each embedding lies: some
voices (or channels) sit close to many others and score high against everyone.
AS-norm (Matejka et al., Interspeech 2017; the standard back end of WeSpeaker and
SpeechBrain) rescales each trial by how each side scores against the speakers of
a cohort, here the training speakers' mean embeddings, which ship beside the model:

    s_norm = ((s - mu_a) / sigma_a + (s - mu_b) / sigma_b) / 2

where mu_x, sigma_x are the mean and standard deviation of x's top_k highest
cosines with the cohort. Scores become comparable across voices and channels, so
one threshold serves them all. The raw cosine stays available everywhere.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deep_speaker.errors import InputError
from deep_speaker.io_utils import atomic_save_npz
from deep_speaker.metrics import unit_rows

COHORT_FILE = "score_cohort.npz"  # beside the model's .keras file
DEFAULT_TOP_K = 200  # cohort scores that describe one side (WeSpeaker's 300 for thousands of speakers)


class CohortError(InputError):
    """A cohort file that cannot be used with this model."""


def model_fingerprint(model_path: str | Path) -> str:
    """SHA-256 of the model file: ties a cohort to the weights it was embedded with."""
    digest = hashlib.sha256()
    with open(model_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ScoreNormalizer:
    """AS-norm of cosine scores against `cohort` (num_speakers, dim) unit rows.

    >>> cohort = np.eye(4, dtype=np.float32)
    >>> norm = ScoreNormalizer(cohort, top_k=2)
    >>> a, b = np.array([[1., 0, 0, 0]]), np.array([[1., 0, 0, 0]])
    >>> float(norm.trial_scores(a, b, np.array([0]), np.array([0]))[0])  # raw 1, cohort top-2 {1, 0}
    1.0
    """
    cohort: np.ndarray
    top_k: int = DEFAULT_TOP_K
    speakers: tuple[str, ...] = ()

    def __post_init__(self):
        self.cohort = np.asarray(self.cohort, dtype=np.float32)
        if self.cohort.ndim != 2 or len(self.cohort) < 2:
            raise CohortError(f"a cohort needs at least 2 speaker rows, got shape {self.cohort.shape}")
        self.top_k = int(min(max(self.top_k, 2), len(self.cohort)))

    def side_statistics(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of each embedding's top_k cohort cosines: two (n,) arrays."""
        scores = np.asarray(embeddings, np.float32) @ self.cohort.T
        top = -np.partition(-scores, self.top_k - 1, axis=1)[:, :self.top_k]
        return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6)

    def normalize(self, raw: np.ndarray, first_stats, second_stats) -> np.ndarray:
        """AS-norm of raw cosines given each side's (mean, std) rows aligned with `raw`."""
        (mean_a, std_a), (mean_b, std_b) = first_stats, second_stats
        return 0.5 * ((raw - mean_a) / std_a + (raw - mean_b) / std_b)

    def trial_scores(self, embeddings_a: np.ndarray, embeddings_b: np.ndarray, first: np.ndarray,
                     second: np.ndarray) -> np.ndarray:
        """Normalised scores of trials (embeddings_a[first[t]], embeddings_b[second[t]])."""
        mean_a, std_a = self.side_statistics(embeddings_a)
        # All pairs of one set of files (evaluate.py): its cohort scores once, not twice.
        mean_b, std_b = (mean_a, std_a) if embeddings_b is embeddings_a else self.side_statistics(embeddings_b)
        raw = np.einsum("td,td->t", embeddings_a[first], embeddings_b[second])
        return self.normalize(raw, (mean_a[first], std_a[first]), (mean_b[second], std_b[second]))

    def pair_score(self, a: np.ndarray, b: np.ndarray) -> float:
        """Normalised score of one pair of unit embeddings."""
        return float(self.trial_scores(a[None], b[None], np.zeros(1, int), np.zeros(1, int))[0])

    def save(self, path: str | Path, model_path: str | Path) -> None:
        meta = {"top_k": self.top_k, "model_sha256": model_fingerprint(model_path), "speakers": list(self.speakers)}
        atomic_save_npz(Path(path), cohort=self.cohort.astype(np.float16), meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path, model_path: str | Path, model_sha256: str | None = None) -> "ScoreNormalizer":
        """The cohort saved beside a model; refuses one embedded with other weights.
        model_sha256: the model file's digest, when the caller has computed it already."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                cohort, meta = saved["cohort"].astype(np.float32), json.loads(str(saved["meta"]))
        except (OSError, KeyError, ValueError) as error:
            raise CohortError(f"{path}: not a score cohort ({type(error).__name__}: {error})") from None
        if meta.get("model_sha256") != (model_sha256 or model_fingerprint(model_path)):
            raise CohortError(f"{path}: cohort was embedded with other weights than {model_path}; "
                              f"rebuild it (see MODEL_CARD.md) or score without normalisation")
        return cls(cohort, int(meta.get("top_k", DEFAULT_TOP_K)), tuple(meta.get("speakers", ())))


def cohort_beside(model_path: str | Path) -> Path:
    return Path(model_path).parent / COHORT_FILE


def speaker_means(embeddings: np.ndarray, speakers: list[str]) -> tuple[np.ndarray, list[str]]:
    """Renormalised mean embedding of each speaker, in sorted speaker order.

    >>> rows, names = speaker_means(np.array([[1., 0.], [0., 1.], [1., 0.]]), ['b', 'a', 'b'])
    >>> names, rows.round(3).tolist()
    (['a', 'b'], [[0.0, 1.0], [1.0, 0.0]])
    """
    names = sorted(set(speakers))
    index = {name: k for k, name in enumerate(names)}
    sums = np.zeros((len(names), np.shape(embeddings)[1]), np.float64)
    np.add.at(sums, [index[s] for s in speakers], embeddings)
    return unit_rows(sums).astype(np.float32), names


def cohort_files(audio_dirs, exclude_speakers=(), per_speaker: int = 3, seed: int = 0) -> list[tuple[str, str]]:
    """(path, speaker) of up to `per_speaker` files of each speaker under `audio_dirs`,
    chosen with a seeded generator, leaving out `exclude_speakers` (held-out speakers)."""
    from deep_speaker.corpus import discover_utterances

    excluded = set(exclude_speakers)
    by_speaker: dict[str, list[str]] = {}
    for utterance in discover_utterances(audio_dirs):
        if utterance.speaker_id not in excluded:
            by_speaker.setdefault(utterance.speaker_id, []).append(str(utterance.path))
    rng = np.random.default_rng(seed)
    chosen = []
    for speaker, paths in sorted(by_speaker.items()):
        picks = sorted(rng.choice(len(paths), min(per_speaker, len(paths)), replace=False))
        chosen.extend((paths[k], speaker) for k in picks)
    return chosen


def build_cohort(encoder, files: list[tuple[str, str]], top_k: int = DEFAULT_TOP_K) -> ScoreNormalizer:
    """A normaliser whose cohort is each speaker's mean embedding of `files`
    ((path, speaker) pairs), embedded by `encoder` (a SpeakerEncoder); files it
    cannot use (too short, no speech) are left out."""
    speaker_of = dict(files)
    embedded = encoder.embed_files([path for path, _ in files], skip=True, progress=True)
    if not embedded.files:
        raise CohortError("no cohort file could be embedded")
    means, names = speaker_means(embedded.embeddings, [speaker_of[path] for path in embedded.files])
    return ScoreNormalizer(means, top_k, tuple(names))
