"""The paper's ResCNN (Deep Speaker, arXiv 1705.02304, table 2), its softmax
heads, and the cosine triplet loss.

Shapes: input (batch, num_frames, num_fbanks, 1) with any num_frames >= 16;
embedding (batch, embedding_dim), unit L2 norm. Layer names are stable so the
embedding layers pass from the softmax model to the triplet model by name.
"""
from __future__ import annotations

import keras
from keras import layers

from deep_speaker.checkpoints import CheckpointError
from deep_speaker.config import Config

EMBEDDING_LAYER = "embedding"  # the unit-norm output
AFFINE_LAYER = "affine"  # the 512-d affine output before normalisation
HEAD_LAYER = "speaker_head"
STAGE_FILTERS = (64, 128, 256, 512)  # paper: conv64-s ... conv512-s
RES_BLOCKS_PER_STAGE = 3
POOLING_LAYERS = {"average": "temporal_average", "statistics": "temporal_statistics"}  # config.pooling -> layer
STATISTICS_VARIANCE_FLOOR = 1e-5


@keras.saving.register_keras_serializable(package="deep_speaker")
class CosineDense(keras.layers.Layer):
    """Cosine of the angle between the input and each class weight vector:
    the AM-softmax head (Wang et al. 2018). Output (batch, units) in [-1, 1]."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units),
                                      initializer="glorot_uniform")

    def call(self, inputs):
        x = keras.ops.normalize(inputs, axis=-1)
        w = keras.ops.normalize(self.kernel, axis=0)
        return keras.ops.matmul(x, w)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def statistics_pooling(x, name: str = "temporal_statistics"):
    """Mean and standard deviation over time, concatenated: (batch, time, d) ->
    (batch, 2 d). The statistics pooling of x-vectors (Snyder et al. 2018) and of
    WeSpeaker's ResNets; the paper's temporal average keeps the mean only.

    Built from Keras's own layers, so a saved model loads with plain Keras (no
    custom class to register). The deviation is var / sqrt(var + floor), taken as
    mean((x - mean) * layer_norm_over_time(x)): sqrt(var) to within the floor,
    and 0 with a finite gradient on a constant channel, where sqrt has none.
    """
    mean = layers.GlobalAveragePooling1D(keepdims=True, name=f"{name}_mean")(x)
    centred = layers.Subtract(name=f"{name}_centred")([x, mean])
    scaled = layers.LayerNormalization(axis=1, center=False, scale=False, epsilon=STATISTICS_VARIANCE_FLOOR,
                                       name=f"{name}_scaled")(x)
    products = layers.Multiply(name=f"{name}_products")([centred, scaled])
    deviation = layers.GlobalAveragePooling1D(name=f"{name}_deviation")(products)
    average = layers.GlobalAveragePooling1D(name=f"{name}_average")(x)
    return layers.Concatenate(name=name)([average, deviation])


def _conv(x, filters, kernel, strides, name, config, synchronized):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      kernel_initializer="glorot_uniform",
                      kernel_regularizer=keras.regularizers.L2(config.weight_decay), name=name)(x)
    return layers.BatchNormalization(momentum=config.batch_norm_momentum, synchronized=synchronized,
                                     name=f"{name}_bn")(x)


def _clipped_relu(x, name, config):
    return layers.ReLU(max_value=config.clipped_relu_max, name=name)(x)


def _residual_block(x, filters, name, config, synchronized):
    shortcut = x
    x = _conv(x, filters, 3, 1, f"{name}_conv1", config, synchronized)
    x = _clipped_relu(x, f"{name}_relu1", config)
    x = _conv(x, filters, 3, 1, f"{name}_conv2", config, synchronized)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return _clipped_relu(x, f"{name}_relu2", config)


def stage_filters(width: float) -> list[int]:
    """Filter counts of the four stages at a width multiplier.

    >>> stage_filters(1.0), stage_filters(0.125)
    ([64, 128, 256, 512], [8, 16, 32, 64])
    """
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return [max(1, int(round(f * width))) for f in STAGE_FILTERS]


def build_rescnn(config: Config, synchronized_batch_norm: bool = False) -> keras.Model:
    """The ResCNN embedding model: (batch, frames, num_fbanks, 1) -> (batch, embedding_dim).

    synchronized_batch_norm: batch statistics over all replicas of a
    distribution strategy, so every replica (and worker) keeps the same moving
    statistics; training uses it when there is more than one replica.

    >>> import numpy as np
    >>> model = build_rescnn(Config(width=0.125))
    >>> model.predict(np.zeros((2, 100, 64, 1), "float32"), verbose=0).shape
    (2, 512)
    """
    inputs = keras.Input(shape=(None, config.num_fbanks, 1), name="fbank")
    x = inputs
    for stage, filters in enumerate(stage_filters(config.width), start=1):
        x = _conv(x, filters, 5, 2, f"conv{stage}", config, synchronized_batch_norm)
        x = _clipped_relu(x, f"conv{stage}_relu", config)
        for block in range(1, RES_BLOCKS_PER_STAGE + 1):
            x = _residual_block(x, filters, f"res{stage}{'abc'[block - 1]}", config, synchronized_batch_norm)
    # Four stride-2 stages leave num_fbanks/16 frequency bins: fold them into channels.
    frequency_bins = -(-config.num_fbanks // 16)
    x = layers.Reshape((-1, frequency_bins * stage_filters(config.width)[-1]), name="fold_frequency")(x)
    if config.pooling == "statistics":
        x = statistics_pooling(x, POOLING_LAYERS["statistics"])
    else:
        x = layers.GlobalAveragePooling1D(name=POOLING_LAYERS["average"])(x)
    x = layers.Dense(config.embedding_dim, kernel_regularizer=keras.regularizers.L2(config.weight_decay),
                     name=AFFINE_LAYER)(x)
    # float32 even under mixed precision: a float16 sum of 512 squares overflows.
    outputs = layers.UnitNormalization(axis=-1, name=EMBEDDING_LAYER, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="rescnn")


MODEL_BUILDERS = {"rescnn": build_rescnn}


def build_embedding_model(config: Config, synchronized_batch_norm: bool = False) -> keras.Model:
    try:
        builder = MODEL_BUILDERS[config.model_name]
    except KeyError:
        raise ValueError(f"unknown model {config.model_name!r}; choose one of {sorted(MODEL_BUILDERS)}") from None
    return builder(config, synchronized_batch_norm=synchronized_batch_norm)


def attach_head(embedding_model: keras.Model, num_speakers: int, config: Config) -> keras.Model:
    """The training model: embedding layers plus a speaker head.

    head "softmax" (the seed): dense logits on the affine output.
    head "amsoftmax": cosines to class centres on the unit embedding; the
    margin and scale are applied in the loss (see `speaker_logits`).
    """
    if config.head == "softmax":
        features = embedding_model.get_layer(AFFINE_LAYER).output
        head = layers.Dense(num_speakers, kernel_regularizer=keras.regularizers.L2(config.weight_decay),
                            name=HEAD_LAYER, dtype="float32")  # logits in float32 under mixed precision
    elif config.head == "amsoftmax":
        features = embedding_model.get_layer(EMBEDDING_LAYER).output
        head = CosineDense(num_speakers, name=HEAD_LAYER, dtype="float32")
    else:
        raise ValueError(f"unknown head {config.head!r}; choose softmax or amsoftmax")
    return keras.Model(embedding_model.input, [embedding_model.output, head(features)], name="rescnn_with_head")


def embedding_part(model: keras.Model) -> keras.Model:
    """The embedding model inside a training model (shares its weights)."""
    return keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output, name="rescnn")


def speaker_logits(head_output, labels, config: Config, training: bool, margin=None):
    """Logits for the cross-entropy: plain for softmax; for AM-softmax
    s * (cos - m * onehot(label)) while training, s * cos otherwise.
    `margin` (a float or scalar tensor) replaces config.am_margin, for its warm-up."""
    if config.head != "amsoftmax":
        return head_output
    if training:
        onehot = keras.ops.one_hot(labels, keras.ops.shape(head_output)[-1])
        head_output = head_output - (config.am_margin if margin is None else margin) * onehot
    return config.am_scale * head_output


def am_margin_at(step, config: Config):
    """AM-softmax margin at training step `step` (0-based, a number or a scalar
    tensor such as the optimizer's step count, so a resumed run agrees): grows
    linearly from 0 to config.am_margin over config.am_margin_warmup_epochs.

    >>> cfg = Config(am_margin=0.2, am_margin_warmup_epochs=2, steps_per_epoch=10)
    >>> [round(float(am_margin_at(step, cfg)), 3) for step in (0, 5, 10, 20, 30)]
    [0.0, 0.05, 0.1, 0.2, 0.2]
    """
    warmup_steps = config.am_margin_warmup_epochs * config.steps_per_epoch
    if warmup_steps == 0:
        return config.am_margin
    progress = keras.ops.cast(step, "float32") / float(warmup_steps)
    return config.am_margin * keras.ops.minimum(progress, 1.0)


def triplet_loss(anchor, positive, negative, margin: float):
    """Per-triplet loss max(0, cos(a, n) - cos(a, p) + margin) on unit embeddings.

    >>> import numpy as np
    >>> a = np.array([[1., 0.]]); float(triplet_loss(a, a, -a, 0.1)[0])
    0.0
    """
    similarity_positive = keras.ops.sum(anchor * positive, axis=-1)
    similarity_negative = keras.ops.sum(anchor * negative, axis=-1)
    return keras.ops.maximum(similarity_negative - similarity_positive + margin, 0.0)


def load_checkpoint(path) -> keras.Model:
    """A `.keras` model written by deep-speaker, loaded in safe mode (no Lambda
    layers, no arbitrary code: only built-in layers and CosineDense)."""
    from pathlib import Path

    if not Path(path).is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a damaged or hostile file
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(error).__name__}: {error})") from None


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> int:
    """Copy weights of same-named layers (embedding layers from one stage to
    the next); returns how many layers were copied."""
    copied = 0
    source_layers = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        if layer.name in source_layers and layer.weights:
            layer.set_weights(source_layers[layer.name].get_weights())
            copied += 1
    return copied
