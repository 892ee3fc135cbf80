"""The folded eager forward pass used for scoring (deep_speaker.inference) equals the Keras model."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from deep_speaker.config import Config
from deep_speaker.inference import fold_rescnn
from deep_speaker.model import build_rescnn


def trained_looking(config: Config, seed: int) -> keras.Model:
    """A ResCNN whose batch-norm statistics and affine parameters are far from
    their initial values, so folding them wrongly cannot go unnoticed."""
    keras.utils.set_random_seed(seed)
    model = build_rescnn(config)
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "moving_variance" in weight.path:
            weight.assign(rng.uniform(0.3, 3.0, weight.shape).astype(np.float32))
        elif any(part in weight.path for part in ("moving_mean", "beta", "bias")):
            weight.assign(rng.normal(0.0, 0.5, weight.shape).astype(np.float32))
        elif "gamma" in weight.path:
            weight.assign(rng.uniform(0.5, 2.0, weight.shape).astype(np.float32))
    return model


def frames(count: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, length, 64, 1)).astype(np.float32)


@pytest.mark.parametrize("width, clip, pooling", [(0.125, 20.0, "average"), (0.3, 20.0, "average"),
                                                  (0.125, 2.0, "average"), (0.3, 20.0, "statistics")])
def test_folded_forward_equals_keras_model(width, clip, pooling):
    config = Config(width=width, clipped_relu_max=clip, pooling=pooling)
    model = trained_looking(config, seed=3)
    folded = fold_rescnn(model, config.clipped_relu_max)
    assert folded is not None and folded.pooling == pooling
    for count, length in [(1, 17), (3, 101), (2, 333)]:
        x = frames(count, length, seed=length)
        expected = model(x, training=False).numpy()
        got = folded(x).numpy()
        assert got.shape == (count, config.embedding_dim)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # The batch-norm statistics matter: the model in training mode (batch statistics) gives other embeddings.
    x = frames(3, 101)
    assert np.abs(model(x, training=True).numpy() - folded(x).numpy()).max() > 1e-2


def test_packaged_model_folds_exactly(repo_root):
    from deep_speaker.checkpoints import resolve_model
    from deep_speaker.model import load_checkpoint

    resolved = resolve_model(None, repo_root / "no-such-checkpoints")
    model = load_checkpoint(resolved.path)
    folded = fold_rescnn(model, resolved.config.clipped_relu_max)
    assert folded is not None
    x = frames(1, 480, seed=9)
    np.testing.assert_allclose(folded(x).numpy(), model(x, training=False).numpy(), atol=1e-5)


def test_other_architectures_are_not_folded():
    config = Config(width=0.125)
    model = build_rescnn(config)
    # Another clipping value than the layers carry.
    assert fold_rescnn(model, 5.0) is None
    # One more layer than the ResCNN has: the Keras model must be used instead.
    extra = layers.Dense(config.embedding_dim, name="extra")(model.get_layer("affine").output)
    widened = keras.Model(model.input, layers.UnitNormalization(name="embedding2")(extra))
    assert fold_rescnn(widened, config.clipped_relu_max) is None


def test_embedder_uses_folded_path_with_model_values(tmp_path):
    from deep_speaker.checkpoints import resolve_model
    from deep_speaker.scoring import Embedder

    config = Config(width=0.125)
    model = trained_looking(config, seed=5)
    model.save(tmp_path / "best.keras")
    config.save(tmp_path / "config.json")
    embedder = Embedder(resolve_model(tmp_path / "best.keras"))
    assert type(embedder._embed_one).__name__ == "FoldedResCNN"
    utterances = [frames(1, n, seed=n)[0, :, :, 0] for n in (40, 257)]
    got = embedder.embed_features(utterances)
    expected = np.concatenate([model(u[None, :, :, None], training=False).numpy() for u in utterances])
    np.testing.assert_allclose(got, expected, atol=1e-5)
