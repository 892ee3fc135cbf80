"""From training inputs to `tf.data` datasets of fixed-length windows.

A bank is the utterances of the training speakers with their labels: either an
`UtteranceBank` (every frame in one (total_frames, num_fbanks) float32 array in
RAM) or a `deep_speaker.feature_store.StoreBank` (float16 frames read from the
on-disk store, one batch at a time). A window is `frames` consecutive rows of
one utterance (tiled when the utterance is shorter). Which utterances and where
they start is drawn with stateless random ops from (seed, step), on the index
alone, so a run is repeatable, a resumed run sees exactly the batches it would
have seen, and both kinds of bank give the same draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from deep_speaker.config import Config
from deep_speaker.feature_store import BankIndex
from deep_speaker.features import CMVN_EPSILON


@dataclass
class UtteranceBank(BankIndex):
    """Utterances of several speakers, stored flat.

    frames: (total_frames, num_fbanks) float32; offsets/lengths: (num_utterances,)
    int64; labels: (num_utterances,) int32 speaker index into `speakers`;
    utterances are sorted by label, and speaker k owns utterances
    first_utterance[k] .. first_utterance[k] + utterance_count[k] - 1.
    """
    frames: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    speakers: list[str]

    def crops(self, utterances: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(n, k, num_fbanks) float32: row rows[i, j] (within the utterance) of utterance utterances[i]."""
        return self.frames[self.offsets[np.asarray(utterances)][:, None] + np.asarray(rows)]


def make_bank(inputs: dict[str, dict], part: str, speakers: list[str]) -> UtteranceBank:
    """Flatten the `part` ("train" or "test") of each speaker's inputs.

    Speakers without utterances in that part keep their label but own none.
    """
    arrays, labels = [], []
    for label, speaker in enumerate(speakers):
        for features in inputs[speaker][part]:
            if len(features):
                arrays.append(np.asarray(features, dtype=np.float32))
                labels.append(label)
    if not arrays:
        raise ValueError(f"no {part} utterances in the training inputs")
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return UtteranceBank(np.concatenate(arrays, axis=0), offsets, lengths, np.array(labels, dtype=np.int32),
                         list(speakers))


def window_sampler(bank, num_frames: int) -> "WindowSampler":
    """The bank's sampler of `num_frames` windows, made once per bank: every
    dataset and every hard-negative refresh reuses it, so nothing copies the
    frames again (an UtteranceBank's become one constant, a StoreBank's stay on disk)."""
    samplers = bank.__dict__.setdefault("_samplers", {})
    if num_frames not in samplers:
        samplers[num_frames] = (WindowSampler if isinstance(bank, UtteranceBank) else StoreWindowSampler)(
            bank, num_frames)
    return samplers[num_frames]


class WindowSampler:
    """Vectorised window drawing and gathering over an UtteranceBank, as TensorFlow ops."""

    def __init__(self, bank, num_frames: int):
        self.num_frames = num_frames
        self.num_speakers = len(bank.speakers)
        self.lengths = tf.constant(bank.lengths)
        self.first = tf.constant(bank.first_utterance)
        self.count = tf.constant(bank.utterance_count)
        # Only speakers that own utterances can be drawn.
        self.drawable = tf.constant(np.flatnonzero(bank.utterance_count > 0).astype(np.int64))
        self._init_frames(bank)

    def _init_frames(self, bank: UtteranceBank) -> None:
        self.frames = tf.constant(bank.frames)
        self.offsets = tf.constant(bank.offsets)

    def random_speakers(self, seed, size):
        """(size,) int64 speaker labels drawn uniformly among those with utterances."""
        index = tf.random.stateless_uniform([size], seed, 0, tf.shape(self.drawable, out_type=tf.int64)[0],
                                            dtype=tf.int64)
        return tf.gather(self.drawable, index)

    def random_other_speakers(self, seed, speakers):
        """For each speaker label, a uniformly drawn different drawable speaker."""
        num = tf.shape(self.drawable, out_type=tf.int64)[0]
        position = tf.searchsorted(self.drawable, speakers, out_type=tf.int64)
        shift = tf.random.stateless_uniform(tf.shape(speakers), seed, 1, tf.maximum(num, 2), dtype=tf.int64)
        return tf.gather(self.drawable, (position + shift) % num)

    def random_utterances(self, seed, speakers):
        """One utterance index of each given speaker, uniformly."""
        draw = tf.random.stateless_uniform(tf.shape(speakers), seed, dtype=tf.float32)
        count = tf.gather(self.count, speakers)
        within = tf.minimum(tf.cast(draw * tf.cast(count, tf.float32), tf.int64), count - 1)
        return tf.gather(self.first, speakers) + within

    def random_starts(self, seed, utterances):
        """(len(utterances),) int64 window starts, uniform over each utterance's room."""
        lengths = tf.gather(self.lengths, utterances)
        room = tf.maximum(lengths - self.num_frames, 0) + 1
        draw = tf.random.stateless_uniform(tf.shape(utterances), seed, dtype=tf.float32)
        return tf.minimum(tf.cast(draw * tf.cast(room, tf.float32), tf.int64), room - 1)

    def random_windows(self, seed, utterances):
        """(len(utterances), num_frames, num_fbanks, 1) windows at random starts."""
        return self.windows_at(utterances, self.random_starts(seed, utterances))

    def windows_at(self, utterances, starts):
        lengths = tf.gather(self.lengths, utterances)[:, None]
        steps = tf.range(self.num_frames, dtype=tf.int64)[None, :]
        rows = tf.gather(self.offsets, utterances)[:, None] + (starts[:, None] + steps) % lengths
        return tf.gather(self.frames, rows)[..., None]


class StoreWindowSampler(WindowSampler):
    """The same draws over a StoreBank: the index lives in TensorFlow, and
    windows are read from the store's shards in one `tf.numpy_function` call
    (one pread per window, float16), then cast to float32. The datasets read
    the windows of READ_STEPS steps per call, to spread the call's cost."""

    def _init_frames(self, bank) -> None:
        self.bank = bank

    def _read(self, utterances: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return self.bank.windows(utterances, starts, self.num_frames)

    def windows_at(self, utterances, starts):
        windows = tf.numpy_function(self._read, [utterances, starts], tf.float16, stateful=False)
        windows = tf.ensure_shape(windows, [None, self.num_frames, self.bank.num_fbanks])
        return tf.cast(windows, tf.float32)[..., None]


READ_STEPS = 8  # steps whose windows a StoreWindowSampler reads in one call


def _batches(sampler: WindowSampler, draw, config: Config, first_step: int) -> tf.data.Dataset:
    """Endless (windows, labels) batches from draw(step) -> (utterances, starts,
    labels, SpecAugment seed), all drawn from (seed, step) alone. In RAM: one
    map gathers each batch. From the store: the draws of READ_STEPS steps are
    read in one call, then split back into batches (the same batches, in order)."""
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def augment(windows, labels, augment_seed):
        if config.window_cmvn > 0:
            windows = window_cmvn(tf.random.experimental.stateless_fold_in(augment_seed, 1), windows,
                                  config.window_cmvn)
        if config.spec_augment:
            windows = spec_augment(augment_seed, windows, config.spec_augment_time_mask,
                                   config.spec_augment_freq_mask)
        return windows, labels

    steps = tf.data.Dataset.counter(first_step)
    if isinstance(sampler, StoreWindowSampler):
        def read(utterances, starts, labels, augment_seed):  # (READ_STEPS, batch) each
            shape = tf.shape(utterances)
            windows = sampler.windows_at(tf.reshape(utterances, [-1]), tf.reshape(starts, [-1]))
            windows = tf.reshape(windows, [shape[0], shape[1], sampler.num_frames, sampler.bank.num_fbanks, 1])
            return windows, labels, augment_seed

        batches = steps.map(draw, **parallel).batch(READ_STEPS).map(read, **parallel).unbatch()
        augments = config.spec_augment or config.window_cmvn > 0
        batches = batches.map(augment, **parallel) if augments else batches.map(lambda w, l, a: (w, l))
    else:
        def whole(step):
            utterances, starts, labels, augment_seed = draw(step)
            return augment(sampler.windows_at(utterances, starts), labels, augment_seed)

        batches = steps.map(whole, **parallel)
    return batches.prefetch(tf.data.AUTOTUNE)


# The seed of a batch is (seed * STREAM_STRIDE + stream, step): a prime stride keeps the
# input streams of distributed workers apart for any seed.
STREAM_STRIDE = 1000003


def window_cmvn(seed, windows, share: float):
    """Each window, with probability `share`, normalised to zero mean and unit
    variance per band over its own frames (`features.normalize_utterance`, as
    scoring does to a file that short); the others unchanged."""
    mean, variance = tf.nn.moments(windows, axes=[1], keepdims=True)
    normalised = (windows - mean) / tf.sqrt(variance + CMVN_EPSILON)
    chosen = tf.random.stateless_uniform(tf.shape(windows)[:1], seed) < share
    return tf.where(chosen[:, None, None, None], normalised, windows)


def spec_augment(seed, windows, max_time_mask: int = Config.spec_augment_time_mask,
                 max_freq_mask: int = Config.spec_augment_freq_mask):
    """One time mask and one frequency mask per window (SpecAugment), set to 0,
    the mean of normalised features."""
    shape = tf.shape(windows, out_type=tf.int64)
    batch, frames, bands = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 4)

    def mask(seed_width, seed_start, length, max_width):
        width = tf.random.stateless_uniform([batch], seed_width, 0, max_width + 1, dtype=tf.int64)
        start = tf.random.stateless_uniform([batch], seed_start, 0, tf.int64.max, dtype=tf.int64) % (
            tf.maximum(length - width, 0) + 1)
        position = tf.range(length)[None, :]
        return (position >= start[:, None]) & (position < (start + width)[:, None])

    time = mask(seeds[0], seeds[1], frames, max_time_mask)[:, :, None, None]
    freq = mask(seeds[2], seeds[3], bands, max_freq_mask)[:, None, :, None]
    return tf.where(time | freq, tf.zeros_like(windows), windows)


def softmax_dataset(bank, config: Config, batch_size: int, seed: int, first_step: int = 0,
                    stream: int = 0) -> tf.data.Dataset:
    """Endless batches ((batch, frames, num_fbanks, 1) float32, (batch,) int32 labels).

    Speakers are drawn uniformly (not utterances), so speakers with one long
    utterance weigh as much as speakers with hundreds. `stream` separates the
    data of distributed workers.
    """
    sampler = window_sampler(bank, config.frames)

    def draw(step):
        base = tf.stack([tf.cast(seed, tf.int64) * STREAM_STRIDE + stream, step])
        s = tf.random.experimental.stateless_split(base, 4)
        speakers = sampler.random_speakers(s[0], batch_size)
        utterances = sampler.random_utterances(s[1], speakers)
        return utterances, sampler.random_starts(s[2], utterances), tf.cast(speakers, tf.int32), s[3]

    return _batches(sampler, draw, config, first_step)


def triplet_dataset(bank, config: Config, batch_size: int, seed: int, first_step: int = 0,
                    stream: int = 0, speaker_similarity: tf.Variable | None = None) -> tf.data.Dataset:
    """Endless batches of (3 * batch, frames, num_fbanks, 1): anchors, positives, negatives.

    Anchor and positive share a speaker (different utterances when it has
    several); the negative is another speaker: random, or with
    `speaker_similarity` (a (speakers, speakers) variable refreshed by the
    trainer) the most similar of `hard_pool_size` randomly drawn other speakers.
    """
    sampler = window_sampler(bank, config.frames)
    pool = max(1, config.hard_pool_size)

    def draw(step):
        base = tf.stack([tf.cast(seed, tf.int64) * STREAM_STRIDE + stream, step])
        s = tf.random.experimental.stateless_split(base, 10)
        anchors = sampler.random_speakers(s[0], batch_size)
        anchor_utt = sampler.random_utterances(s[1], anchors)
        positive_utt = _other_utterance(sampler, s[2], anchors, anchor_utt)
        if speaker_similarity is None:
            negatives = sampler.random_other_speakers(s[3], anchors)
        else:
            candidates = tf.stack([sampler.random_other_speakers(tf.stack([s[3][0], s[3][1] + k]), anchors)
                                   for k in range(pool)], axis=1)  # (batch, pool)
            similarity = tf.gather(tf.gather(speaker_similarity, anchors), candidates, batch_dims=1)
            negatives = tf.gather(candidates, tf.argmax(similarity, axis=1), batch_dims=1)
        negative_utt = sampler.random_utterances(s[4], negatives)
        utterances = tf.concat([anchor_utt, positive_utt, negative_utt], axis=0)
        labels = tf.cast(tf.concat([anchors, anchors, negatives], axis=0), tf.int32)
        return utterances, sampler.random_starts(s[5], utterances), labels, s[6]

    return _batches(sampler, draw, config, first_step)


def _other_utterance(sampler: WindowSampler, seed, speakers, utterances):
    """Another utterance of the same speaker when it has one, else the same."""
    count = tf.gather(sampler.count, speakers)
    first = tf.gather(sampler.first, speakers)
    shift = tf.random.stateless_uniform(tf.shape(speakers), seed, 1, tf.int64.max, dtype=tf.int64) % tf.maximum(
        count - 1, 1) + 1
    other = first + (utterances - first + shift) % count
    return tf.where(count > 1, other, utterances)


def evaluation_windows(bank, num_frames: int, max_utterances: int, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic held-out crops for per-epoch evaluation: centre crops of
    up to max_utterances held-out utterances, at least two per speaker so there
    are target trials for the EER.

    Many speakers (more than max_utterances // 2): a seeded choice of that many,
    two utterances each. Fewer: every speaker, each with an equal share of the
    budget (all its utterances when it has fewer), so a small corpus is judged
    on all its held-out audio, not on two crops per speaker. A speaker with a
    single utterance gives the centre crops of its two halves.
    Returns windows (n, num_frames, num_fbanks, 1) and labels (n,).
    """
    rng = np.random.default_rng(seed)
    speakers = np.flatnonzero(bank.utterance_count > 0)
    speakers = np.sort(rng.permutation(speakers)[:max(1, max_utterances // 2)])
    share = max(2, max_utterances // max(1, len(speakers)))
    utterances, part = [], []  # part: 0 the whole utterance, 1 its first half, 2 its second half
    for first, count in zip(bank.first_utterance[speakers], bank.utterance_count[speakers]):
        if count == 1:
            utterances += [first, first]
            part += [1, 2]
        else:
            chosen = np.sort(rng.choice(count, size=min(count, share), replace=False))
            utterances += (first + chosen).tolist()
            part += [0] * len(chosen)
    utterances, part = np.asarray(utterances, np.int64), np.asarray(part)
    lengths = bank.lengths[utterances]
    half = np.maximum(lengths // 2, 1)
    offsets = np.where(part == 2, half, 0)  # within the utterance
    lengths = np.select([part == 1, part == 2], [half, lengths - half], lengths)
    starts = np.maximum(lengths - num_frames, 0) // 2
    rows = offsets[:, None] + (starts[:, None] + np.arange(num_frames)[None, :]) % lengths[:, None]
    windows = bank.crops(utterances, rows).astype(np.float32)
    return windows[..., None], bank.labels[utterances]
