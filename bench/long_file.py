#!/usr/bin/env python
"""Benchmark of long recordings (not a test): peak RSS and time of embedding a
1, 10 and 60 minute recording, each in a fresh subprocess (ru_maxrss), with
`SpeakerEncoder.embed_file` (segments, streamed decoding) and, for comparison,
the whole-utterance path every command used before (`scoring.Embedder.embed_file`,
which decodes, resamples and featurises the whole file at once).

The recordings are real speech: LibriSpeech utterances from ../shared/data
joined into one 16 kHz FLAC of the wanted length (written block by block).
Goal: flat in the length, <= 1 GB at the shipped width.

    python bench/long_file.py                          # 1, 10, 60 min; old path at 1 and 10 min
    python bench/long_file.py --minutes 1,10 --whole_minutes 1
    python bench/long_file.py --checkpoint best.keras
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
LIBRISPEECH = REPO_ROOT.parent / "shared" / "data" / "librispeech" / "train-clean-100"
RATE = 16000


def make_recording(path: Path, minutes: float) -> Path:
    """Join LibriSpeech utterances (in sorted order, repeated if needed) into one FLAC."""
    import soundfile

    sources = sorted(LIBRISPEECH.rglob("*.flac"))
    if not sources:
        sys.exit(f"no LibriSpeech files under {LIBRISPEECH}")
    wanted = int(minutes * 60 * RATE)
    written = 0
    with soundfile.SoundFile(str(path), "w", samplerate=RATE, channels=1, format="FLAC", subtype="PCM_16") as out:
        while written < wanted:
            for source in sources:
                audio, rate = soundfile.read(str(source), dtype="float32")
                assert rate == RATE
                audio = audio[: wanted - written]
                out.write(audio)
                written += len(audio)
                if written >= wanted:
                    break
    return path


def child(path: str, mode: str, checkpoint: str | None) -> None:
    """Embed one file; print {"mode", "seconds", "rss_loaded_mb", "peak_rss_mb"} as JSON."""
    from deep_speaker.encoder import SpeakerEncoder

    encoder = SpeakerEncoder(checkpoint)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if mode == "segments":
        vector = encoder.embed_file(path)
    else:
        vector = encoder._embedder.embed_file(path)  # the whole-utterance path the commands used before
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "seconds": round(seconds, 1), "rss_loaded_mb": round(loaded),
                      "peak_rss_mb": round(peak), "norm": round(float((vector ** 2).sum() ** 0.5), 4)}))


def run_child(path: Path, mode: str, checkpoint: str | None) -> dict:
    command = [sys.executable, __file__, "--child", str(path), "--mode", mode]
    if checkpoint:
        command += ["--checkpoint", checkpoint]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"mode": mode, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", default="1,10,60", help="recording lengths for the segmented path")
    p.add_argument("--whole_minutes", default="1,10", help="lengths for the old whole-utterance path ('' for none)")
    p.add_argument("--checkpoint", default=None, help="default: the pretrained model")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="segments", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.mode, args.checkpoint)
        return
    minutes = [float(m) for m in args.minutes.split(",") if m]
    whole = {float(m) for m in args.whole_minutes.split(",") if m}
    with tempfile.TemporaryDirectory() as folder:
        for length in sorted(set(minutes) | whole):
            path = make_recording(Path(folder) / f"{length:g}min.flac", length)
            for mode in ("segments", "whole"):
                if (mode == "segments" and length in minutes) or (mode == "whole" and length in whole):
                    result = run_child(path, mode, args.checkpoint)
                    print(f"{length:g} min, {mode:8s}: " + ", ".join(f"{k} {v}" for k, v in result.items()
                                                                    if k != "mode"), flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
