#!/usr/bin/env python
"""Build the held-out evaluation sets of the pretrained model (speakers in
scripts/pretrained_heldout.txt, never trained on) as folder-per-speaker trees
for `evaluate.py --audio_dir`:

- librispeech/: speakers 19, 26, 27 (8 utterances each) and 22 speakers whose
  only utterance (~14 s) is cut into 3 consecutive segments, so every speaker
  has target trials of utterances a few seconds long;
- speechocean762/: 25 speakers x 6 utterances (8 kHz), linked as they are.

Usage: python bench/heldout_sets.py OUT_DIR [--data ../shared/data]
"""
import argparse
import os
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--segments", type=int, default=3, help="segments cut from a single-utterance speaker")
    p.add_argument("--per_speaker", type=int, default=8, help="utterances of a many-utterance speaker")
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out_dir)
    heldout = [line.strip() for line in (REPO / "scripts" / "pretrained_heldout.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for speaker in heldout:
        if speaker.startswith("SPEAKER"):
            target = out / "speechocean762" / speaker
            target.mkdir(parents=True, exist_ok=True)
            for source in sorted((data / "speechocean762" / speaker).glob("*.flac")):
                link = target / source.name
                if not link.exists():
                    os.symlink(source.resolve(), link)
            continue
        files = sorted((data / "librispeech" / "train-clean-100" / speaker).rglob("*.flac"))
        target = out / "librispeech" / speaker
        target.mkdir(parents=True, exist_ok=True)
        if len(files) > 1:
            chosen = np.random.default_rng(int(speaker)).choice(len(files), args.per_speaker, replace=False)
            for index in sorted(chosen):
                link = target / files[index].name
                if not link.exists():
                    os.symlink(files[index].resolve(), link)
            continue
        audio, rate = soundfile.read(files[0], dtype="int16")
        for k, segment in enumerate(np.array_split(audio, args.segments)):
            soundfile.write(target / f"{speaker}-segment{k}.flac", segment, rate)
    for name in ("librispeech", "speechocean762"):
        folder = out / name
        count = sum(1 for _ in folder.rglob("*.flac"))
        print(f"{folder}: {len(list(folder.iterdir()))} speakers, {count} files")


if __name__ == "__main__":
    main()
