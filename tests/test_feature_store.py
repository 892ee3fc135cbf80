"""The on-disk feature store (deep_speaker.feature_store): packing, resuming a
killed pack, staleness, settings, and streaming windows that are the in-RAM
pipeline's windows exactly.

Frames here are float16-representable, so a window read from the float16 store
must equal, bit for bit, the window the in-RAM UtteranceBank gathers for the
same (seed, step): every property tests/test_inputs.py checks of the in-RAM
pipeline (repeatable batches, resume, speaker draws, SpecAugment, hard
negatives) then holds for the store too.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from deep_speaker import feature_store
from deep_speaker.config import Config
from deep_speaker.feature_store import FeatureStore, StoreError, pack_store, store_is_current
from deep_speaker.inputs import evaluation_windows, make_bank, softmax_dataset, triplet_dataset
from deep_speaker.io_utils import atomic_write_pickle, atomic_write_text
from deep_speaker.training_inputs import merge_augmented_copies, merge_perturbed_speakers

BANDS = 64
FRAMES = 25
TINY_SHARD_MB = 2048 * BANDS * 2 / (1 << 20)  # 2048 frames per shard


def utterance(rng, length: int) -> np.ndarray:
    return rng.standard_normal((length, BANDS)).astype(np.float16).astype(np.float32)


def write_inputs(cache, speakers: dict[str, dict]) -> None:
    """inputs/<speaker>.pkl as stage 2 writes them, with a .sig sidecar."""
    for speaker, data in speakers.items():
        path = cache / "inputs" / f"{speaker}.pkl"
        atomic_write_pickle(path, {"speaker_id": speaker, "feature_settings": Config().feature_settings(), **data})
        atomic_write_text(path.with_name(path.name + ".sig"), f"sig-{speaker}\n")


def corpus(seed: int = 0, speakers: int = 6) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    result = {}
    for k in range(speakers):
        count = 1 + k % 4
        result[f"s{k}"] = {"train": [utterance(rng, int(n)) for n in rng.integers(5, 900, count)],
                           "test": [utterance(rng, int(n)) for n in rng.integers(20, 400, 1 + k % 2)]}
    result["s2"]["train"].append(utterance(rng, 7))  # shorter than a window: tiled
    return result


@pytest.fixture()
def packed(tmp_path):
    inputs = corpus()
    write_inputs(tmp_path, inputs)
    summary = pack_store(tmp_path, Config(), max_shard_mb=TINY_SHARD_MB, progress=False)
    return tmp_path, inputs, summary


def test_pack_writes_float16_shards_of_bounded_size_and_an_index(packed):
    cache, inputs, summary = packed
    assert summary.packed and summary.shards >= 3 and summary.speakers == 6
    store = FeatureStore(cache)
    for path in store.shards:
        shard = np.load(path, mmap_mode="r")
        assert shard.dtype == np.float16 and shard.shape[1] == BANDS
        assert len(shard) <= 2048 or len(store.index["length"][store.index["shard"] == store.shards.index(path)]) == 1
    index = store.index
    assert summary.utterances == len(index["length"]) == sum(len(d["train"]) + len(d["test"]) for d in inputs.values())
    for row in range(len(index["length"])):
        speaker = store.speakers[index["speaker"][row]]
        part = ("train", "test")[index["part"][row]]
        expected = inputs[speaker][part][index["position"][row]]
        shard = np.load(store.shards[index["shard"][row]], mmap_mode="r")
        got = shard[index["offset"][row]:index["offset"][row] + index["length"][row]]
        np.testing.assert_array_equal(got.astype(np.float32), expected)
    manifest = json.loads((cache / "store" / "manifest.json").read_text())
    assert manifest["dtype"] == "float16" and manifest["feature_settings"] == Config().feature_settings()


def test_an_up_to_date_store_is_not_packed_again_and_a_changed_input_repacks_it(packed):
    cache, inputs, _ = packed
    before = {p.name: p.stat().st_mtime_ns for p in (cache / "store").iterdir()}
    assert not pack_store(cache, Config(), max_shard_mb=TINY_SHARD_MB, progress=False).packed
    assert {p.name: p.stat().st_mtime_ns for p in (cache / "store").iterdir()} == before
    changed = {"s3": {**inputs["s3"], "train": inputs["s3"]["train"][:1]}}
    write_inputs(cache, changed)
    atomic_write_text(cache / "inputs" / "s3.pkl.sig", "sig-s3-new\n")
    assert not store_is_current(cache)
    summary = pack_store(cache, Config(), max_shard_mb=TINY_SHARD_MB, progress=False)
    assert summary.packed and store_is_current(cache)
    assert summary.utterances == sum(len(d["train"]) + len(d["test"]) for d in {**inputs, **changed}.values())


def test_a_killed_pack_resumes_after_its_last_shard_and_gives_the_same_store(tmp_path, monkeypatch):
    inputs = corpus(seed=3)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for cache in (whole, killed):
        write_inputs(cache, inputs)
    pack_store(whole, Config(), max_shard_mb=TINY_SHARD_MB, progress=False)
    flush = feature_store._ShardWriter.flush
    calls = []

    def dies_on_the_third_shard(self):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return flush(self)

    monkeypatch.setattr(feature_store._ShardWriter, "flush", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        pack_store(killed, Config(), max_shard_mb=TINY_SHARD_MB, progress=False)
    monkeypatch.setattr(feature_store._ShardWriter, "flush", flush)
    assert not store_is_current(killed) and (killed / "store" / ".pack-journal.npz").exists()
    summary = pack_store(killed, Config(), max_shard_mb=TINY_SHARD_MB, progress=False)
    assert summary.resumed_from_shard == 2
    assert not (killed / "store" / ".pack-journal.npz").exists()
    names = sorted(p.name for p in (whole / "store").iterdir())
    assert names == sorted(p.name for p in (killed / "store").iterdir())
    for name in names:
        if name.endswith(".npy"):
            assert (whole / "store" / name).read_bytes() == (killed / "store" / name).read_bytes(), name
    a, b = FeatureStore(whole), FeatureStore(killed)
    for field in feature_store.INDEX_FIELDS:
        np.testing.assert_array_equal(a.index[field], b.index[field])
    # The same manifest but for the source signature, which also names each cache's own file times.
    assert {k: v for k, v in a.manifest.items() if k != "source_signature"} == \
        {k: v for k, v in b.manifest.items() if k != "source_signature"}
    assert store_is_current(whole) and store_is_current(killed)


def test_a_store_of_other_feature_settings_is_refused(packed):
    cache, _, _ = packed
    FeatureStore(cache).check_settings(Config())
    with pytest.raises(StoreError, match="regenerate"):
        FeatureStore(cache).check_settings(Config(num_fbanks=40))


def test_an_incomplete_store_is_refused_in_one_line(tmp_path):
    with pytest.raises(StoreError, match="no complete feature store"):
        FeatureStore(tmp_path)


def batches(dataset, count: int):
    return [(w.numpy(), l.numpy()) for w, l in dataset.take(count)]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for (w1, l1), (w2, l2) in zip(first, second):
        np.testing.assert_array_equal(l1, l2)
        np.testing.assert_array_equal(w1, w2)


def test_streamed_windows_are_the_in_ram_pipelines_windows(packed):
    cache, inputs, _ = packed
    speakers = sorted(inputs)
    ram = make_bank(inputs, "train", speakers)
    store = FeatureStore(cache).bank("train")
    assert store.speakers == speakers
    np.testing.assert_array_equal(store.labels, ram.labels)
    np.testing.assert_array_equal(store.lengths, ram.lengths)
    for config in (Config(frames=FRAMES), Config(frames=FRAMES, spec_augment=True)):
        for first_step in (0, 7):
            assert_same_batches(batches(softmax_dataset(store, config, 8, seed=5, first_step=first_step), 3),
                                batches(softmax_dataset(ram, config, 8, seed=5, first_step=first_step), 3))
    similarity = np.random.default_rng(0).standard_normal((len(speakers), len(speakers))).astype(np.float32)
    variable = tf.Variable(similarity, trainable=False)
    config = Config(frames=FRAMES, hard_pool_size=4)
    assert_same_batches(batches(triplet_dataset(store, config, 6, seed=2, speaker_similarity=variable), 3),
                        batches(triplet_dataset(ram, config, 6, seed=2, speaker_similarity=variable), 3))
    assert_same_batches(batches(triplet_dataset(store, config, 6, seed=2, stream=1), 2),
                        batches(triplet_dataset(ram, config, 6, seed=2, stream=1), 2))
    test_store, test_ram = FeatureStore(cache).bank("test"), make_bank(inputs, "test", speakers)
    for got, expected in zip(evaluation_windows(test_store, 60, 12, seed=1), evaluation_windows(test_ram, 60, 12, 1)):
        np.testing.assert_array_equal(got, expected)


def test_a_stream_made_again_repeats_its_batches_and_datasets_share_one_sampler(packed):
    cache, _, _ = packed
    bank = FeatureStore(cache).bank("train")
    config = Config(frames=FRAMES)
    assert_same_batches(batches(softmax_dataset(bank, config, 8, seed=9), 2),
                        batches(softmax_dataset(bank, config, 8, seed=9), 2))
    assert len(bank._samplers) == 1  # made once per bank and window length: refreshes copy nothing


def test_merged_copies_train_as_their_speaker_in_the_in_ram_order(tmp_path):
    rng = np.random.default_rng(4)
    inputs = {}
    for speaker in ("a", "b"):
        for speed, suffix in ((1.0, ""), (0.9, "-sp0.9")):
            for copy in (0, 1):
                name = f"{speaker}{suffix}" + (f"-aug{copy}" if copy else "")
                inputs[name] = {"train": [utterance(rng, int(n)) for n in rng.integers(30, 200, 2)],
                                "test": [] if copy else [utterance(rng, 80)], "speed": speed,
                                "augmented_copy": copy, "source_speaker_id": speaker}
    write_inputs(tmp_path, inputs)
    pack_store(tmp_path, Config(), max_shard_mb=TINY_SHARD_MB, progress=False)
    store = FeatureStore(tmp_path)
    for mode in ("classes", "augment"):
        merged = merge_augmented_copies({k: {"speaker_id": k, **v} for k, v in inputs.items()})
        if mode == "augment":
            merged = merge_perturbed_speakers(merged)
        speakers = sorted(merged)
        assert store.classes(mode)[0] == speakers
        for part in ("train", "test"):
            ram, streamed = make_bank(merged, part, speakers), store.bank(part, mode)
            np.testing.assert_array_equal(streamed.labels, ram.labels)
            rows = np.arange(20)[None, :] % ram.lengths[:, None]
            np.testing.assert_array_equal(streamed.crops(np.arange(ram.num_utterances), rows).astype(np.float32),
                                          ram.crops(np.arange(ram.num_utterances), rows))


def test_worker_shares_split_the_training_utterances_by_shard(packed):
    cache, _, _ = packed
    store = FeatureStore(cache)
    whole = store.bank("train")
    shares = [store.bank("train", share=(worker, 2)) for worker in range(2)]
    assert set(shares[0].shards_used).isdisjoint(shares[1].shards_used) and all(s.num_utterances for s in shares)
    assert sum(s.num_utterances for s in shares) == whole.num_utterances
    assert all(s.speakers == whole.speakers for s in shares)  # labels stay global
    batch = next(iter(softmax_dataset(shares[1], Config(frames=FRAMES), 8, seed=1)))
    assert batch[0].shape == (8, FRAMES, BANDS, 1)


def test_embeddings_of_float16_features_match_float32_ones():
    """What storing float16 costs the model: embeddings of CMVN-like features
    rounded to float16 against the float32 ones, through a trained-looking
    (random) ResCNN at width 0.25."""
    import keras

    from deep_speaker.model import build_embedding_model

    keras.utils.set_random_seed(0)
    model = build_embedding_model(Config(width=0.25))
    features = np.random.default_rng(0).standard_normal((8, 300, BANDS, 1)).astype(np.float32) * 1.5
    exact = model.predict(features, verbose=0)
    rounded = model.predict(features.astype(np.float16).astype(np.float32), verbose=0)
    cosine = np.sum(exact * rounded, axis=1)
    assert np.all(cosine > 0.99999), cosine
    assert np.abs(exact - rounded).max() < 2e-3
