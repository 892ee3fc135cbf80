"""Evaluation and training plots written straight to PNG files.

Every function draws one figure, writes it atomically (temp file in the same
folder, then os.replace) so a crash never leaves a half-written PNG, closes
the figure, and returns the output path.

Uses matplotlib (headless 'Agg' backend), numpy, scipy and scikit-learn only.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

# Headless backend: plots are written from training/evaluation jobs that have no
# display. Must be selected before pyplot is imported.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy.stats import norm  # noqa: E402

from deep_speaker.io_utils import atomic_write  # noqa: E402
from deep_speaker.metrics import cosine_similarity_matrix, unit_rows  # noqa: E402

__all__ = [
    "plot_det_curve",
    "plot_score_histograms",
    "plot_similarity_matrix",
    "plot_embeddings_2d",
    "plot_training_curves",
    "plot_diarization",
]

_DPI = 100

# DET axes: rates are clipped into [eps, 1 - eps] before the probit transform so
# 0 and 1 map to finite (off-axis) positions instead of +-inf.
_DET_CLIP_EPS = 1e-6
# Candidate tick positions in percent; those inside the axis range are shown.
_DET_TICKS_PERCENT = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 90, 95, 98, 99)
# Default NIST-style view, widened when the EER point would fall outside it.
_DET_DEFAULT_RANGE = (0.001, 0.40)

_MAX_AXIS_LABELS = 40  # similarity matrix: label at most this many speakers per axis
_MAX_LEGEND_SPEAKERS = 20
_TSNE_MIN_POINTS = 30


def _save_figure(fig, path) -> Path:
    """Write `fig` as PNG to `path` with io_utils.atomic_write (temp file + rename,
    the mode a new file gets, so plots stay shareable) and close it."""
    path = Path(path)
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=_DPI), durable=False)
    finally:
        plt.close(fig)
    return path


def _probit(rates) -> np.ndarray:
    """Normal deviate of a rate (the DET axis transform), clipped to stay finite."""
    return norm.ppf(np.clip(np.asarray(rates, dtype=np.float64), _DET_CLIP_EPS, 1.0 - _DET_CLIP_EPS))


def plot_det_curve(fpr, fnr, path, eer: float | None = None, label: str | None = None) -> Path:
    """DET curve on normal-deviate (probit) axes, like the NIST DET plot.

    Args:
        fpr: (num_points,) false-alarm rates in [0, 1] (e.g. from metrics.det_curve).
        fnr: (num_points,) miss rates in [0, 1].
        path: output PNG path.
        eer: equal error rate in [0, 1]; when given, the EER point is marked.
        label: legend label for the curve.

    Returns:
        The output path.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    fnr = np.asarray(fnr, dtype=np.float64)
    if fpr.ndim != 1 or fpr.shape != fnr.shape or fpr.size == 0:
        raise ValueError(f"fpr and fnr must be non-empty 1-D arrays of equal length, got {fpr.shape} and {fnr.shape}")

    low, high = _DET_DEFAULT_RANGE
    if eer is not None and 0.0 < eer < 1.0:
        # Keep the EER marker visible with a little margin on the probit scale.
        low = min(low, max(norm.cdf(norm.ppf(eer) - 0.5), 1e-4))
        high = max(high, min(norm.cdf(norm.ppf(eer) + 0.5), 0.99))

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot(_probit(fpr), _probit(fnr), linewidth=2, label=label or "DET curve")
    diagonal = _probit([low, high])
    ax.plot(diagonal, diagonal, linestyle=":", color="grey", linewidth=1, label="FPR = FNR")
    if eer is not None:
        eer_deviate = _probit(eer)
        ax.plot([eer_deviate], [eer_deviate], marker="o", color="red", linestyle="none",
                label=f"EER = {100.0 * eer:.2f}%")

    ticks = [t for t in _DET_TICKS_PERCENT if low <= t / 100.0 <= high]
    tick_positions = _probit(np.array(ticks) / 100.0)
    tick_labels = [f"{t:g}" for t in ticks]
    for axis_ticks, axis_labels in ((ax.set_xticks, ax.set_xticklabels), (ax.set_yticks, ax.set_yticklabels)):
        axis_ticks(tick_positions)
        axis_labels(tick_labels)
    limits = _probit([low, high])
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_aspect("equal")
    ax.grid(True, linestyle="--", alpha=0.5)
    ax.set_xlabel("False alarm rate (%)")
    ax.set_ylabel("Miss rate (%)")
    ax.set_title("DET curve")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_score_histograms(scores, labels, path, threshold: float | None = None) -> Path:
    """Overlaid density histograms of target and non-target trial scores.

    Args:
        scores: (num_trials,) scores.
        labels: (num_trials,) 1 for target (same speaker), 0 for non-target.
        path: output PNG path.
        threshold: decision threshold drawn as a vertical line (e.g. the EER threshold).

    Returns:
        The output path.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.ndim != 1 or scores.shape != labels.shape or scores.size == 0:
        raise ValueError(f"scores and labels must be non-empty 1-D arrays of equal length, "
                         f"got {scores.shape} and {labels.shape}")
    finite = np.isfinite(scores)
    if not finite.any():
        raise ValueError("scores has no finite values to plot")
    scores, labels = scores[finite], labels[finite]

    # Shared bin edges so the two histograms are directly comparable; cap the
    # count so millions of trials do not produce thousands of hairline bins.
    edges = np.histogram_bin_edges(scores, bins="auto")
    if edges.size > 101:
        edges = np.linspace(edges[0], edges[-1], 101)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mask, name, color in ((labels, "target", "tab:blue"), (~labels, "non-target", "tab:orange")):
        count = int(np.count_nonzero(mask))
        if count:
            ax.hist(scores[mask], bins=edges, density=True, alpha=0.5, color=color,
                    histtype="stepfilled", edgecolor=color, label=f"{name} (n={count})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.5, label=f"threshold = {threshold:.3f}")
    ax.set_xlabel("Score (cosine similarity)")
    ax.set_ylabel("Density")
    ax.set_title("Target vs non-target score distributions")
    ax.legend(loc="best")
    fig.tight_layout()
    return _save_figure(fig, path)


def _speaker_names(speaker_ids: Sequence, num_rows: int) -> np.ndarray:
    ids = np.asarray(speaker_ids)
    if ids.ndim != 1 or ids.shape[0] != num_rows:
        raise ValueError(f"speaker_ids must be 1-D with one id per embedding ({num_rows}), got shape {ids.shape}")
    return ids


def _embedding_matrix(embeddings) -> np.ndarray:
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty 2-D (num_items, dim) array, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("embeddings contain non-finite values (nan or inf)")
    return matrix


def _unit_embeddings_by_speaker(embeddings, speaker_ids: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked unit-length rows, the sorted distinct speakers, and each row's index into them."""
    matrix = _embedding_matrix(embeddings)
    ids = _speaker_names(speaker_ids, matrix.shape[0])
    speakers, speaker_index = np.unique(ids, return_inverse=True)
    return unit_rows(matrix), speakers, speaker_index


def plot_similarity_matrix(embeddings, speaker_ids: Sequence, path) -> Path:
    """Speaker-by-speaker cosine similarity of mean speaker embeddings.

    Each utterance embedding is L2-normalised, averaged per speaker, and the
    mean is renormalised; speakers are sorted by id.

    Args:
        embeddings: (num_items, dim) embeddings.
        speaker_ids: (num_items,) speaker id per embedding.
        path: output PNG path.

    Returns:
        The output path.
    """
    unit, speakers, speaker_index = _unit_embeddings_by_speaker(embeddings, speaker_ids)
    num_speakers = speakers.shape[0]

    # Per-speaker sum of unit embeddings; renormalising the sum equals renormalising the mean.
    centroids = np.zeros((num_speakers, unit.shape[1]))
    np.add.at(centroids, speaker_index, unit)
    similarity = cosine_similarity_matrix(centroids, centroids)

    size = min(max(6.0, 0.22 * num_speakers + 2.0), 18.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(similarity, cmap="coolwarm", vmin=-1.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Cosine similarity")

    # Show every `step`-th name so at most _MAX_AXIS_LABELS labels crowd each axis.
    step = max(1, math.ceil(num_speakers / _MAX_AXIS_LABELS))
    positions = np.arange(0, num_speakers, step)
    names = [str(name) for name in speakers[positions]]
    font_size = 8 if num_speakers <= 20 else 6
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=90, fontsize=font_size)
    ax.set_yticks(positions)
    ax.set_yticklabels(names, fontsize=font_size)
    ax.set_xlabel("Speaker")
    ax.set_ylabel("Speaker")
    ax.set_title(f"Speaker cosine similarity ({num_speakers} speakers)")
    fig.tight_layout()
    return _save_figure(fig, path)


def _project_2d(unit: np.ndarray) -> tuple[np.ndarray, str]:
    """(num_items, 2) projection of unit embeddings and the method's name."""
    num_items, dim = unit.shape
    if num_items >= _TSNE_MIN_POINTS:
        from sklearn.manifold import TSNE

        # Perplexity must stay below the number of points; ~n/3 capped at the usual 30.
        perplexity = float(min(30.0, max(5.0, (num_items - 1) / 3.0)))
        projection = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(unit)
        return projection, "t-SNE"
    from sklearn.decomposition import PCA

    components = min(2, num_items, dim)
    projection = np.zeros((num_items, 2))
    if num_items > 1:
        projection[:, :components] = PCA(n_components=components).fit_transform(unit)
    return projection, "PC"


def plot_embeddings_2d(embeddings, speaker_ids: Sequence, path) -> Path:
    """2-D map of embeddings coloured by speaker.

    Embeddings are L2-normalised (so distances follow cosine similarity) and
    projected with PCA when there are fewer than 30 points, else with t-SNE
    (perplexity adapted to the number of points, fixed random_state=0).

    Args:
        embeddings: (num_items, dim) embeddings.
        speaker_ids: (num_items,) speaker id per embedding.
        path: output PNG path.

    Returns:
        The output path.
    """
    unit, speakers, speaker_index = _unit_embeddings_by_speaker(embeddings, speaker_ids)
    num_speakers = speakers.shape[0]
    projection, method = _project_2d(unit)

    # tab20 gives distinct colours up to 20 speakers; beyond that a continuous map.
    if num_speakers <= 20:
        colors = plt.get_cmap("tab20")(np.arange(num_speakers))
    else:
        colors = plt.get_cmap("nipy_spectral")(np.linspace(0.0, 0.95, num_speakers))

    fig, ax = plt.subplots(figsize=(8, 6))
    for index, speaker in enumerate(speakers):
        points = projection[speaker_index == index]
        ax.scatter(points[:, 0], points[:, 1], s=18, color=colors[index], label=str(speaker), alpha=0.8)
    if num_speakers <= _MAX_LEGEND_SPEAKERS:
        ax.legend(title="Speaker", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(f"Embeddings ({method}, {unit.shape[0]} utterances, {num_speakers} speakers)")
    fig.tight_layout()
    return _save_figure(fig, path)


def _family(key: str) -> str:
    """Group a history key into the subplot it belongs to."""
    lowered = key.lower()
    if "loss" in lowered:
        return "Loss"
    if "eer" in lowered:
        return "EER"
    if "acc" in lowered:
        return "Accuracy"
    return "Other"


def plot_training_curves(history: Mapping[str, Sequence[float]], path) -> Path:
    """Per-epoch training curves, one subplot per quantity family.

    Keys are grouped by name: '*loss*' -> Loss, '*eer*' -> EER, '*acc*' ->
    Accuracy, anything else -> Other. Missing values may be NaN (e.g. a test
    metric computed every few epochs): each series is drawn through its finite
    points only, with markers so isolated values stay visible.

    Args:
        history: {name: per-epoch values}, e.g. {'loss': [...], 'test_eer': [...]};
            epoch k (1-based) is list position k - 1.
        path: output PNG path.

    Returns:
        The output path.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    families: dict[str, list[tuple[str, np.ndarray]]] = {}
    for key, values in history.items():
        series = np.asarray(values, dtype=np.float64).reshape(-1)
        families.setdefault(_family(key), []).append((key, series))
    order = [name for name in ("Loss", "Accuracy", "EER", "Other") if name in families]

    num_epochs = max(1, max(series.shape[0] for members in families.values() for _, series in members))

    fig, axes = plt.subplots(1, len(order), figsize=(5.0 * len(order), 4.0), squeeze=False)
    for ax, family in zip(axes[0], order):
        plotted = False
        for key, series in families[family]:
            epochs = np.arange(1, series.shape[0] + 1)
            finite = np.isfinite(series)
            if finite.any():
                ax.plot(epochs[finite], series[finite], marker="o", markersize=3, label=key)
                plotted = True
        if plotted:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0.5, num_epochs + 0.5)  # same epoch range on every subplot
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, linestyle="--", alpha=0.5)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(family if family != "Other" else "Value")
        ax.set_title(family if family != "Other" else "Other metrics")
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_diarization(diarization, path, reference=None) -> Path:
    """Timeline of a `deep_speaker.diarization.Diarization`: one lane per speaker (in order of first
    appearance), time in seconds; with `reference` segments [(start, end, label)], their lanes are drawn
    above in grey, so the two read side by side."""
    hypothesis = list(diarization.segments)
    lanes = [("", label) for label in dict.fromkeys(label for _, _, label in hypothesis)]
    if reference is not None:
        lanes = [("reference ", label) for label in dict.fromkeys(label for _, _, label in reference)] + lanes
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.45 * max(1, len(lanes))))
    colours = plt.get_cmap("tab10")
    row_of = {lane: i for i, lane in enumerate(reversed(lanes))}
    for prefix, segments in (("reference ", reference or []), ("", hypothesis)):
        labels = list(dict.fromkeys(label for _, _, label in segments))
        for k, label in enumerate(labels):
            spans = [(s, e - s) for s, e, other in segments if other == label]
            colour = "0.55" if prefix else colours(k % 10)
            ax.broken_barh(spans, (row_of[(prefix, label)] - 0.4, 0.8), facecolors=colour)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels([f"{prefix}{label}" for prefix, label in reversed(lanes)])
    ax.set_xlim(0, max(diarization.duration_s, max((e for _, e, _ in hypothesis), default=0.0), 1e-3))
    ax.set_ylim(-0.6, max(0.6, len(lanes) - 0.4))
    ax.set_xlabel("time (s)")
    title = f"{diarization.uri}: {diarization.num_speakers} speaker(s)"
    ax.set_title(title if hypothesis else f"{title} ({diarization.reason})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path)
