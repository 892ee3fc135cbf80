"""Smoke tests for deep_speaker.plots: every function writes a real, non-blank PNG."""
import matplotlib.image as mpimg
import numpy as np
import pytest

from deep_speaker import metrics, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(str(path))
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    # A blank (single-colour) image has zero variance; a real plot has lines, text, colour.
    assert float(np.var(pixels[..., :3])) > 1e-3
    # The atomic write leaves no temp file behind.
    assert sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")) == []


def _speaker_embeddings(num_speakers, per_speaker, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_speakers, dim))
    embeddings = np.repeat(centres, per_speaker, axis=0) + 0.3 * rng.normal(size=(num_speakers * per_speaker, dim))
    speaker_ids = np.repeat([f"p{225 + k}" for k in range(num_speakers)], per_speaker)
    return embeddings.astype(np.float32), speaker_ids


@pytest.fixture
def trials():
    embeddings, speaker_ids = _speaker_embeddings(6, 5)
    i_idx, j_idx, labels = metrics.all_pairs_trials(speaker_ids)
    return metrics.score_trials(embeddings, i_idx, j_idx), labels


def test_plot_det_curve(tmp_path, trials):
    scores, labels = trials
    fpr, fnr, _ = metrics.det_curve(scores, labels)
    eer, _ = metrics.equal_error_rate(scores, labels)
    path = plots.plot_det_curve(fpr, fnr, tmp_path / "det.png", eer=eer, label="test system")
    assert path == tmp_path / "det.png"
    assert_valid_png(path)


def test_plot_det_curve_poor_system_without_eer(tmp_path):
    rng = np.random.default_rng(0)
    fpr, fnr, _ = metrics.det_curve(rng.normal(size=200), rng.integers(0, 2, size=200))
    assert_valid_png(plots.plot_det_curve(fpr, fnr, tmp_path / "sub" / "det.png"))
    assert_valid_png(plots.plot_det_curve(fpr, fnr, tmp_path / "det_eer.png", eer=0.48))


def test_plot_score_histograms(tmp_path, trials):
    scores, labels = trials
    _, threshold = metrics.equal_error_rate(scores, labels)
    assert_valid_png(plots.plot_score_histograms(scores, labels, tmp_path / "hist.png", threshold=threshold))


def test_plot_similarity_matrix(tmp_path):
    embeddings, speaker_ids = _speaker_embeddings(5, 4)
    assert_valid_png(plots.plot_similarity_matrix(embeddings, speaker_ids, tmp_path / "sim.png"))


def test_plot_similarity_matrix_many_speakers_thins_labels(tmp_path):
    embeddings, speaker_ids = _speaker_embeddings(45, 1, dim=8)
    assert_valid_png(plots.plot_similarity_matrix(embeddings, speaker_ids, tmp_path / "sim_many.png"))


@pytest.mark.parametrize("num_speakers, per_speaker", [(4, 5), (25, 1), (5, 8)])  # PCA, PCA/no legend, t-SNE
def test_plot_embeddings_2d(tmp_path, num_speakers, per_speaker):
    embeddings, speaker_ids = _speaker_embeddings(num_speakers, per_speaker)
    assert_valid_png(plots.plot_embeddings_2d(embeddings, speaker_ids, tmp_path / "emb.png"))


def test_plot_training_curves(tmp_path):
    nan = float("nan")
    history = {
        "loss": [1.0, 0.8, 0.6, 0.5, 0.45],
        "test_loss": [nan, 0.9, nan, 0.7, nan],
        "accuracy": [0.5, 0.6, 0.7, 0.75, 0.8],
        "test_accuracy": [nan, 0.55, nan, 0.7, nan],
        "test_eer": [nan, 0.3, nan, 0.2, nan],
    }
    assert_valid_png(plots.plot_training_curves(history, tmp_path / "curves.png"))


def test_plot_training_curves_subset_and_all_nan(tmp_path):
    history = {"loss": [0.3, 0.2, 0.1], "test_eer": [float("nan")] * 3}
    assert_valid_png(plots.plot_training_curves(history, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="empty"):
        plots.plot_training_curves({}, tmp_path / "none.png")


def test_failed_save_leaves_no_files(tmp_path, monkeypatch):
    import matplotlib.figure
    import matplotlib.pyplot as plt

    def broken_savefig(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    open_before = len(plt.get_fignums())
    with pytest.raises(OSError, match="disk full"):
        plots.plot_training_curves({"loss": [1.0, 0.5]}, tmp_path / "curves.png")
    assert list(tmp_path.iterdir()) == []
    assert len(plt.get_fignums()) == open_before  # the figure was still closed
