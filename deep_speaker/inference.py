"""Fast whole-utterance inference for the ResCNN: batch norm folded into the
convolutions, run as plain TensorFlow ops in eager mode.

Why: a scoring command embeds a handful of utterances once, each of its own
length. Calling the Keras model through a `tf.function` first traces it (about
0.4 s of Python at any width) and then optimises the graph; eager Keras calls
avoid that but pay Keras's per-layer Python overhead on every call. The folded
forward pass below has neither: about 130 TensorFlow ops per utterance, each
dispatched straight to its kernel, so a command's cost stays close to the bare
model compute (see `bench/score.py`; the scoring commands also choose
TensorFlow's own convolutions over oneDNN's, `config.SCORING_ENVIRONMENT`).

In inference mode batch norm is the affine map gamma * (x - mean) / sqrt(var +
eps) + beta, so conv followed by batch norm equals one convolution with kernel
W * s and bias beta - mean * s, s = gamma / sqrt(var + eps). The result matches
the Keras model to float rounding (tests/test_inference.py checks 1e-5).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf  # (deep_speaker.model imports Keras, hence TensorFlow, anyway)

from deep_speaker.model import (AFFINE_LAYER, POOLING_LAYERS, RES_BLOCKS_PER_STAGE, STAGE_FILTERS,
                                STATISTICS_VARIANCE_FLOOR)


@dataclass(frozen=True)
class FoldedConv:
    kernel: object  # tf.Tensor (kh, kw, in, out), batch-norm scale folded in
    bias: object  # tf.Tensor (out,)
    strides: tuple[int, int]


class FoldedResCNN:
    """The embedding function of a trained ResCNN: (batch, frames, num_fbanks, 1)
    float32 -> (batch, embedding_dim) unit rows, equal to `model(x, training=False)`."""

    def __init__(self, stages, affine_kernel, affine_bias, clip_max: float, pooling: str = "average"):
        self.stages = stages  # [(FoldedConv, [(FoldedConv, FoldedConv), ...]), ...]
        self.pooling = pooling  # config.pooling: "average" or "statistics"
        self.affine_kernel = affine_kernel
        self.affine_bias = affine_bias
        self.clip_max = clip_max

    def __call__(self, batch):
        x = tf.convert_to_tensor(batch, tf.float32)
        for first, blocks in self.stages:
            x = self._relu(self._conv(x, first))
            for conv1, conv2 in blocks:
                shortcut = x
                x = self._relu(self._conv(x, conv1))
                x = self._relu(self._conv(x, conv2) + shortcut)
        # As the model's fold_frequency + pooling: (b, t, f, c) -> (b, t, f * c) -> statistics over t.
        x = tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], x.shape[2] * x.shape[3]])
        pooled = mean = tf.reduce_mean(x, axis=1)
        if self.pooling == "statistics":
            variance = tf.reduce_mean(tf.square(x - mean[:, None, :]), axis=1)
            deviation = variance / tf.sqrt(variance + STATISTICS_VARIANCE_FLOOR)  # as model.statistics_pooling
            pooled = tf.concat([mean, deviation], axis=-1)
        x = tf.matmul(pooled, self.affine_kernel) + self.affine_bias
        return tf.math.l2_normalize(x, axis=-1, epsilon=1e-12)

    def _conv(self, x, conv: FoldedConv):
        return tf.nn.bias_add(tf.nn.conv2d(x, conv.kernel, strides=conv.strides, padding="SAME"), conv.bias)

    def _relu(self, x):
        return tf.clip_by_value(x, 0.0, self.clip_max)


def _folded_conv(model, name: str) -> FoldedConv:
    conv, norm = model.get_layer(name), model.get_layer(f"{name}_bn")
    if conv.padding != "same" or conv.use_bias or conv.data_format != "channels_last" or conv.dilation_rate != (1, 1):
        raise ValueError(f"layer {name} is not the ResCNN's plain 'same' convolution")
    mean = np.asarray(norm.moving_mean.numpy(), np.float64)
    variance = np.asarray(norm.moving_variance.numpy(), np.float64)
    gamma = np.asarray(norm.gamma.numpy(), np.float64) if norm.scale else np.ones_like(mean)
    beta = np.asarray(norm.beta.numpy(), np.float64) if norm.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + norm.epsilon)
    # One TensorFlow multiply per kernel: no numpy copies of the (up to 24 M) weights.
    kernel = tf.convert_to_tensor(conv.kernel) * tf.constant(scale.astype(np.float32))
    return FoldedConv(kernel, tf.constant((beta - mean * scale).astype(np.float32)), tuple(conv.strides))


def fold_rescnn(model, clip_max: float) -> FoldedResCNN | None:
    """The folded forward pass of a deep-speaker ResCNN embedding model, or None
    when the model is not laid out as `model.build_rescnn` builds it (then
    callers use the Keras model itself)."""
    # The same layers, no more: anything added to the architecture makes this fall back.
    kinds = [type(layer).__name__ for layer in model.layers]
    num_convs = len(STAGE_FILTERS) * (1 + 2 * RES_BLOCKS_PER_STAGE)
    expected = {"Conv2D": num_convs, "BatchNormalization": num_convs, "Add": len(STAGE_FILTERS) * RES_BLOCKS_PER_STAGE,
                "Dense": 1}
    if any(kinds.count(kind) != count for kind, count in expected.items()):
        return None
    names = {layer.name for layer in model.layers}
    poolings = [pooling for pooling, name in POOLING_LAYERS.items() if name in names]
    if len(poolings) != 1:
        return None
    try:
        stages = []
        for stage in range(1, len(STAGE_FILTERS) + 1):
            blocks = [(_folded_conv(model, f"res{stage}{letter}_conv1"), _folded_conv(model, f"res{stage}{letter}_conv2"))
                      for letter in "abc"[:RES_BLOCKS_PER_STAGE]]
            stages.append((_folded_conv(model, f"conv{stage}"), blocks))
        affine = model.get_layer(AFFINE_LAYER)
        relu = model.get_layer("conv1_relu")
    except (ValueError, AttributeError):
        return None
    if getattr(relu, "negative_slope", 0.0) or getattr(relu, "threshold", 0.0) or relu.max_value is None:
        return None
    if float(relu.max_value) != float(clip_max):
        return None
    return FoldedResCNN(stages, tf.convert_to_tensor(affine.kernel), tf.convert_to_tensor(affine.bias), clip_max,
                        poolings[0])
