"""tf.data windows and triplets from an UtteranceBank (deep_speaker.inputs).

The banks are synthetic: frame row r of the flat bank holds r * 64 + band, so
every window says exactly which rows it was gathered from, and can be checked
against plain numpy slicing of the source utterance.
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from deep_speaker.config import Config
from deep_speaker.inputs import evaluation_windows, make_bank, softmax_dataset, triplet_dataset

BANDS = 64
FRAMES = 25


def synthetic_inputs(lengths_by_speaker: dict[str, list[int]], test_lengths: dict[str, list[int]] | None = None):
    """Training-inputs dicts whose frames are numbered: row r (over all train
    utterances in speaker order) is r * BANDS + [0 .. BANDS)."""
    inputs, row = {}, 0
    for speaker, lengths in lengths_by_speaker.items():
        train = []
        for length in lengths:
            rows = np.arange(row, row + length)[:, None]
            train.append((rows * BANDS + np.arange(BANDS)[None, :]).astype(np.float32))
            row += length
        test = [np.full((n, BANDS), -1.0, np.float32) for n in (test_lengths or {}).get(speaker, [])]
        inputs[speaker] = {"train": train, "test": test}
    return inputs


# Speaker "c" owns one utterance shorter than a window; "d" owns no train utterance.
LENGTHS = {"a": [40, 31, 60], "b": [90], "c": [7], "d": [], "e": [26, 33]}


@pytest.fixture(scope="module")
def bank():
    inputs = synthetic_inputs(LENGTHS)
    bank = make_bank(inputs, "train", sorted(inputs))
    assert bank.frames.max() < 2 ** 24  # row numbers stay exact in float32
    return bank


def source_of(bank, window) -> tuple[int, int]:
    """(utterance index, start frame) a window was cut from, read off its first row."""
    row = int(window[0, 0]) // BANDS
    utterance = int(np.searchsorted(bank.offsets, row, side="right") - 1)
    return utterance, row - int(bank.offsets[utterance])


def expected_window(bank, utterance: int, start: int, frames: int) -> np.ndarray:
    """numpy's view of the window: a slice of the utterance, tiled if it is too short."""
    offset, length = int(bank.offsets[utterance]), int(bank.lengths[utterance])
    source = bank.frames[offset:offset + length]
    if length >= frames:
        assert 0 <= start <= length - frames, (utterance, start, length)
        return source[start:start + frames]
    assert start == 0
    return np.tile(source, (-(-frames // length), 1))[:frames]


def batches(dataset, count: int):
    return [(w.numpy(), l.numpy()) for w, l in dataset.take(count)]


def test_softmax_batches_have_the_documented_shapes_and_types(bank):
    windows, labels = next(iter(softmax_dataset(bank, Config(frames=FRAMES), batch_size=6, seed=1)))
    assert windows.shape == (6, FRAMES, BANDS, 1) and windows.dtype == tf.float32
    assert labels.shape == (6,) and labels.dtype == tf.int32


def test_softmax_windows_are_slices_of_their_speakers_utterances(bank):
    seen_speakers, seen_starts = set(), set()
    for windows, labels in batches(softmax_dataset(bank, Config(frames=FRAMES), batch_size=16, seed=3), 8):
        for window, label in zip(windows[..., 0], labels):
            utterance, start = source_of(bank, window)
            np.testing.assert_array_equal(window, expected_window(bank, utterance, start, FRAMES))
            assert label == bank.labels[utterance]
            seen_speakers.add(int(label))
            seen_starts.add((utterance, start))
    speakers = bank.speakers
    drawable = {speakers.index(s) for s in ("a", "b", "c", "e")}
    assert seen_speakers == drawable  # every speaker with audio, never "d"
    assert len(seen_starts) > 40  # random starts, not one fixed crop


def test_an_utterance_shorter_than_the_window_is_tiled(bank):
    short = bank.speakers.index("c")
    found = 0
    for windows, labels in batches(softmax_dataset(bank, Config(frames=FRAMES), batch_size=16, seed=5), 4):
        for window in windows[labels == short][..., 0]:
            utterance = int(bank.first_utterance[short])
            source = bank.frames[bank.offsets[utterance]:bank.offsets[utterance] + 7]
            np.testing.assert_array_equal(window, np.concatenate([source] * 4)[:FRAMES])
            found += 1
    assert found > 0


def test_same_seed_and_step_give_the_same_batches_and_first_step_resumes_the_stream(bank):
    config = Config(frames=FRAMES)
    stream = batches(softmax_dataset(bank, config, batch_size=8, seed=11), 5)
    again = batches(softmax_dataset(bank, config, batch_size=8, seed=11), 5)
    resumed = batches(softmax_dataset(bank, config, batch_size=8, seed=11, first_step=3), 2)
    other_seed = batches(softmax_dataset(bank, config, batch_size=8, seed=12), 1)
    other_stream = batches(softmax_dataset(bank, config, batch_size=8, seed=11, stream=1), 1)
    for (w1, l1), (w2, l2) in zip(stream, again):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(l1, l2)
    for (w1, l1), (w2, l2) in zip(stream[3:], resumed):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(l1, l2)
    assert not np.array_equal(stream[0][0], stream[1][0])
    assert not np.array_equal(stream[0][0], other_seed[0][0])
    assert not np.array_equal(stream[0][0], other_stream[0][0])


def test_spec_augment_masks_are_repeatable_and_only_zero_out(bank):
    plain = batches(softmax_dataset(bank, Config(frames=FRAMES), batch_size=8, seed=2), 2)
    config = Config(frames=FRAMES, spec_augment=True)
    masked = batches(softmax_dataset(bank, config, batch_size=8, seed=2), 2)
    again = batches(softmax_dataset(bank, config, batch_size=8, seed=2), 2)
    for (w, l), (m, ml), (a, _) in zip(plain, masked, again):
        np.testing.assert_array_equal(l, ml)  # same windows, masked
        np.testing.assert_array_equal(m, a)
        assert np.all((m == w) | (m == 0))
    assert any(np.any((m == 0) & (w != 0)) for (w, _), (m, _) in zip(plain, masked))


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_window_cmvn_normalises_a_share_of_windows_over_their_own_frames(bank, share):
    from deep_speaker.features import normalize_utterance

    plain = batches(softmax_dataset(bank, Config(frames=FRAMES), batch_size=64, seed=2), 2)
    config = Config(frames=FRAMES, window_cmvn=share)
    renormalised = batches(softmax_dataset(bank, config, batch_size=64, seed=2), 2)
    again = batches(softmax_dataset(bank, config, batch_size=64, seed=2), 2)
    chosen = []
    for (w, l), (r, rl), (a, _) in zip(plain, renormalised, again):
        np.testing.assert_array_equal(l, rl)  # the same windows, some normalised
        np.testing.assert_array_equal(r, a)  # repeatable
        for window, got in zip(w[..., 0], r[..., 0]):
            changed = not np.array_equal(window, got)
            if changed:  # exactly what scoring does to a file of this window's frames
                np.testing.assert_allclose(got, normalize_utterance(window), rtol=1e-4, atol=1e-4)
            chosen.append(changed)
    if share == 1.0:
        assert all(chosen)
    else:
        assert 0.3 < np.mean(chosen) < 0.7, np.mean(chosen)


def check_triplets(bank, windows, labels, batch):
    anchors, positives, negatives = labels[:batch], labels[batch:2 * batch], labels[2 * batch:]
    np.testing.assert_array_equal(anchors, positives)
    assert np.all(anchors != negatives)
    sources = []
    for window, label in zip(windows[..., 0], labels):
        utterance, start = source_of(bank, window)
        np.testing.assert_array_equal(window, expected_window(bank, utterance, start, FRAMES))
        assert bank.labels[utterance] == label
        sources.append(utterance)
    sources = np.array(sources)
    several = bank.utterance_count[anchors] > 1
    # A speaker with several utterances gives its positive from another one.
    assert np.all(sources[:batch][several] != sources[batch:2 * batch][several])
    return anchors, negatives


def test_random_triplets_pair_a_speaker_with_another(bank):
    config = Config(frames=FRAMES)
    batch = 16
    pairs = set()
    for windows, labels in batches(triplet_dataset(bank, config, batch_size=batch, seed=4), 10):
        assert windows.shape == (3 * batch, FRAMES, BANDS, 1) and labels.dtype == np.int32
        anchors, negatives = check_triplets(bank, windows, labels, batch)
        pairs.update(zip(anchors.tolist(), negatives.tolist()))
    drawable = [bank.speakers.index(s) for s in ("a", "b", "c", "e")]
    assert pairs == {(a, n) for a in drawable for n in drawable if a != n}  # "d" has no audio


def test_hard_triplets_take_the_most_similar_speaker(bank):
    num = len(bank.speakers)
    drawable = [bank.speakers.index(s) for s in ("a", "b", "c", "e")]
    closest = {a: drawable[(i + 1) % len(drawable)] for i, a in enumerate(drawable)}
    similarity = np.zeros((num, num), np.float32)
    for anchor, other in closest.items():
        similarity[anchor, other] = 0.9
    np.fill_diagonal(similarity, -2.0)
    variable = tf.Variable(similarity, trainable=False)
    # A pool of 64 candidates among 3 other speakers holds the closest one
    # except with probability (2/3)**64.
    config = Config(frames=FRAMES, hard_pool_size=64)
    batch = 10
    dataset = triplet_dataset(bank, config, batch_size=batch, seed=6, speaker_similarity=variable)
    for windows, labels in batches(dataset, 3):
        anchors, negatives = check_triplets(bank, windows, labels, batch)
        np.testing.assert_array_equal(negatives, [closest[a] for a in anchors])

    # The dataset reads the variable when it makes a batch: a refreshed
    # similarity changes the negatives of a new iterator.
    farthest = {a: drawable[(i - 1) % len(drawable)] for i, a in enumerate(drawable)}
    similarity[:] = 0.0
    for anchor, other in farthest.items():
        similarity[anchor, other] = 0.9
    np.fill_diagonal(similarity, -2.0)
    variable.assign(similarity)
    for windows, labels in batches(dataset, 2):
        anchors, negatives = check_triplets(bank, windows, labels, batch)
        np.testing.assert_array_equal(negatives, [farthest[a] for a in anchors])


def test_evaluation_windows_are_centre_crops_of_held_out_utterances():
    lengths = {"a": [40, 31, 60], "b": [90], "c": [300, 12], "d": []}
    inputs = synthetic_inputs(lengths)
    bank = make_bank(inputs, "train", sorted(inputs))
    frames = 30
    windows, labels = evaluation_windows(bank, frames, max_utterances=200, seed=0)
    # Few speakers: every held-out utterance ("b" has one: its two halves).
    assert windows.shape == (7, frames, BANDS, 1)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 2, 2])
    crops = []
    for window, label in zip(windows[..., 0], labels):
        utterance, start = source_of(bank, window)
        assert bank.labels[utterance] == label
        crops.append((utterance, start))
    for (utterance, start), window in zip(crops, windows[..., 0]):
        if bank.utterance_count[bank.labels[utterance]] > 1:
            # The centre crop (tiled when the utterance is short).
            length = int(bank.lengths[utterance])
            np.testing.assert_array_equal(
                window, expected_window(bank, utterance, max(length - frames, 0) // 2, frames))
    assert len(set(crops)) == len(crops)  # no crop twice
    # "b" has one utterance: its two crops are the centres of its two halves.
    b_utterance = int(bank.first_utterance[1])
    source = bank.frames[bank.offsets[b_utterance]:bank.offsets[b_utterance] + 90]
    np.testing.assert_array_equal(windows[3, ..., 0], source[7:7 + frames])
    np.testing.assert_array_equal(windows[4, ..., 0], source[45 + 7:45 + 7 + frames])
    # Deterministic for a seed, limited to max_utterances // 2 speakers.
    again, _ = evaluation_windows(bank, frames, max_utterances=200, seed=0)
    np.testing.assert_array_equal(windows, again)
    few, few_labels = evaluation_windows(bank, frames, max_utterances=4, seed=0)
    assert few.shape[0] == 4 and sorted(c for c in np.bincount(few_labels) if c) == [2, 2]
    # Many speakers against the budget: two distinct utterances from each of max_utterances // 2 speakers.
    many = synthetic_inputs({f"s{k:02d}": [40, 50, 60] for k in range(30)})
    many_bank = make_bank(many, "train", sorted(many))
    crops_of_many, many_labels = evaluation_windows(many_bank, frames, max_utterances=20, seed=0)
    assert crops_of_many.shape[0] == 20 and sorted(c for c in np.bincount(many_labels) if c) == [2] * 10
    sources = [source_of(many_bank, window)[0] for window in crops_of_many[..., 0]]
    assert len(set(sources)) == 20


def test_make_bank_keeps_labels_of_speakers_without_utterances():
    inputs = synthetic_inputs({"a": [30], "b": [30]}, test_lengths={"a": [], "b": [20]})
    test_bank = make_bank(inputs, "test", ["a", "b"])
    np.testing.assert_array_equal(test_bank.labels, [1])
    np.testing.assert_array_equal(test_bank.utterance_count, [0, 1])
    with pytest.raises(ValueError, match="no test utterances"):
        make_bank(synthetic_inputs({"a": [30]}), "test", ["a"])


def _speaker(train, test, source=None, speed=1.0, copy=0):
    """An inputs dict as stage 2 writes it: frames, and whose pseudo-speaker it is."""
    data = {"train": [np.full((3, 2), v, np.float32) for v in train],
            "test": [np.full((3, 2), v, np.float32) for v in test], "speed": speed, "augmented_copy": copy}
    if source is not None:
        data["source_speaker_id"] = source
    return data


def test_augment_mode_merges_perturbed_copies_into_their_speakers_training_data():
    from deep_speaker.training_inputs import merge_perturbed_speakers

    inputs = {"a": _speaker([1], [2], "a"), "a-sp0.9": _speaker([3], [4], "a", 0.9),
              "a-sp1.1": _speaker([5], [6], "a", 1.1), "b": _speaker([7], [8], "b"),
              "held-sp0.9": _speaker([9], [10], "held", 0.9)}
    merged = merge_perturbed_speakers(inputs)
    assert sorted(merged) == ["a", "b"]  # the orphan copy of a held-out speaker is gone
    assert [u[0, 0] for u in merged["a"]["train"]] == [1, 3, 5]
    assert [u[0, 0] for u in merged["a"]["test"]] == [2]  # perturbed test copies never join
    assert [u[0, 0] for u in merged["b"]["train"]] == [7]
    assert len(inputs["a"]["train"]) == 1  # the caller's inputs are left as they were


def test_augmented_copies_always_join_their_own_speaker_or_pseudo_speaker():
    from deep_speaker.training_inputs import merge_augmented_copies

    inputs = {"a": _speaker([1], [2], "a"), "a-aug1": _speaker([3], [], "a", 1.0, 1),
              "a-sp0.9": _speaker([4], [5], "a", 0.9), "a-sp0.9-aug1": _speaker([6], [], "a", 0.9, 1),
              "held-aug1": _speaker([7], [], "held", 1.0, 1)}
    merged = merge_augmented_copies(inputs)
    assert sorted(merged) == ["a", "a-sp0.9"]
    assert [u[0, 0] for u in merged["a"]["train"]] == [1, 3]
    assert [u[0, 0] for u in merged["a-sp0.9"]["train"]] == [4, 6]
    assert [u[0, 0] for u in merged["a"]["test"]] == [2]
    assert len(inputs["a"]["train"]) == 1


def test_a_real_speaker_named_like_a_pseudo_speaker_stays_a_speaker_of_its_own():
    """A folder `Ann-aug2` (or `Bo-sp1.1`) beside `Ann` is a real speaker: merging goes
    by what stage 2 recorded, never by the id's spelling, also for inputs written
    before the source speaker was recorded (speed and copy only)."""
    from deep_speaker.training_inputs import merge_augmented_copies, merge_perturbed_speakers

    inputs = {"Ann": _speaker([1], [2], "Ann"), "Ann-aug2": _speaker([3], [4], "Ann-aug2"),
              "Ann-aug2-aug1": _speaker([5], [], "Ann-aug2", 1.0, 1), "Ann-sp1.1": _speaker([6], [7]),
              "Ann-sp1.1-x": _speaker([8], [9]), "Ann-aug1": _speaker([10], [], None, 1.0, 1)}
    inputs["Ann-sp1.1"]["speed"] = 1.0  # a real speaker folder called Ann-sp1.1, legacy inputs
    merged = merge_perturbed_speakers(merge_augmented_copies(inputs))
    assert sorted(merged) == ["Ann", "Ann-aug2", "Ann-sp1.1", "Ann-sp1.1-x"]
    assert [u[0, 0] for u in merged["Ann"]["train"]] == [1, 10]
    assert [u[0, 0] for u in merged["Ann-aug2"]["train"]] == [3, 5] and len(merged["Ann-aug2"]["test"]) == 1
    assert [u[0, 0] for u in merged["Ann-sp1.1"]["train"]] == [6]


def test_perturbed_speakers_accepts_only_its_two_modes():
    assert Config().override(perturbed_speakers="augment").perturbed_speakers == "augment"
    with pytest.raises(ValueError, match="perturbed_speakers"):
        Config().override(perturbed_speakers="merge").validate()
