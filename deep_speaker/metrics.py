"""Speaker-verification metrics: cosine scores, trial lists, EER, minDCF and DET.

Conventions used throughout:

* ``scores``: shape (num_trials,), higher means "more likely the same speaker".
* ``labels``: shape (num_trials,), 1 for target trials (same speaker), 0 for
  non-target trials (different speakers). Booleans are accepted too.

Only numpy and scikit-learn are used here (no TensorFlow), so evaluation code
and tests stay cheap to import.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "cosine_similarity_matrix",
    "cosine_distance",
    "equal_error_rate",
    "min_dcf",
    "det_curve",
    "all_pairs_trials",
    "score_trials",
    "verification_report",
    "eer_confidence_interval",
]

# Rows with a norm below this are treated as zero vectors (cosine 0 with anything)
# instead of dividing by ~0 and producing inf/nan.
_NORM_EPS = 1e-12

# score_trials gathers embedding rows in chunks of about this many float64 values
# (~32 MB), so scoring millions of trials never materialises a (trials, dim) copy.
_SCORE_CHUNK_ELEMENTS = 1 << 22


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """L2-normalise the rows of a (n, d) float64 matrix; zero rows stay zero (the
    one row normalisation of metrics and plots)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, _NORM_EPS)


def _as_embedding_matrix(values, name: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[np.newaxis, :]
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 1-D vector or a 2-D (rows, dim) array, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return matrix


def cosine_similarity_matrix(a, b) -> np.ndarray:
    """Cosine similarity between every row of ``a`` and every row of ``b``.

    Args:
        a: (n, d) embeddings (a single (d,) vector is treated as one row).
        b: (m, d) embeddings.

    Returns:
        (n, m) float64 array with values in [-1, 1]. A zero-norm row has
        similarity 0 with everything.

    >>> cosine_similarity_matrix([[1.0, 0.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 3.0]]).round(4)
    array([[1.    , 0.    ],
           [0.7071, 0.7071]])
    """
    a = _as_embedding_matrix(a, "a")
    b = _as_embedding_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding dimensions differ: a has {a.shape[1]}, b has {b.shape[1]}")
    similarity = unit_rows(a) @ unit_rows(b).T
    # Rounding can push |cos| a hair above 1; clip so 1 - cos is never negative.
    return np.clip(similarity, -1.0, 1.0)


def cosine_distance(u, v) -> float:
    """Cosine distance ``1 - u.v / (|u| |v|)`` between two vectors, in [0, 2].

    Args:
        u, v: (d,) vectors. A zero vector has distance 1 to everything.

    >>> cosine_distance([1.0, 0.0], [0.0, 5.0])
    1.0
    >>> round(cosine_distance([1.0, 1.0], [2.0, 2.0]), 6)
    0.0
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if u.ndim != 1 or v.ndim != 1:
        raise ValueError(f"cosine_distance takes two 1-D vectors, got shapes {u.shape} and {v.shape}")
    return float(1.0 - cosine_similarity_matrix(u, v)[0, 0])


def _check_trials(scores, labels, caller: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert (scores, labels) to float64 / bool 1-D arrays."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1:
        raise ValueError(f"{caller}: scores and labels must be 1-D, got shapes {scores.shape} and {labels.shape}")
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(f"{caller}: scores and labels differ in length ({scores.shape[0]} vs {labels.shape[0]})")
    if scores.shape[0] == 0:
        raise ValueError(f"{caller}: no trials (scores and labels are empty)")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{caller}: scores contain non-finite values (nan or inf)")
    if labels.dtype != bool:
        if not (np.issubdtype(labels.dtype, np.number) and np.all(np.isin(labels, (0, 1)))):
            raise ValueError(f"{caller}: labels must be 0 (non-target) or 1 (target)")
        labels = labels.astype(bool)
    num_target = int(np.count_nonzero(labels))
    num_nontarget = labels.shape[0] - num_target
    if num_target == 0 or num_nontarget == 0:
        raise ValueError(
            f"{caller}: needs both target (label 1) and non-target (label 0) trials, "
            f"got {num_target} target and {num_nontarget} non-target; only one class is present")
    return scores, labels


def _roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, fnr, thresholds) at every distinct score, thresholds decreasing.

    A trial is accepted when ``score >= threshold``; the first point (threshold
    +inf) rejects everything: fpr = 0, fnr = 1. The last accepts everything.
    drop_intermediate=False keeps every threshold so interpolated thresholds
    are exact rather than taken across merged collinear segments.
    """
    from sklearn import metrics as sk_metrics  # imported here: scoring needs no scikit-learn start-up

    fpr, tpr, thresholds = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
    return fpr, 1.0 - tpr, thresholds


def equal_error_rate(scores, labels) -> tuple[float, float]:
    """Equal error rate (EER) and the score threshold where it occurs.

    The ROC is taken at every distinct score; the EER is where the piecewise
    linear FPR and FNR curves cross (linear interpolation between the two ROC
    points that bracket FPR = FNR). The threshold is interpolated the same way.

    Args:
        scores: (num_trials,) scores, higher = more likely the same speaker.
        labels: (num_trials,) 1 for target, 0 for non-target trials.

    Returns:
        (eer, threshold): eer in [0, 1]; 0 for perfectly separated scores,
        1 for perfectly inverted ones.

    Raises:
        ValueError: empty, mismatched or non-finite input, or only one class.

    >>> equal_error_rate([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    (0.0, 0.8)
    >>> equal_error_rate([0.9, 0.2, 0.6, 0.1], [1, 1, 0, 0])
    (0.5, 0.6)
    """
    scores, labels = _check_trials(scores, labels, "equal_error_rate")
    fpr, fnr, thresholds = _roc_points(scores, labels)
    before, after, weight = _eer_crossing(fpr, fnr)
    eer = fpr[before] + weight * (fpr[after] - fpr[before])
    if np.isfinite(thresholds[before]):
        threshold = thresholds[before] + weight * (thresholds[after] - thresholds[before])
    else:
        # The bracketing point is the "+inf" reject-all threshold (all scores tied):
        # the only meaningful finite threshold is the tied score itself.
        threshold = thresholds[after]
    return float(eer), float(threshold)


def _eer_crossing(fpr: np.ndarray, fnr: np.ndarray) -> tuple[int, int, float]:
    """Where the piecewise linear FPR and FNR curves cross: `weight` of the way
    from point `before` to point `after` (the same point, weight 0, when they
    meet exactly there). fnr - fpr falls from +1 (reject all) to -1 (accept all)."""
    gap = fnr - fpr
    after = int(np.argmax(gap <= 0))  # first point at or past FPR = FNR
    if gap[after] == 0 or after == 0:
        return after, after, 0.0
    before = after - 1  # gap[before] > 0 > gap[after]
    return before, after, float(gap[before] / (gap[before] - gap[after]))


def min_dcf(scores, labels, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, float]:
    """Minimum normalised detection cost (NIST SRE definition) and its threshold.

    DCF(t) = c_miss * p_target * P_miss(t) + c_fa * (1 - p_target) * P_fa(t),
    minimised over every distinct threshold t (including reject-all and
    accept-all), then divided by min(c_miss * p_target, c_fa * (1 - p_target)),
    the cost of the best trivial system, so 1.0 means "no better than always
    accepting or always rejecting".

    Args:
        scores: (num_trials,) scores, higher = more likely the same speaker.
        labels: (num_trials,) 1 for target, 0 for non-target trials.
        p_target: prior probability of a target trial, in (0, 1); callers use 0.01 and 0.05.
        c_miss, c_fa: costs of a miss and a false alarm (> 0).

    Returns:
        (min_dcf, threshold): the normalised minimum in [0, 1] and the threshold
        (accept when score >= threshold) achieving it; +inf means "reject all".

    >>> min_dcf([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0], p_target=0.01)
    (0.0, 0.8)
    >>> min_dcf([0.9, 0.2, 0.6, 0.1], [1, 1, 0, 0], p_target=0.5)
    (0.5, 0.9)
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"min_dcf: p_target must be in (0, 1), got {p_target}")
    if not (c_miss > 0 and c_fa > 0):
        raise ValueError(f"min_dcf: c_miss and c_fa must be positive, got {c_miss} and {c_fa}")
    scores, labels = _check_trials(scores, labels, "min_dcf")
    fpr, fnr, thresholds = _roc_points(scores, labels)
    costs = c_miss * p_target * fnr + c_fa * (1.0 - p_target) * fpr
    best = int(np.argmin(costs))  # first minimum = highest threshold among ties
    default_cost = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(costs[best] / default_cost), float(thresholds[best])


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detection error trade-off curve points (thin wrapper over sklearn).

    Args:
        scores: (num_trials,) scores, higher = more likely the same speaker.
        labels: (num_trials,) 1 for target, 0 for non-target trials.

    Returns:
        (fpr, fnr, thresholds), each shape (num_points,), thresholds increasing
        (fpr decreasing, fnr increasing); sklearn trims the redundant points
        beyond fpr = 0 and fnr = 0.

    >>> fpr, fnr, thresholds = det_curve([0.9, 0.2, 0.6, 0.1], [1, 1, 0, 0])
    >>> fpr.tolist(), fnr.tolist(), thresholds.tolist()
    ([0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.2, 0.6, 0.9])
    """
    scores, labels = _check_trials(scores, labels, "det_curve")
    from sklearn import metrics as sk_metrics

    fpr, fnr, thresholds = sk_metrics.det_curve(labels.astype(np.int8), scores)
    return fpr, fnr, thresholds


def all_pairs_trials(speaker_ids: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every unordered pair (i < j) of items as a verification trial.

    Args:
        speaker_ids: (n,) speaker id per item (strings or ints).

    Returns:
        (i_idx, j_idx, labels), each shape (n * (n - 1) / 2,): item indices
        (int64, row-major order of the upper triangle) and labels (int8, 1
        when both items share a speaker).

    >>> i_idx, j_idx, labels = all_pairs_trials(["a", "a", "b"])
    >>> i_idx.tolist(), j_idx.tolist(), labels.tolist()
    ([0, 0, 1], [1, 2, 2], [1, 0, 0])
    """
    ids = np.asarray(speaker_ids)
    if ids.ndim != 1:
        raise ValueError(f"speaker_ids must be 1-D, got shape {ids.shape}")
    i_idx, j_idx = np.triu_indices(ids.shape[0], k=1)
    i_idx = i_idx.astype(np.int64, copy=False)
    j_idx = j_idx.astype(np.int64, copy=False)
    # int8 keeps the label array small: n = 5000 items already gives 12.5M trials.
    labels = (ids[i_idx] == ids[j_idx]).astype(np.int8)
    return i_idx, j_idx, labels


def score_trials(embeddings, i_idx, j_idx) -> np.ndarray:
    """Cosine score of each trial: row-wise dot products of unit embeddings.

    Args:
        embeddings: (n, d) embeddings; rows are L2-normalised here, so
            already-normalised and raw embeddings give the same scores.
        i_idx, j_idx: (num_trials,) integer row indices into ``embeddings``.

    Returns:
        (num_trials,) float64 scores in [-1, 1].

    >>> score_trials([[1.0, 0.0], [3.0, 4.0], [0.0, 2.0]], [0, 0, 1], [1, 2, 2])
    array([0.6, 0. , 0.8])
    """
    unit = unit_rows(_as_embedding_matrix(embeddings, "embeddings"))
    i_idx = np.asarray(i_idx, dtype=np.int64)
    j_idx = np.asarray(j_idx, dtype=np.int64)
    if i_idx.shape != j_idx.shape or i_idx.ndim != 1:
        raise ValueError(f"i_idx and j_idx must be 1-D and the same length, got {i_idx.shape} and {j_idx.shape}")
    num_rows = unit.shape[0]
    for name, index in (("i_idx", i_idx), ("j_idx", j_idx)):
        if index.size and (index.min() < 0 or index.max() >= num_rows):
            raise ValueError(f"{name} has indices outside [0, {num_rows}) for {num_rows} embeddings")
    scores = np.empty(i_idx.shape[0], dtype=np.float64)
    chunk = max(1, _SCORE_CHUNK_ELEMENTS // max(1, unit.shape[1]))
    for start in range(0, i_idx.shape[0], chunk):
        stop = start + chunk
        scores[start:stop] = np.einsum("td,td->t", unit[i_idx[start:stop]], unit[j_idx[start:stop]])
    return np.clip(scores, -1.0, 1.0)


def _weighted_eer(sorted_labels: np.ndarray, weights: np.ndarray) -> float:
    """EER of trials already sorted by decreasing score, each counted `weights` times
    (ties between scores are rare with cosine scores and not merged here)."""
    target = np.where(sorted_labels, weights, 0.0)
    nontarget = weights - target
    total_target, total_nontarget = target.sum(), nontarget.sum()
    # Accepting the k best-scored trials, k = 0 .. n: FNR falls from 1, FPR rises from 0.
    fnr = np.concatenate(([1.0], 1.0 - np.cumsum(target) / total_target))
    fpr = np.concatenate(([0.0], np.cumsum(nontarget) / total_nontarget))
    before, after, weight = _eer_crossing(fpr, fnr)
    return float(fpr[before] + weight * (fpr[after] - fpr[before]))


def eer_confidence_interval(scores, labels, first_speakers, second_speakers, level: float = 0.95,
                            num_resamples: int = 1000, seed: int = 0,
                            max_nontarget: int = 200_000) -> tuple[float, float]:
    """Bootstrap confidence interval of the EER, resampling speakers.

    Trials of one speaker are not independent (its files appear in many trials),
    so resampling trials would give too narrow an interval. Each resample draws
    as many speakers as there are, with replacement; a trial then counts
    m(a) * m(b) times for a non-target pair of speakers a, b drawn m(a) and m(b)
    times, and m(a) times for a target trial of speaker a.

    first_speakers, second_speakers: (num_trials,) speaker of each side of each
    trial; target trials must pair a speaker with itself and non-target trials
    two different speakers.
    max_nontarget: beyond this many non-target trials a seeded random subset of
    them is used (the interval's width comes from the speakers drawn, not from
    the millions of non-target pairs of a large folder), which keeps the cost
    at a few seconds (1000 resamples of 1.1 M trials would take about 30 s).

    >>> rng = np.random.default_rng(0)
    >>> speakers = np.repeat(np.arange(20), 4)
    >>> i, j, labels = all_pairs_trials(speakers)
    >>> scores = rng.normal(size=len(labels)) + 2.0 * labels
    >>> low, high = eer_confidence_interval(scores, labels, speakers[i], speakers[j])
    >>> bool(low < equal_error_rate(scores, labels)[0] < high)
    True
    """
    scores, labels = _check_trials(scores, labels, "eer_confidence_interval")
    first, second = np.asarray(first_speakers), np.asarray(second_speakers)
    if first.shape != scores.shape or second.shape != scores.shape:
        raise ValueError(f"eer_confidence_interval: one speaker per side of each of the {len(scores)} trials needed")
    if np.any((first == second) != labels):
        raise ValueError("eer_confidence_interval: a target trial pairs two speakers, or a non-target trial "
                         "one speaker with itself")
    if not 0 < level < 1:
        raise ValueError(f"eer_confidence_interval: level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    nontarget = np.flatnonzero(~labels)
    if len(nontarget) > max_nontarget:
        keep = np.sort(np.concatenate([np.flatnonzero(labels),
                                       rng.choice(nontarget, size=max_nontarget, replace=False)]))
        scores, labels, first, second = scores[keep], labels[keep], first[keep], second[keep]
    names, codes = np.unique(np.concatenate([first, second]), return_inverse=True)
    code_first, code_second = codes[:len(scores)], codes[len(scores):]
    order = np.argsort(-scores, kind="stable")
    sorted_labels, code_first, code_second = labels[order], code_first[order], code_second[order]
    estimates = []
    for _ in range(num_resamples):
        drawn = np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names)).astype(np.float64)
        weights = np.where(sorted_labels, drawn[code_first], drawn[code_first] * drawn[code_second])
        if np.any(weights[sorted_labels] > 0) and np.any(weights[~sorted_labels] > 0):
            estimates.append(_weighted_eer(sorted_labels, weights))
    if not estimates:
        raise ValueError("eer_confidence_interval: no resample held both target and non-target trials")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def verification_report(scores, labels, first_speakers=None, second_speakers=None) -> dict:
    """Summary metrics for a list of verification trials.

    Args:
        scores: (num_trials,) scores, higher = more likely the same speaker.
        labels: (num_trials,) 1 for target, 0 for non-target trials.
        first_speakers, second_speakers: optional speaker of each side of each
            trial; when given and consistent with the labels, the report adds
            ``eer_ci95``, the speaker-bootstrap 95 % interval of the EER.

    Returns:
        dict with float ``eer``, ``eer_threshold``, ``min_dcf_0.01``,
        ``min_dcf_0.05`` and int ``num_target``, ``num_nontarget``
        (plain Python types, so the dict is JSON-serialisable).

    >>> report = verification_report([0.9, 0.2, 0.6, 0.1], [1, 1, 0, 0])
    >>> report["eer"], report["num_target"], report["num_nontarget"]
    (0.5, 2, 2)
    """
    scores, labels = _check_trials(scores, labels, "verification_report")
    eer, eer_threshold = equal_error_rate(scores, labels)
    num_target = int(np.count_nonzero(labels))
    report = {
        "eer": eer,
        "eer_threshold": eer_threshold,
        "min_dcf_0.01": min_dcf(scores, labels, p_target=0.01)[0],
        "min_dcf_0.05": min_dcf(scores, labels, p_target=0.05)[0],
        "num_target": num_target,
        "num_nontarget": int(labels.shape[0] - num_target),
    }
    if first_speakers is not None and second_speakers is not None:
        try:
            report["eer_ci95"] = list(eer_confidence_interval(scores, labels, first_speakers, second_speakers))
        except ValueError:
            # Speakers that contradict the labels (a trial list's files named by folder) or
            # too few of them to resample: the report goes without an interval.
            pass
    return report
