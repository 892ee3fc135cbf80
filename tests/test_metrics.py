"""Tests for deep_speaker.metrics (numpy / scikit-learn only, no TensorFlow)."""
import numpy as np
import pytest

from deep_speaker import metrics

# The fast (sklearn ROC) and literal reference implementations do the same float64
# arithmetic in a different order, so they agree to rounding error; 1e-9 absolute
# is far tighter than any real difference (a one-trial shift moves EER by ~1e-2).
REFERENCE_TOLERANCE = 1e-9


# ---------------------------------------------------------------- slow references

def _reference_error_rates(scores, labels):
    """Literal FPR/FNR at every candidate threshold (accept when score >= t).

    Candidates are +inf (reject all) followed by the distinct scores in
    decreasing order, matching the points of a full ROC curve.
    """
    targets = scores[labels == 1]
    nontargets = scores[labels == 0]
    thresholds = [np.inf] + sorted(set(scores.tolist()), reverse=True)
    fpr, fnr = [], []
    for threshold in thresholds:
        fpr.append(sum(1 for s in nontargets if s >= threshold) / len(nontargets))
        fnr.append(sum(1 for s in targets if s < threshold) / len(targets))
    return thresholds, fpr, fnr


def reference_eer(scores, labels):
    """EER where the straight segments of FPR(t) and FNR(t) between candidates cross."""
    thresholds, fpr, fnr = _reference_error_rates(scores, labels)
    for k in range(len(thresholds)):
        if fnr[k] == fpr[k]:
            return fpr[k], thresholds[k]
        if fnr[k] < fpr[k]:
            # Crossing lies on the segment (k-1, k): solve fnr(w) = fpr(w) for w in (0, 1).
            gap_before = fnr[k - 1] - fpr[k - 1]
            gap_after = fnr[k] - fpr[k]
            w = gap_before / (gap_before - gap_after)
            eer = fpr[k - 1] + w * (fpr[k] - fpr[k - 1])
            if np.isinf(thresholds[k - 1]):
                return eer, thresholds[k]
            return eer, thresholds[k - 1] + w * (thresholds[k] - thresholds[k - 1])
    raise AssertionError("FPR and FNR never crossed")


def reference_min_dcf(scores, labels, p_target, c_miss=1.0, c_fa=1.0):
    thresholds, fpr, fnr = _reference_error_rates(scores, labels)
    best_cost, best_threshold = np.inf, None
    for threshold, fa, miss in zip(thresholds, fpr, fnr):
        cost = c_miss * p_target * miss + c_fa * (1 - p_target) * fa
        if cost < best_cost:  # strict: keep the first (highest) threshold among ties
            best_cost, best_threshold = cost, threshold
    return best_cost / min(c_miss * p_target, c_fa * (1 - p_target)), best_threshold


def _random_trials(seed, num_target=60, num_nontarget=240, separation=1.5, round_to=None):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(separation, 1.0, num_target), rng.normal(0.0, 1.0, num_nontarget)])
    if round_to is not None:  # creates ties, exercising grouped thresholds
        scores = np.round(scores, round_to)
    labels = np.concatenate([np.ones(num_target, dtype=int), np.zeros(num_nontarget, dtype=int)])
    order = rng.permutation(scores.size)
    return scores[order], labels[order]


# ---------------------------------------------------------------- EER

def test_eer_perfectly_separated_is_zero():
    eer, threshold = metrics.equal_error_rate([0.9, 0.8, 0.7, 0.2, 0.1], [1, 1, 1, 0, 0])
    assert eer == 0.0
    assert 0.2 < threshold <= 0.7


def test_eer_inverted_is_one():
    eer, _ = metrics.equal_error_rate([0.1, 0.2, 0.3, 0.8, 0.9], [1, 1, 1, 0, 0])
    assert eer == 1.0


def test_eer_random_scores_is_about_half():
    rng = np.random.default_rng(1234)
    scores = rng.normal(size=4000)
    labels = rng.integers(0, 2, size=4000)
    eer, _ = metrics.equal_error_rate(scores, labels)
    assert abs(eer - 0.5) < 0.05


def test_eer_all_scores_tied_is_half():
    eer, threshold = metrics.equal_error_rate([0.3, 0.3, 0.3, 0.3], [1, 0, 1, 0])
    assert eer == pytest.approx(0.5)
    assert threshold == 0.3


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("round_to", [None, 1])
def test_eer_matches_literal_reference(seed, round_to):
    scores, labels = _random_trials(seed, round_to=round_to)
    eer, threshold = metrics.equal_error_rate(scores, labels)
    ref_eer, ref_threshold = reference_eer(scores, labels)
    assert eer == pytest.approx(ref_eer, abs=REFERENCE_TOLERANCE)
    assert threshold == pytest.approx(ref_threshold, abs=REFERENCE_TOLERANCE)


def test_eer_accepts_boolean_labels():
    scores, labels = _random_trials(7)
    assert metrics.equal_error_rate(scores, labels.astype(bool)) == metrics.equal_error_rate(scores, labels)


# ---------------------------------------------------------------- minDCF

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p_target", [0.01, 0.05, 0.5])
@pytest.mark.parametrize("round_to", [None, 1])
def test_min_dcf_matches_literal_reference(seed, p_target, round_to):
    scores, labels = _random_trials(seed, round_to=round_to)
    value, threshold = metrics.min_dcf(scores, labels, p_target)
    ref_value, ref_threshold = reference_min_dcf(scores, labels, p_target)
    assert value == pytest.approx(ref_value, abs=REFERENCE_TOLERANCE)
    assert threshold == ref_threshold


def test_min_dcf_with_costs_matches_reference():
    scores, labels = _random_trials(11)
    value, _ = metrics.min_dcf(scores, labels, 0.05, c_miss=10.0, c_fa=1.0)
    ref_value, _ = reference_min_dcf(scores, labels, 0.05, c_miss=10.0, c_fa=1.0)
    assert value == pytest.approx(ref_value, abs=REFERENCE_TOLERANCE)


def test_min_dcf_bounds():
    separated = metrics.min_dcf([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], 0.01)
    inverted = metrics.min_dcf([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], 0.01)
    assert separated[0] == 0.0
    # A useless system can never beat the trivial "always reject/accept" cost: exactly 1.
    assert inverted[0] == pytest.approx(1.0)


@pytest.mark.parametrize("p_target", [0.0, 1.0, -0.1])
def test_min_dcf_rejects_bad_prior(p_target):
    with pytest.raises(ValueError, match="p_target"):
        metrics.min_dcf([0.9, 0.1], [1, 0], p_target)


# ---------------------------------------------------------------- input validation

@pytest.mark.parametrize("function", [metrics.equal_error_rate, metrics.verification_report,
                                      metrics.det_curve, lambda s, l: metrics.min_dcf(s, l, 0.01)])
@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_one_class_input_raises_clear_error(function, labels):
    with pytest.raises(ValueError, match="only one class is present") as info:
        function([0.1, 0.5, 0.9], labels)
    assert "target (label 1) and non-target (label 0)" in str(info.value)


@pytest.mark.parametrize("scores, labels, message", [
    ([], [], "empty"),
    ([0.1, 0.2], [1], "differ in length"),
    ([0.1, np.nan], [1, 0], "non-finite"),
    ([0.1, np.inf], [1, 0], "non-finite"),
    ([0.1, 0.2], [1, 2], "labels must be 0"),
    ([[0.1, 0.2]], [[1, 0]], "1-D"),
])
def test_invalid_trials_raise(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        metrics.equal_error_rate(scores, labels)


# ---------------------------------------------------------------- DET, report

def test_det_curve_consistent_with_eer():
    scores, labels = _random_trials(3)
    fpr, fnr, thresholds = metrics.det_curve(scores, labels)
    assert fpr.shape == fnr.shape == thresholds.shape
    assert np.all(np.diff(thresholds) > 0)
    eer, _ = metrics.equal_error_rate(scores, labels)
    # The EER lies between the DET points on either side of the FPR = FNR crossing.
    crossing = np.argmax(fnr >= fpr)
    assert min(fpr[crossing], fnr[crossing - 1]) - 1e-12 <= eer <= max(fnr[crossing], fpr[crossing - 1]) + 1e-12


def test_verification_report_keys_and_values():
    scores, labels = _random_trials(5)
    report = metrics.verification_report(scores, labels)
    assert set(report) == {"eer", "eer_threshold", "min_dcf_0.01", "min_dcf_0.05", "num_target", "num_nontarget"}
    assert report["num_target"] == 60 and report["num_nontarget"] == 240
    assert report["eer"] == pytest.approx(reference_eer(scores, labels)[0], abs=REFERENCE_TOLERANCE)
    assert report["min_dcf_0.01"] == pytest.approx(reference_min_dcf(scores, labels, 0.01)[0],
                                                   abs=REFERENCE_TOLERANCE)
    assert all(type(report[key]) is float for key in ("eer", "eer_threshold", "min_dcf_0.01", "min_dcf_0.05"))
    assert all(type(report[key]) is int for key in ("num_target", "num_nontarget"))


# ---------------------------------------------------------------- trials and cosine scores

def test_all_pairs_trials_small_example():
    i_idx, j_idx, labels = metrics.all_pairs_trials(["a", "b", "a", "b"])
    # Pairs in row-major upper-triangle order: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3).
    assert i_idx.tolist() == [0, 0, 0, 1, 1, 2]
    assert j_idx.tolist() == [1, 2, 3, 2, 3, 3]
    assert labels.tolist() == [0, 1, 0, 0, 1, 0]


def test_all_pairs_trials_counts_and_degenerate_sizes():
    ids = [0, 0, 0, 1, 1, 2]
    i_idx, j_idx, labels = metrics.all_pairs_trials(ids)
    assert len(i_idx) == 15 and np.all(i_idx < j_idx)
    assert int(labels.sum()) == 3 + 1  # C(3,2) same-speaker pairs for speaker 0, C(2,2) for speaker 1
    for tiny in ([], ["only"]):
        i_idx, j_idx, labels = metrics.all_pairs_trials(tiny)
        assert i_idx.size == j_idx.size == labels.size == 0


def test_score_trials_equals_cosine_of_each_pair():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(7, 5)) * rng.uniform(0.5, 3.0, size=(7, 1))  # unnormalised
    i_idx, j_idx, _ = metrics.all_pairs_trials(list(range(7)))
    scores = metrics.score_trials(embeddings, i_idx, j_idx)
    expected = [1.0 - metrics.cosine_distance(embeddings[i], embeddings[j]) for i, j in zip(i_idx, j_idx)]
    np.testing.assert_allclose(scores, expected, atol=1e-12)


def test_score_trials_chunking_matches_unchunked(monkeypatch):
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(20, 8))
    i_idx, j_idx, _ = metrics.all_pairs_trials(list(range(20)))
    full = metrics.score_trials(embeddings, i_idx, j_idx)
    monkeypatch.setattr(metrics, "_SCORE_CHUNK_ELEMENTS", 8 * 7)  # 7 trials per chunk
    np.testing.assert_array_equal(metrics.score_trials(embeddings, i_idx, j_idx), full)


def test_score_trials_rejects_out_of_range_indices():
    with pytest.raises(ValueError, match="outside"):
        metrics.score_trials(np.eye(3), [0, 3], [1, 2])


def test_cosine_similarity_matrix_and_distance():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    b = np.array([[5.0, 0.0], [-1.0, 0.0]])
    similarity = metrics.cosine_similarity_matrix(a, b)
    assert similarity.shape == (3, 2)
    np.testing.assert_allclose(similarity, [[1, -1], [0, 0], [np.sqrt(0.5), -np.sqrt(0.5)]], atol=1e-12)
    # Standard cosine (norms not squared): scaling a vector does not change the distance.
    assert metrics.cosine_distance([1.0, 2.0], [10.0, 20.0]) == pytest.approx(0.0, abs=1e-12)
    assert metrics.cosine_distance([1.0, 0.0], [-3.0, 0.0]) == pytest.approx(2.0)
    assert metrics.cosine_distance([3.0, 4.0], [4.0, 3.0]) == pytest.approx(1.0 - 24.0 / 25.0)
    with pytest.raises(ValueError, match="dimensions differ"):
        metrics.cosine_similarity_matrix(np.ones((2, 3)), np.ones((2, 4)))


# ---------------------------------------------------------------------------
# Speaker-bootstrap interval of the EER
# ---------------------------------------------------------------------------

def _speaker_trials(num_speakers: int, files_per_speaker: int, separation: float, seed: int = 0):
    from deep_speaker.metrics import all_pairs_trials

    speakers = np.repeat(np.arange(num_speakers), files_per_speaker)
    i, j, labels = all_pairs_trials(speakers)
    scores = np.random.default_rng(seed).normal(size=len(labels)) + separation * labels
    return scores, labels, speakers[i], speakers[j]


def test_weighted_eer_equals_eer_of_replicated_trials():
    """Integer weights must mean 'this trial counted w times' (the resampling relies on it)."""
    from deep_speaker.metrics import _weighted_eer, equal_error_rate

    scores, labels, _, _ = _speaker_trials(8, 3, 1.5, seed=4)
    weights = np.random.default_rng(5).integers(0, 4, len(scores)).astype(float)
    order = np.argsort(-scores)
    got = _weighted_eer(labels[order].astype(bool), weights[order])
    repeated = np.repeat(np.arange(len(scores)), weights.astype(int))
    expected, _ = equal_error_rate(scores[repeated], labels[repeated])
    assert got == pytest.approx(expected, abs=1e-12)


def test_eer_interval_holds_the_estimate_narrows_with_speakers_and_is_repeatable():
    from deep_speaker.metrics import eer_confidence_interval, equal_error_rate

    few = _speaker_trials(10, 4, 2.0, seed=1)
    many = _speaker_trials(80, 4, 2.0, seed=1)
    low_few, high_few = eer_confidence_interval(*few, num_resamples=300)
    low_many, high_many = eer_confidence_interval(*many, num_resamples=300)
    assert low_few < equal_error_rate(few[0], few[1])[0] < high_few
    assert low_many < equal_error_rate(many[0], many[1])[0] < high_many
    assert high_many - low_many < 0.6 * (high_few - low_few)
    assert eer_confidence_interval(*few, num_resamples=300) == (low_few, high_few)
    # A wider level gives a wider interval.
    low_99, high_99 = eer_confidence_interval(*few, level=0.99, num_resamples=300)
    assert low_99 <= low_few and high_99 >= high_few


def test_eer_interval_refuses_speakers_that_contradict_the_labels():
    from deep_speaker.metrics import eer_confidence_interval

    scores, labels, first, second = _speaker_trials(5, 3, 1.0)
    wrong = second.copy()
    wrong[np.argmax(labels == 1)] = 99  # a target trial between two speakers
    with pytest.raises(ValueError, match="target trial pairs two speakers"):
        eer_confidence_interval(scores, labels, first, wrong)


def test_verification_report_adds_the_interval_only_with_consistent_speakers():
    from deep_speaker.metrics import verification_report

    scores, labels, first, second = _speaker_trials(12, 3, 2.0)
    assert "eer_ci95" not in verification_report(scores, labels)
    low, high = verification_report(scores, labels, first, second)["eer_ci95"]
    assert 0 <= low < high <= 1
    folder_named = np.zeros_like(first)  # a trial list whose files all sit in one folder
    assert "eer_ci95" not in verification_report(scores, labels, folder_named, folder_named)


def test_eer_interval_on_a_subset_of_many_nontarget_trials_stays_close():
    """Large folders give millions of non-target pairs; a random subset of them
    must give nearly the same interval (its width comes from the speakers)."""
    from deep_speaker.metrics import eer_confidence_interval

    trials = _speaker_trials(40, 5, 2.0, seed=2)  # 19 900 trials, 400 of them target
    full = eer_confidence_interval(*trials, num_resamples=300)
    subset = eer_confidence_interval(*trials, num_resamples=300, max_nontarget=5000)
    assert np.allclose(full, subset, atol=0.02)
