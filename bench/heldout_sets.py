#!/usr/bin/env python
"""Build the held-out evaluation sets of the pretrained model (speakers in
scripts/pretrained_heldout.txt, never trained on, never used to choose a checkpoint)
as folder-per-speaker trees for `evaluate.py --audio_dir`:

- librispeech/: speakers 19, 26, 27 (8 utterances each, several chapters) and 22
  speakers whose only utterance (~14 s) is cut into 3 consecutive segments, so every
  speaker has target trials of utterances a few seconds long;
- speechocean762/: 25 speakers x 6 utterances (8 kHz), linked as they are;
- wuw2/: 25 telephone callers with two or more calls, every utterance they have
  (up to 8: sentences and keywords), so target trials cross calls and often handsets;
- speechcommands/: 25 speakers x 3-4 files of four joined one-word clips.

Usage: python bench/heldout_sets.py OUT_DIR [--data ../shared/data]
"""
import argparse
import os
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[1]
HELDOUT_LIST = REPO / "scripts" / "pretrained_heldout.txt"
SETS = ("librispeech", "speechocean762", "wuw2", "speechcommands")


def heldout_speakers() -> dict[str, list[str]]:
    """{set name: speakers} from the '<set> <speaker>' lines of the held-out list."""
    by_set: dict[str, list[str]] = {name: [] for name in SETS}
    for line in HELDOUT_LIST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, speaker = line.split()
            by_set[name].append(speaker)
    return by_set


def _link_all(sources, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for source in sources:
        link = target / source.name
        if not link.exists():
            os.symlink(source.resolve(), link)


def _librispeech_speaker(data: Path, speaker: str, target: Path, segments: int, per_speaker: int) -> None:
    files = sorted((data / "librispeech" / "train-clean-100" / speaker).rglob("*.flac"))
    if len(files) > 1:
        chosen = np.random.default_rng(int(speaker)).choice(len(files), per_speaker, replace=False)
        _link_all([files[index] for index in sorted(chosen)], target)
        return
    target.mkdir(parents=True, exist_ok=True)
    audio, rate = soundfile.read(files[0], dtype="int16")
    for k, segment in enumerate(np.array_split(audio, segments)):
        soundfile.write(target / f"{speaker}-segment{k}.flac", segment, rate)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--segments", type=int, default=3, help="segments cut from a single-utterance speaker")
    p.add_argument("--per_speaker", type=int, default=8, help="utterances of a many-utterance speaker")
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out_dir)
    for name, speakers in heldout_speakers().items():
        for speaker in speakers:
            target = out / name / speaker
            if name == "librispeech":
                _librispeech_speaker(data, speaker, target, args.segments, args.per_speaker)
            else:
                pattern = "*.flac" if name == "speechocean762" else "*.ogg"
                _link_all(sorted((data / name / speaker).glob(pattern)), target)
        folder = out / name
        count = sum(1 for path in folder.rglob("*") if path.suffix in (".flac", ".ogg"))
        print(f"{folder}: {len(list(folder.iterdir()))} speakers, {count} files")


if __name__ == "__main__":
    main()
