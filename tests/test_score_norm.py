"""AS-norm score normalisation: the formula by hand, the cohort file round trip and
its tie to the model's weights, and export_model.py writing a cohort."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deep_speaker.score_norm import (COHORT_FILE, CohortError, ScoreNormalizer, cohort_files, model_fingerprint,
                                     speaker_means)


def _unit(rows):
    rows = np.asarray(rows, np.float64)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_as_norm_matches_the_formula_by_hand():
    rng = np.random.default_rng(0)
    cohort = _unit(rng.standard_normal((30, 8)))
    a, b = _unit(rng.standard_normal((1, 8))), _unit(rng.standard_normal((1, 8)))
    normalizer = ScoreNormalizer(cohort, top_k=5)
    raw = float(a[0] @ b[0])
    top_a = np.sort(cohort @ a[0])[-5:]
    top_b = np.sort(cohort @ b[0])[-5:]
    expected = 0.5 * ((raw - top_a.mean()) / top_a.std() + (raw - top_b.mean()) / top_b.std())
    assert normalizer.pair_score(a[0], b[0]) == pytest.approx(expected, rel=1e-5)
    # symmetric, and the trial form agrees with the pair form
    assert normalizer.pair_score(b[0], a[0]) == pytest.approx(expected, rel=1e-5)
    both = np.concatenate([a, b])
    assert normalizer.trial_scores(both, both, np.array([0]), np.array([1]))[0] == pytest.approx(expected, rel=1e-5)


def test_the_same_raw_score_counts_less_for_a_voice_near_the_whole_cohort():
    """A 'hub' voice (close to many cohort speakers) gets high raw scores against
    everyone: AS-norm maps the same raw cosine lower for a hub trial than for a
    trial between two voices far from the cohort."""
    rng = np.random.default_rng(1)
    centre = _unit(rng.standard_normal((1, 16)))[0]
    cohort = _unit(centre + 0.4 * rng.standard_normal((100, 16)))
    hub = centre
    loner = _unit([-centre + 0.3 * rng.standard_normal(16)])[0]
    normalizer = ScoreNormalizer(cohort, top_k=20)
    hub_stats = normalizer.side_statistics(hub[None])
    loner_stats = normalizer.side_statistics(loner[None])
    assert hub_stats[0][0] > loner_stats[0][0]  # the hub scores high against the cohort
    raw = np.array([0.5])
    assert normalizer.normalize(raw, hub_stats, hub_stats)[0] < normalizer.normalize(raw, loner_stats, loner_stats)[0]


def test_speaker_means_are_unit_rows_in_sorted_order():
    rows, names = speaker_means(_unit([[3, 4], [4, 3], [0, 1]]), ["z", "z", "a"])
    assert names == ["a", "z"]
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(rows[1], _unit([[7, 7]])[0], atol=1e-6)


def test_cohort_file_round_trip_and_refusal_of_other_weights(tmp_path):
    model = tmp_path / "embedding.keras"
    model.write_bytes(b"weights one")
    normalizer = ScoreNormalizer(_unit(np.random.default_rng(2).standard_normal((5, 4))), top_k=3,
                                 speakers=tuple("abcde"))
    normalizer.save(tmp_path / COHORT_FILE, model)
    loaded = ScoreNormalizer.load(tmp_path / COHORT_FILE, model)
    assert loaded.top_k == 3 and loaded.speakers == tuple("abcde")
    np.testing.assert_allclose(loaded.cohort, normalizer.cohort, atol=1e-3)  # stored as float16
    model.write_bytes(b"weights two")
    with pytest.raises(CohortError, match="other weights"):
        ScoreNormalizer.load(tmp_path / COHORT_FILE, model)
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(CohortError, match="not a score cohort"):
        ScoreNormalizer.load(tmp_path / "junk.npz", model)
    assert model_fingerprint(model) != model_fingerprint(tmp_path / COHORT_FILE)


def test_a_cohort_needs_two_speakers():
    with pytest.raises(CohortError, match="at least 2"):
        ScoreNormalizer(np.ones((1, 4), np.float32))


def test_cohort_files_leave_out_the_held_out_speakers_and_cap_per_speaker(tmp_path):
    for speaker, count in (("ann", 5), ("bob", 2), ("held", 4)):
        (tmp_path / speaker).mkdir()
        for k in range(count):
            (tmp_path / speaker / f"{speaker}_{k}.wav").write_bytes(b"")
    chosen = cohort_files([tmp_path], exclude_speakers=["held"], per_speaker=3, seed=0)
    speakers = [speaker for _, speaker in chosen]
    assert speakers.count("ann") == 3 and speakers.count("bob") == 2 and "held" not in speakers
    assert chosen == cohort_files([tmp_path], exclude_speakers=["held"], per_speaker=3, seed=0)


def test_export_model_writes_a_cohort_tied_to_the_exported_weights(tmp_path):
    from deep_speaker.checkpoints import pretrained_model
    from deep_speaker.commands import export_model

    demo = Path(__file__).resolve().parents[1] / "deep-speaker-data" / "demo" / "VCTK-Corpus" / "wav48"
    code = export_model.main(["--checkpoint", str(pretrained_model()), "--output_dir",
                              str(tmp_path), "--no_saved_model", "--cohort_audio_dir", str(demo),
                              "--cohort_exclude", "p225,p226", "--cohort_per_speaker", "2"])
    assert code == 0
    loaded = ScoreNormalizer.load(tmp_path / COHORT_FILE, tmp_path / "embedding.keras")
    expected = sorted(folder.name for folder in demo.iterdir() if folder.name not in ("p225", "p226"))
    assert list(loaded.speakers) == expected
    np.testing.assert_allclose(np.linalg.norm(loaded.cohort, axis=1), 1, atol=2e-3)

    # evaluate.py scores with the cohort by default, reports the raw cosine beside it, and
    # --no_score_norm gives exactly that raw report.
    import json

    from deep_speaker.commands import evaluate

    model = str(tmp_path / "embedding.keras")
    assert evaluate.main(["--audio_dir", str(demo), "--output_dir", str(tmp_path / "normed"), "--checkpoint", model]) == 0
    assert evaluate.main(["--audio_dir", str(demo), "--output_dir", str(tmp_path / "raw"), "--checkpoint", model,
                          "--no_score_norm"]) == 0
    normed = json.loads((tmp_path / "normed" / "metrics.json").read_text())
    raw = json.loads((tmp_path / "raw" / "metrics.json").read_text())
    assert normed["score"] == "as-norm" and raw["score"] == "cosine" and "raw_cosine" not in raw
    assert normed["raw_cosine"]["eer"] == raw["eer"] and normed["raw_cosine"]["min_dcf_0.01"] == raw["min_dcf_0.01"]
    header, first_trial = (tmp_path / "normed" / "scores.tsv").read_text().splitlines()[:2]
    assert header.split("\t")[:3] == ["label", "score", "cosine"] and first_trial.split("\t")[1] != first_trial.split("\t")[2]
