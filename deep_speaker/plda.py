"""Two-covariance PLDA of speaker embeddings: whether two sets of embeddings are one speaker, with the sizes
of the sets taken into account.

Diarization estimates the number of speakers by merging clusters of window embeddings while they are more
likely one speaker than two (`deep_speaker.diarization`). A cosine threshold between cluster means cannot
do that well: the mean of 40 windows of one speaker is far steadier than the mean of 4, so the same
similarity means different things. The two-covariance model says how much: an embedding is
`speaker + noise`, the speaker drawn from N(0, B) and the noise from N(0, W). In the space where W is the
identity and B diagonal (`between`), the log-likelihood of a set of n embeddings with mean m depends on
(n, m) alone, and the log-likelihood ratio of "one speaker" against "two" for two sets is exact
(`merge_scores`).

The model is fitted (`fit_plda`) on window embeddings of training speakers and saved beside the model as
`diarization_plda.npz`, tied to the model file by its SHA-256 (`load_plda` refuses another model's).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deep_speaker.errors import InputError
from deep_speaker.io_utils import atomic_save_npz

PLDA_FILE = "diarization_plda.npz"  # beside the model
LOG_2PI = float(np.log(2 * np.pi))


class PLDAError(InputError):
    """A PLDA file that cannot be used with this model."""


@dataclass(frozen=True)
class PLDA:
    """mean (dim,), transform (rank, dim) and between (rank,): see the module's docstring."""

    mean: np.ndarray
    transform: np.ndarray
    between: np.ndarray
    model_sha256: str = ""
    info: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return len(self.between)

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings (n, dim) in the model's space: within-speaker noise white, speakers along the axes."""
        return (np.asarray(embeddings, np.float64) - self.mean) @ self.transform.T

    def log_likelihood(self, counts: np.ndarray, means: np.ndarray) -> np.ndarray:
        """Log-likelihood of sets of `counts` projected embeddings with these means, less each set's own sum
        of squares (which cancels in `merge_scores`).

        With the speaker y ~ N(0, between) integrated out, per axis:
        p(x_1..x_n) = (2 pi)^-(n-1)/2 n^-1/2 exp(-(sum x_i^2 - n m^2) / 2) N(m; 0, between + 1/n).
        """
        n = np.asarray(counts, np.float64)
        m = np.asarray(means, np.float64)
        variance = self.between[None, :] + 1.0 / n[:, None]
        return (-(n - 1) / 2 * LOG_2PI * self.rank - 0.5 * self.rank * np.log(n) + 0.5 * n * (m ** 2).sum(axis=1)
                - 0.5 * np.log(2 * np.pi * variance).sum(axis=1) - 0.5 * (m ** 2 / variance).sum(axis=1))

    def merge_scores(self, count: float, total: np.ndarray, counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
        """Log-likelihood ratio, one speaker against two, of a set (count, sum of its projected embeddings)
        with each of the sets (counts, totals)."""
        joint = count + counts
        return (self.log_likelihood(joint, (total[None, :] + totals) / joint[:, None])
                - self.log_likelihood(np.array([count]), total[None, :] / count)
                - self.log_likelihood(counts, totals / counts[:, None]))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {"model_sha256": self.model_sha256, **self.info}
        atomic_save_npz(path, mean=self.mean.astype(np.float32), transform=self.transform.astype(np.float32),
                        between=self.between.astype(np.float32),
                        meta=np.array(json.dumps(meta)))
        return path


def fit_plda(embeddings: np.ndarray, speakers, rank: int = 128, model_sha256: str = "",
             info: dict | None = None) -> PLDA:
    """Fit the two-covariance model on embeddings (n, dim) of known speakers (at least two per speaker for
    the ones that count): W from the deviations from each speaker's mean, B from the spread of the means
    (less the part W/n_s of a mean of n_s noisy embeddings), then one linear map that makes W the identity
    and B diagonal (the generalised eigenproblem B v = lambda W v), keeping the `rank` axes of most
    between-speaker variance."""
    from scipy.linalg import eigh

    x = np.asarray(embeddings, np.float64)
    names, index = np.unique(np.asarray(speakers), return_inverse=True)
    counts = np.bincount(index)
    if (counts >= 2).sum() < 2:
        raise InputError("fitting a PLDA needs at least two speakers with two embeddings or more")
    mean = x.mean(axis=0)
    x = x - mean
    means = np.zeros((len(names), x.shape[1]))
    np.add.at(means, index, x)
    means /= counts[:, None]
    deviations = x - means[index]
    within = deviations.T @ deviations / max(1, len(x) - len(names))
    between = np.cov(means.T) - within * np.mean(1.0 / counts)
    dim = x.shape[1]
    values, vectors = eigh(between, within + 1e-8 * np.trace(within) / dim * np.eye(dim))
    keep = np.argsort(-values)[:min(rank, dim)]
    return PLDA(mean, vectors[:, keep].T, np.maximum(values[keep], 1e-6), model_sha256,
                {"speakers": int(len(names)), "embeddings": int(len(x)), **(info or {})})


def load_plda(path: str | Path, model_sha256: str) -> PLDA:
    """The PLDA saved beside a model; PLDAError when it is not one or was fitted on another model's
    embeddings."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            plda = PLDA(saved["mean"].astype(np.float64), saved["transform"].astype(np.float64),
                        saved["between"].astype(np.float64), meta.pop("model_sha256", ""), meta)
    except (OSError, KeyError, ValueError) as error:
        raise PLDAError(f"{path}: not a PLDA file ({type(error).__name__}: {error})") from None
    if plda.model_sha256 != model_sha256:
        raise PLDAError(f"{path}: fitted on another model's embeddings; fit it again "
                        f"(python bench/diarization.py --fit_plda) or delete it")
    return plda
