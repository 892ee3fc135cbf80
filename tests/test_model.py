"""The ResCNN, its heads, the triplet loss, weight hand-over and .keras files (deep_speaker.model)."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from deep_speaker.config import Config
from deep_speaker.model import (EMBEDDING_LAYER, STATISTICS_VARIANCE_FLOOR, CosineDense, am_margin_at, attach_head,
                                build_embedding_model, copy_weights_by_name, embedding_part, speaker_logits,
                                statistics_pooling, triplet_loss)

SMALL = Config(width=0.125)


def random_windows(count: int, frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, frames, SMALL.num_fbanks, 1)).astype(np.float32)


def randomize(model: keras.Model, seed: int) -> None:
    """Non-default values in every weight (batch-norm variances stay positive),
    so a test cannot pass on freshly initialised or zero weights."""
    rng = np.random.default_rng(seed)
    values = []
    for weight in model.weights:
        scale = 0.3 if len(weight.shape) > 1 else 0.1
        value = rng.normal(0.0, scale, weight.shape)
        if "variance" in weight.path:
            value = 1.0 + np.abs(value)
        values.append(value.astype(np.float32))
    model.set_weights(values)


def unit_rows(rng, count: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((count, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(1)
    return build_embedding_model(SMALL)


@pytest.mark.parametrize("frames", [16, 57, 160, 301])
def test_embeddings_are_unit_vectors_for_any_number_of_frames(small_model, frames):
    embeddings = small_model.predict(random_windows(3, frames, seed=frames), verbose=0)
    assert embeddings.shape == (3, SMALL.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(embeddings[0], embeddings[1])  # different inputs, different embeddings


def test_batch_norm_momentum_comes_from_the_config():
    layers = [layer for layer in build_embedding_model(Config(width=0.125, batch_norm_momentum=0.8)).layers
              if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(layers) == 4 * (1 + 2 * 3) and {layer.momentum for layer in layers} == {0.8}
    assert Config().batch_norm_momentum == 0.9


def test_full_width_model_has_the_papers_24_million_parameters():
    model = build_embedding_model(Config(width=1.0))
    assert 23.5e6 <= model.count_params() <= 24.5e6, model.count_params()
    assert model.output_shape == (None, 512)


def test_statistics_pooling_is_the_mean_and_standard_deviation_over_time(tmp_path):
    inputs = keras.Input((None, 6))
    pooling = keras.Model(inputs, statistics_pooling(inputs))
    x = np.random.default_rng(5).normal(2.0, 3.0, (2, 37, 6)).astype(np.float32)
    x[1, :, 4] = 1.5  # a constant channel: deviation 0
    pooled = pooling(x).numpy()
    variance = x.var(axis=1)
    np.testing.assert_allclose(pooled[:, :6], x.mean(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled[:, 6:], variance / np.sqrt(variance + STATISTICS_VARIANCE_FLOOR), rtol=1e-4)
    np.testing.assert_allclose(pooled[:, 6:], x.std(axis=1), rtol=1e-4, atol=1e-5)
    assert pooled[1, 6 + 4] == 0.0
    # Keras's own layers only: the saved model loads in safe mode, with no class to register.
    pooling.save(tmp_path / "pooling.keras")
    assert "deep_speaker" not in (tmp_path / "pooling.keras").read_bytes().decode("latin-1")
    np.testing.assert_array_equal(keras.models.load_model(tmp_path / "pooling.keras", safe_mode=True)(x), pooled)


def test_statistics_pooling_doubles_the_affine_input_and_is_the_only_change():
    average = build_embedding_model(SMALL)
    statistics = build_embedding_model(SMALL.override(pooling="statistics"))
    pooled_width = 4 * 64  # four frequency bins x 64 filters (512 x 0.125)
    assert statistics.get_layer("affine").kernel.shape == (2 * pooled_width, SMALL.embedding_dim)
    assert average.get_layer("affine").kernel.shape == (pooled_width, SMALL.embedding_dim)
    assert statistics.count_params() - average.count_params() == pooled_width * SMALL.embedding_dim
    assert Config().pooling == "average"  # the paper's temporal average stays the default


def numpy_triplet_loss(anchor, positive, negative, margin):
    return np.maximum(np.sum(anchor * negative, 1) - np.sum(anchor * positive, 1) + margin, 0.0)


def test_triplet_loss_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    anchor, positive, negative = (unit_rows(rng, 64, 512) for _ in range(3))
    # Random 512-d vectors are nearly orthogonal: bring some negatives and positives
    # close so both sides of the hinge are exercised.
    positive[:20] = unit_rows(rng, 20, 512) * 0.2 + anchor[:20]
    negative[20:40] = unit_rows(rng, 20, 512) * 0.2 + anchor[20:40]
    positive, negative = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (positive, negative))
    for margin in (0.1, 0.5):
        expected = numpy_triplet_loss(anchor, positive, negative, margin)
        assert 0 < np.count_nonzero(expected) < len(expected)
        actual = keras.ops.convert_to_numpy(triplet_loss(anchor, positive, negative, margin))
        np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_triplet_loss_is_zero_when_every_triplet_is_satisfied_and_full_when_none_is():
    anchor = unit_rows(np.random.default_rng(1), 16, 512)
    satisfied = keras.ops.convert_to_numpy(triplet_loss(anchor, anchor, -anchor, 0.1))
    np.testing.assert_array_equal(satisfied, np.zeros(16, np.float32))
    # cos(a, n) - cos(a, p) = 1 - (-1): every triplet violates the margin by 2 + margin.
    violating = keras.ops.convert_to_numpy(triplet_loss(anchor, -anchor, anchor, 0.1))
    np.testing.assert_allclose(violating, np.full(16, 2.1), atol=1e-5)
    # Exactly at the margin (cos(a, p) = 1, cos(a, n) = 0.5, margin 0.5): no loss.
    basis = np.zeros((4, 512), np.float32)
    basis[:, 0] = 1.0
    negative = np.zeros_like(basis)
    negative[:, 0], negative[:, 1] = 0.5, np.sqrt(0.75)
    at_margin = keras.ops.convert_to_numpy(triplet_loss(basis, basis, negative, 0.5))
    np.testing.assert_allclose(at_margin, 0.0, atol=1e-6)


def test_weights_pass_from_the_softmax_model_to_the_embedding_model_by_name():
    keras.utils.set_random_seed(2)
    softmax_model = attach_head(build_embedding_model(SMALL), 5, SMALL)
    randomize(softmax_model, seed=2)
    keras.utils.set_random_seed(3)
    embedding_model = build_embedding_model(SMALL)
    windows = random_windows(4, 80, seed=3)
    expected, _ = softmax_model.predict(windows, verbose=0)
    assert not np.allclose(embedding_model.predict(windows, verbose=0), expected, atol=1e-3)

    copied = copy_weights_by_name(softmax_model, embedding_model)

    assert copied == sum(1 for layer in embedding_model.layers if layer.weights)
    np.testing.assert_array_equal(embedding_model.predict(windows, verbose=0), expected)
    # embedding_part shares the softmax model's own weights.
    np.testing.assert_array_equal(embedding_part(softmax_model).predict(windows, verbose=0), expected)
    assert embedding_part(softmax_model).get_layer(EMBEDDING_LAYER) is softmax_model.get_layer(EMBEDDING_LAYER)


@pytest.mark.parametrize("head, pooling", [("softmax", "average"), ("amsoftmax", "average"),
                                           ("amsoftmax", "statistics")])
def test_keras_file_round_trip_in_safe_mode(tmp_path, head, pooling):
    config = SMALL.override(head=head, pooling=pooling)
    keras.utils.set_random_seed(4)
    model = attach_head(build_embedding_model(config), 7, config)
    randomize(model, seed=4)
    windows = random_windows(3, 70, seed=4)
    embeddings, scores = model.predict(windows, verbose=0)

    path = tmp_path / f"{head}-{pooling}.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False, safe_mode=True)

    loaded_embeddings, loaded_scores = loaded.predict(windows, verbose=0)
    np.testing.assert_allclose(loaded_embeddings, embeddings, atol=1e-6)
    np.testing.assert_allclose(loaded_scores, scores, atol=1e-6)
    assert loaded_scores.shape == (3, 7)
    head_layer = loaded.get_layer("speaker_head")
    if head == "amsoftmax":
        assert isinstance(head_layer, CosineDense) and head_layer.units == 7
        assert np.all(np.abs(loaded_scores) <= 1 + 1e-6)  # cosines
    else:
        assert isinstance(head_layer, keras.layers.Dense)


def test_am_softmax_logits_subtract_the_margin_from_the_target_only_while_training():
    config = SMALL.override(head="amsoftmax", am_scale=30.0, am_margin=0.2)
    cosines = np.array([[0.5, 0.1, -0.3], [0.2, 0.9, 0.0]], np.float32)
    labels = np.array([0, 2], np.int32)
    training = keras.ops.convert_to_numpy(speaker_logits(cosines, labels, config, training=True))
    np.testing.assert_allclose(training, 30.0 * np.array([[0.3, 0.1, -0.3], [0.2, 0.9, -0.2]]), atol=1e-5)
    inference = keras.ops.convert_to_numpy(speaker_logits(cosines, labels, config, training=False))
    np.testing.assert_allclose(inference, 30.0 * cosines, atol=1e-5)
    plain = speaker_logits(cosines, labels, SMALL, training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(plain), cosines)


def test_unknown_model_or_head_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'resnet9000'.*\['rescnn'\]"):
        build_embedding_model(SMALL.override(model_name="resnet9000"))
    with pytest.raises(ValueError, match="unknown head 'arcface'.*softmax or amsoftmax"):
        attach_head(build_embedding_model(SMALL), 3, SMALL.override(head="arcface"))
    with pytest.raises(ValueError, match="width must be > 0"):
        build_embedding_model(Config(width=0.0))


def test_synchronized_batch_norm_changes_no_weight_only_the_statistics_used():
    keras.utils.set_random_seed(5)
    plain = build_embedding_model(SMALL)
    keras.utils.set_random_seed(5)
    synchronized = build_embedding_model(SMALL, synchronized_batch_norm=True)
    norms = [layer for layer in synchronized.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 28 and all(layer.synchronized for layer in norms)
    assert not any(layer.synchronized for layer in plain.layers if isinstance(layer, keras.layers.BatchNormalization))
    # Same weights, same inference: checkpoints pass between the two freely.
    randomize(plain, seed=5)
    synchronized.set_weights(plain.get_weights())
    windows = random_windows(2, 64, seed=5)
    np.testing.assert_allclose(synchronized.predict(windows, verbose=0), plain.predict(windows, verbose=0),
                               atol=1e-6)


def test_am_margin_override_and_warm_up_schedule():
    config = SMALL.override(head="amsoftmax", am_scale=10.0, am_margin=0.2, am_margin_warmup_epochs=2,
                            steps_per_epoch=5)
    cosines = np.array([[0.5, 0.1]], np.float32)
    labels = np.array([0], np.int32)
    halfway = am_margin_at(5, config)  # one epoch of two: half the margin
    logits = keras.ops.convert_to_numpy(speaker_logits(cosines, labels, config, training=True, margin=halfway))
    np.testing.assert_allclose(logits, [[10.0 * (0.5 - 0.1), 1.0]], atol=1e-5)
    assert float(am_margin_at(0, config)) == 0.0
    assert float(am_margin_at(1000, config)) == pytest.approx(0.2)
    assert am_margin_at(0, config.override(am_margin_warmup_epochs=0)) == 0.2  # no warm-up: full margin at once
