"""Corpus discovery: speaker and utterance ids for every supported layout, and shards."""
from __future__ import annotations

from pathlib import Path

import pytest

from deep_speaker.corpus import (Utterance, default_unseen_speakers, discover_utterances, in_shard,
                                 parse_shard)


def _touch(root: Path, *relatives: str) -> None:
    """Discovery reads names only, so empty files stand in for audio."""
    for relative in relatives:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def _ids(utterances: list[Utterance]) -> list[tuple[str, str, str]]:
    return [(u.speaker_id, u.utterance_id, u.path.name) for u in utterances]


def test_vctk_080_layout_ignores_transcripts(tmp_path):
    root = tmp_path / "VCTK-Corpus"
    _touch(root, "wav48/p225/p225_001.wav", "wav48/p225/p225_002.wav", "wav48/p226/p226_001.wav",
           "txt/p225/p225_001.txt", "txt/p226/p226_001.txt", "speaker-info.txt", "COPYING")
    found = discover_utterances([root])
    assert _ids(found) == [("p225", "p225_001", "p225_001.wav"), ("p225", "p225_002", "p225_002.wav"),
                           ("p226", "p226_001", "p226_001.wav")]
    assert all(u.path.is_absolute() and u.path.is_file() for u in found)
    assert found[0].cache_name == "p225_001.pkl"
    assert default_unseen_speakers(u.speaker_id for u in found) == ["p363", "p364", "p374", "p376"]


def test_vctk_092_layout_picks_one_microphone(tmp_path):
    root = tmp_path / "VCTK-Corpus-0.92"
    _touch(root, "wav48_silence_trimmed/p225/p225_001_mic1.flac", "wav48_silence_trimmed/p225/p225_001_mic2.flac",
           "wav48_silence_trimmed/p225/p225_002_mic1.flac", "wav48_silence_trimmed/p225/p225_002_mic2.flac",
           "wav48_silence_trimmed/s5/s5_001_mic2.flac", "wav48_silence_trimmed/s5/s5_001_mic1.flac",
           "txt/p225/p225_001.txt")
    mic1 = discover_utterances([root])
    mic2 = discover_utterances([root], mic=2)
    # s5 is VCTK 0.92's one speaker not named pNNN
    assert _ids(mic1) == [("p225", "p225_001", "p225_001_mic1.flac"), ("p225", "p225_002", "p225_002_mic1.flac"),
                          ("s5", "s5_001", "s5_001_mic1.flac")]
    assert _ids(mic2) == [("p225", "p225_001", "p225_001_mic2.flac"), ("p225", "p225_002", "p225_002_mic2.flac"),
                          ("s5", "s5_001", "s5_001_mic2.flac")]
    assert default_unseen_speakers(u.speaker_id for u in mic1) == ["p363", "p364", "p374", "p376"]


def test_librispeech_layout(tmp_path):
    root = tmp_path / "LibriSpeech"
    _touch(root, "train-clean-100/19/198/19-198-0001.flac", "train-clean-100/19/227/19-227-0003.flac",
           "train-clean-100/103/1240/103-1240-0000.flac", "train-clean-100/19/198/19-198.trans.txt",
           "SPEAKERS.TXT")
    assert _ids(discover_utterances([root])) == [
        ("103", "103-1240-0000", "103-1240-0000.flac"),
        ("19", "19-198-0001", "19-198-0001.flac"),
        ("19", "19-227-0003", "19-227-0003.flac"),
    ]
    # the same ids whichever level of the tree is given
    assert _ids(discover_utterances([root / "train-clean-100" / "19"]))[0][:2] == ("19", "19-198-0001")
    assert default_unseen_speakers(["19", "103"]) == []


def test_folder_per_speaker_and_a_root_of_wavs(tmp_path):
    samples = tmp_path / "samples"
    _touch(samples, "PhilippeRemy/PhilippeRemy_001.wav", "PhilippeRemy/PhilippeRemy_002.wav",
           "Ana Maria/take 1.wav", "Bob/session2/hello.flac")
    assert _ids(discover_utterances([samples])) == [
        ("Ana_Maria", "Ana_Maria_take_1", "take 1.wav"),
        ("Bob", "Bob_session2_hello", "hello.flac"),
        ("PhilippeRemy", "PhilippeRemy_001", "PhilippeRemy_001.wav"),
        ("PhilippeRemy", "PhilippeRemy_002", "PhilippeRemy_002.wav"),
    ]
    # a folder holding the wavs directly is one speaker named after the folder
    assert _ids(discover_utterances([samples / "PhilippeRemy"])) == [
        ("PhilippeRemy", "PhilippeRemy_001", "PhilippeRemy_001.wav"),
        ("PhilippeRemy", "PhilippeRemy_002", "PhilippeRemy_002.wav"),
    ]


def test_real_shared_layouts(vctk_corpus, samples_dir):
    vctk = discover_utterances([vctk_corpus])
    assert len(vctk) == 34 and all(u.utterance_id.startswith(u.speaker_id + "_") for u in vctk)
    assert {u.speaker_id for u in vctk} >= {"p225", "p226", "p227", "p239"}
    samples = discover_utterances([samples_dir])
    assert [u.utterance_id for u in samples] == [f"PhilippeRemy_00{i}" for i in range(1, 5)]


def test_audio_extensions_and_hidden_files(tmp_path):
    root = tmp_path / "corpus"
    _touch(root, "Ann/a.ogg", "Ann/b.mp3", "Ann/c.WAV", "Ann/d.FLAC", "Ann/e.txt", "Ann/f.m4v", "Ann/.g.wav",
           "Ann/._h.wav")
    (root / "Ann" / "dir.wav").mkdir()  # a folder named like audio is not a file
    assert [u.path.name for u in discover_utterances([root])] == ["a.ogg", "b.mp3", "c.WAV", "d.FLAC"]


def test_same_names_in_two_places_get_unique_ids(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    _touch(first, "Ann/hello.wav", "Ann/bye.wav", "Ann/bye.flac")
    _touch(second, "Ann/hello.wav")
    found = discover_utterances([first, second])
    assert len(found) == 4
    ids = [u.utterance_id for u in found]
    assert len(set(ids)) == 4
    assert len({u.cache_name for u in found}) == 4
    # the colliding names are disambiguated; stable across runs
    assert all(i.startswith(("Ann_hello_", "Ann_bye_")) for i in ids)
    assert [u.utterance_id for u in discover_utterances([first, second])] == ids
    assert {u.speaker_id for u in found} == {"Ann"}
    # a name that collides with nothing keeps its plain id
    assert [u.utterance_id for u in discover_utterances([first])][-1] == "Ann_hello"


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio folder not found"):
        discover_utterances([tmp_path / "nowhere"])


@pytest.mark.parametrize("text", ["", "3", "1/", "/4", "a/b", "-1/4", "4/4", "5/4", "0/0", "1/2/3"])
def test_bad_shards_are_rejected(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_shard_parsing():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 3 / 8 ") == (3, 8)


def test_shards_partition_the_files(tmp_path):
    root = tmp_path / "corpus"
    _touch(root, *[f"spk{s}/utt{u:03d}.wav" for s in range(5) for u in range(40)])
    utterances = discover_utterances([root])
    assert len(utterances) == 200
    for count in (1, 2, 3, 7):
        shards = [[u for u in utterances if in_shard(u, (index, count))] for index in range(count)]
        ids = [u.utterance_id for shard in shards for u in shard]
        assert sorted(ids) == sorted(u.utterance_id for u in utterances)  # union = all, no file twice
        if count > 1:
            assert all(shard for shard in shards)  # each shard gets work
            assert max(map(len, shards)) < 2 * len(utterances) / count
    # adding files never moves the others to another shard
    before = {u.utterance_id: [i for i in range(4) if in_shard(u, (i, 4))] for u in utterances}
    _touch(root, *[f"spk9/new{u}.wav" for u in range(10)])
    after = {u.utterance_id: [i for i in range(4) if in_shard(u, (i, 4))] for u in discover_utterances([root])}
    assert all(after[k] == v for k, v in before.items())
    assert all(in_shard(u, None) for u in utterances)


def test_symlinked_speaker_folders_are_followed_and_link_loops_end(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _touch(elsewhere, "bob/b1.wav", "bob/b2.flac")
    root = tmp_path / "corpus"
    _touch(root, "alice/a1.wav")
    (root / "bob").symlink_to(elsewhere / "bob", target_is_directory=True)
    (root / "alice" / "loop").symlink_to(root, target_is_directory=True)  # must not recurse forever
    assert _ids(discover_utterances([root])) == [("alice", "alice_a1", "a1.wav"), ("bob", "bob_b1", "b1.wav"),
                                                 ("bob", "bob_b2", "b2.flac")]
