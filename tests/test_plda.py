"""The two-covariance PLDA (deep_speaker.plda) and the clustering that uses it (deep_speaker.diarization):
the fit recovers the model it is given data from, the merge score is the exact log-likelihood ratio and
weighs the sizes of the sets, the file round trip and its tie to the model, and the clustering methods on
data whose answer is known."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deep_speaker.diarization import (DiarizationSettings, _plda_merge, cluster, clustering_method, model_plda,
                                      spherical_kmeans)
from deep_speaker.errors import InputError
from deep_speaker.plda import PLDA, PLDA_FILE, PLDAError, fit_plda, load_plda

DIM = 6


def two_covariance_data(speakers: int, per_speaker: int, seed: int = 0, between: float = 4.0):
    """Embeddings x = mean + y_s + e, y_s ~ N(0, between * I), e ~ N(0, I): what the model assumes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, np.sqrt(between), (speakers, DIM))
    labels = np.repeat(np.arange(speakers), per_speaker)
    return 3.0 + centres[labels] + rng.normal(0, 1, (len(labels), DIM)), labels


def test_the_fit_recovers_the_model_it_is_given_data_from():
    x, labels = two_covariance_data(400, 20, between=4.0)
    plda = fit_plda(x, labels, rank=DIM, model_sha256="abc")
    np.testing.assert_allclose(plda.mean, 3.0, atol=0.3)
    np.testing.assert_allclose(plda.between, 4.0, rtol=0.25)  # within-speaker noise made white: 1
    z = plda.project(x)
    within = z - np.stack([z[labels == s].mean(axis=0) for s in range(400)])[labels]
    np.testing.assert_allclose(np.cov(within.T) * 20 / 19, np.eye(DIM), atol=0.1)
    assert plda.info == {"speakers": 400, "embeddings": 8000} and plda.model_sha256 == "abc"
    with pytest.raises(InputError, match="two speakers"):
        fit_plda(x[:3], [0, 1, 2])


def test_the_merge_score_is_the_exact_likelihood_ratio():
    plda = PLDA(np.zeros(2), np.eye(2), np.array([2.0, 0.5]))
    a, b = np.array([[1.0, 0.2], [0.4, -0.3]]), np.array([[-0.5, 0.1]])

    def log_marginal(points):  # brute force: the joint Gaussian of the points, speaker integrated out
        n = len(points)
        total = 0.0
        for d, variance in enumerate(plda.between):
            covariance = np.eye(n) + variance * np.ones((n, n))
            _, logdet = np.linalg.slogdet(covariance)
            v = points[:, d]
            total += -0.5 * (n * np.log(2 * np.pi) + logdet + v @ np.linalg.solve(covariance, v))
        return total

    expected = log_marginal(np.vstack([a, b])) - log_marginal(a) - log_marginal(b)
    got = plda.merge_scores(2.0, a.sum(axis=0), np.array([1.0]), b.sum(axis=0)[None, :])
    assert got[0] == pytest.approx(expected, abs=1e-9)


def test_more_evidence_makes_the_merge_score_surer_both_ways():
    x, labels = two_covariance_data(300, 40, seed=1)
    plda = fit_plda(x, labels, rank=DIM)
    z = plda.project(x)

    def score(first, second):
        return float(plda.merge_scores(len(first), first.sum(axis=0), np.array([float(len(second))]),
                                       second.sum(axis=0)[None, :])[0])

    one, other = z[labels == 0], z[labels == 1]
    assert score(one[:20], one[20:]) > score(one[:2], one[2:4]) > 0  # one speaker
    assert score(one[:20], other[:20]) < score(one[:2], other[:2]) < 0  # two speakers


def test_the_file_round_trip_and_its_tie_to_the_model(tmp_path):
    x, labels = two_covariance_data(50, 10)
    plda = fit_plda(x, labels, rank=4, model_sha256="abc", info={"fitted_on": "test"})
    loaded = load_plda(plda.save(tmp_path / PLDA_FILE), "abc")
    np.testing.assert_allclose(loaded.project(x), plda.project(x), rtol=1e-4, atol=1e-4)  # stored as float32
    assert loaded.info["fitted_on"] == "test" and loaded.rank == 4
    with pytest.raises(PLDAError, match="another model"):
        load_plda(tmp_path / PLDA_FILE, "def")
    (tmp_path / "bad.npz").write_bytes(b"not a file")
    with pytest.raises(PLDAError, match="bad.npz: not a PLDA file"):
        load_plda(tmp_path / "bad.npz", "abc")


def test_the_shipped_model_has_its_own_plda():
    from deep_speaker import SpeakerEncoder

    encoder = SpeakerEncoder()
    plda = model_plda(encoder)
    assert plda is not None and plda.rank == 128 and plda.transform.shape == (128, encoder.embedding_dim)
    assert plda.info["speakers"] > 500 and model_plda(encoder) is plda  # loaded once


def test_a_model_without_a_matching_plda_counts_speakers_by_cosine(tmp_path):
    from deep_speaker import SpeakerEncoder
    shipped = Path(SpeakerEncoder().model_path).parent
    for name in ("embedding.keras", "embedding.onnx", "config.json"):
        shutil.copy(shipped / name, tmp_path / name)
    encoder = SpeakerEncoder(tmp_path / "embedding.keras")
    assert model_plda(encoder) is None
    assert clustering_method(DiarizationSettings(), None, False) == "ahc"
    x, labels = two_covariance_data(3, 10)
    fit_plda(x, labels, rank=4, model_sha256="0" * 64).save(tmp_path / PLDA_FILE)
    with pytest.warns(UserWarning, match="another model's embeddings.*cosine clustering instead"):
        assert model_plda(SpeakerEncoder(tmp_path / "embedding.keras")) is None


def test_clustering_methods_are_chosen_and_checked():
    auto = DiarizationSettings()
    assert clustering_method(auto, 3, True) == "kmeans" and clustering_method(auto, None, True) == "plda"
    with pytest.raises(InputError, match="needs the model's diarization_plda.npz"):
        clustering_method(dataclasses.replace(auto, clustering="plda"), None, False)
    with pytest.raises(InputError, match="clustering must be one of"):
        clustering_method(dataclasses.replace(auto, clustering="dbscan"), None, True)


def unit_clusters(sizes, seed=0, spread=0.35, dim=16):
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:len(sizes)]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[labels] + rng.normal(0, spread / np.sqrt(dim), (len(labels), dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def same_partition(a, b) -> bool:
    return len(set(zip(a, b))) == len(set(a)) == len(set(b))


def test_spherical_kmeans_finds_unequal_clusters_and_is_seeded():
    x, labels = unit_clusters([40, 8, 15])
    found = spherical_kmeans(x, np.ones(len(x)), 3, restarts=10)
    assert same_partition(found, labels)
    assert np.array_equal(found, spherical_kmeans(x, np.ones(len(x)), 3, restarts=10))
    assert spherical_kmeans(x[:2], np.ones(2), 5, restarts=2).max() <= 1  # never more clusters than points


def test_plda_merging_estimates_the_count_and_keeps_to_the_bounds():
    x, labels = two_covariance_data(4, 30, seed=3, between=9.0)
    plda = fit_plda(*two_covariance_data(300, 20, seed=4, between=9.0), rank=DIM)
    z = plda.project(x)
    counts, totals = np.ones(len(z)), z
    # At the default threshold (-5: greedy merging at 0 stops early, here with one speaker in two halves,
    # which is why the calibrated threshold is below 0).
    threshold = DiarizationSettings().plda_threshold
    assert same_partition(_plda_merge(plda, counts, totals, threshold, None, 1, 20), labels)
    assert len(set(_plda_merge(plda, counts, totals, threshold, 2, 1, 20))) == 2
    assert len(set(_plda_merge(plda, counts, totals, threshold, None, 6, 20))) == 6
    assert len(set(_plda_merge(plda, counts, totals, threshold, None, 1, 3))) == 3
    assert len(set(_plda_merge(plda, counts, totals, 1e9, None, 1, 200))) == len(z)  # nothing that sure


def test_window_clustering_with_plda_uses_runs_of_windows_and_refines():
    def unit_rows(x):  # the model's embeddings are unit rows: so are these
        return (x - 3.0) / np.linalg.norm(x - 3.0, axis=1, keepdims=True)

    train, train_labels = two_covariance_data(300, 20, seed=5, between=9.0)
    plda = fit_plda(unit_rows(train), train_labels, rank=DIM)
    x, labels = two_covariance_data(3, 24, seed=6, between=9.0)
    stretches = np.repeat(np.arange(18), 4)  # stretches of speech of 4 windows, one speaker each
    settings = dataclasses.replace(DiarizationSettings(), plda_window_weight=1.0)
    found = cluster(unit_rows(x), np.ones(len(x)), settings, None, 1, None, stretches, plda)
    assert same_partition(found, labels)
    assert len(set(cluster(unit_rows(x), np.ones(len(x)), settings, 2, 1, None, stretches, plda))) == 2
    assert json.dumps(dataclasses.asdict(settings))  # every setting is plain data (Diarization.settings)


def test_plda_merging_of_more_starting_clusters_than_the_cap_assigns_the_rest(monkeypatch):
    import deep_speaker.diarization as diarization

    def unit_rows(x):
        return (x - 3.0) / np.linalg.norm(x - 3.0, axis=1, keepdims=True)

    train, train_labels = two_covariance_data(300, 20, seed=5, between=9.0)
    plda = fit_plda(unit_rows(train), train_labels, rank=DIM)
    x, labels = two_covariance_data(3, 40, seed=6, between=9.0)
    stretches = np.repeat(np.arange(60), 2)  # 60 starting clusters of 2 windows ...
    monkeypatch.setattr(diarization, "MAX_CLUSTER_WINDOWS", 20)  # ... of which 20 are merged
    settings = dataclasses.replace(DiarizationSettings(), plda_window_weight=1.0, plda_group_windows=2)
    found = diarization.plda_labels(unit_rows(x), stretches, plda, settings, None, 1, 20)
    assert same_partition(found, labels) and len(found) == len(x)
