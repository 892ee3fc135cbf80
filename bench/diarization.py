#!/usr/bin/env python
"""Diarization on simulated conversations of real speakers: DER tables, calibration, speed.

Sets (deep_speaker.conversations, deterministic by seed; 2-6 speakers each):
- test sets, of the held-out speakers of scripts/pretrained_heldout.txt (never trained on):
  librispeech (read English, 16 kHz), speechocean762 (English read by Mandarin speakers, 8 kHz),
  wuw2 (telephone, 8 kHz);
- calibration sets, of the same corpora's TRAINING speakers (every speaker not in that list): what
  the VAD, the windows and the clustering threshold were chosen on; never the test sets.

    python bench/diarization.py                      # DER tables of the test sets (count unknown, and given)
    python bench/diarization.py --calibrate          # sweep the clustering threshold on the calibration sets
    python bench/diarization.py --speed 10 60        # real-time factor and peak RSS of 10 and 60 min recordings

The conversations are written once under --work (default /tmp/deep-speaker-diarization) with their RTTMs, so
`evaluate.py --diarization <work>/test-librispeech` scores the same files.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from heldout_sets import heldout_speakers  # noqa: E402

CORPORA = {  # name: (folder under the data root, file pattern, conversation rate)
    "librispeech": ("librispeech/train-clean-100", "*.flac", 16000),
    "speechocean762": ("speechocean762", "*.flac", 8000),
    "wuw2": ("wuw2", "*.ogg", 8000),
}
SEEDS = {"test": 26, "calibration": 2026}  # one seed per kind of set


def speaker_pool(data: Path, corpus: str, heldout: bool) -> dict[str, list[Path]]:
    """{speaker: files in order} of a corpus's held-out (or training) speakers."""
    folder, pattern, _ = CORPORA[corpus]
    held = set(heldout_speakers()[corpus])
    pool = {}
    for speaker in sorted(p.name for p in (data / folder).iterdir() if p.is_dir()):
        if (speaker in held) == heldout:
            files = sorted((data / folder / speaker).rglob(pattern))
            if files:
                pool[speaker] = files
    return pool


def build(data: Path, work: Path, kind: str, corpus: str, count: int, overlap: float) -> Path:
    """Write `count` conversations of a corpus (kind: test or calibration) under work; reuses what is there."""
    from deep_speaker.conversations import conversation_set

    folder = work / (f"{kind}-{corpus}" + ("" if overlap == 0 else f"-overlap{overlap:g}"))
    if folder.is_dir() and len(list(folder.glob("*.rttm"))) == count:
        return folder
    pool = speaker_pool(data, corpus, kind == "test")
    for conversation in conversation_set(f"{corpus}", pool, count, CORPORA[corpus][2], SEEDS[kind], overlap=overlap):
        conversation.write(folder)
    return folder


def score_folder(encoder, folder: Path, given: bool, settings=None, vad_only: bool = False) -> tuple[dict, float]:
    from deep_speaker.diarization import read_rttm
    from deep_speaker.diarization_metrics import DiarizationScorer

    scorer = DiarizationScorer()
    seconds = elapsed = 0.0
    for audio in sorted(folder.glob("*.flac")):
        reference = read_rttm(audio.with_suffix(".rttm"))[audio.stem]
        start = time.perf_counter()
        result = encoder.diarize(audio, num_speakers=len({s for _, _, s in reference}) if given else None,
                                 settings=settings)
        elapsed += time.perf_counter() - start
        seconds += result.duration_s
        hypothesis = [(s, e, "speech") for s, e, _ in result.segments] if vad_only else result.segments
        scorer.add(audio.stem, [(s, e, "speech") for s, e, _ in reference] if vad_only else reference, hypothesis)
    return scorer.total(), elapsed / max(seconds, 1e-9)


def webrtc_speech_frames(mode: int):
    """A stand-in for deep_speaker.diarization.speech_frames: webrtcvad's decision per 10 ms frame (how the
    candidate VAD was measured; `pip install webrtcvad-wheels`, not a dependency of deep-speaker)."""
    import numpy as np

    try:
        import webrtcvad
    except ImportError:
        raise SystemExit("--webrtc needs webrtcvad: pip install webrtcvad-wheels") from None
    vad = webrtcvad.Vad(mode)

    def frames(audio, rate):
        hop = int(rate * 0.01)
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
        count = len(pcm) // hop
        data = pcm[:count * hop].tobytes()
        return np.array([vad.is_speech(data[2 * hop * i:2 * hop * (i + 1)], rate) for i in range(count)], bool)
    return frames


def table(rows: list[tuple[str, dict, float]]) -> str:
    lines = ["| set | files | DER | missed | false alarm | confusion | DER w/o overlap | JER | count right | RTF |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, t, rtf in rows:
        lines.append(f"| {name} | {t['files']} | {100 * t['der']:.1f} % | {100 * t['missed']:.1f} % | "
                     f"{100 * t['false_alarm']:.1f} % | {100 * t['confusion']:.1f} % | "
                     f"{100 * t['der_no_overlap']:.1f} % | {100 * t['jer']:.1f} % | "
                     f"{100 * t['count_accuracy']:.0f} % | {rtf:.3f} |")
    return "\n".join(lines)


def speed(minutes: list[float], work: Path) -> None:
    """Each length in a fresh process: diarization time and peak RSS of a long file (a conversation of the test
    set repeated)."""
    for length in minutes:
        code = (f"import sys,time,resource,numpy as np,soundfile; sys.path.insert(0,{str(REPO)!r});"
                f"from deep_speaker import SpeakerEncoder;"
                f"p={str(work / f'long-{length:g}min.flac')!r};"
                f"e=SpeakerEncoder(); t=time.perf_counter(); d=e.diarize(p); el=time.perf_counter()-t;"
                f"print(f'{length:g} min: {{el:.1f}} s, real-time factor {{el/d.duration_s:.4f}}, '"
                f"f'{{d.num_speakers}} speakers, peak RSS {{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f}} MB')")
        _long_file(work, length)
        subprocess.run([sys.executable, "-c", code], check=True)


def _long_file(work: Path, minutes: float) -> Path:
    """A recording of `minutes`: the test set's librispeech conversations one after another, repeated, written
    block by block."""
    import numpy as np
    import soundfile

    path = work / f"long-{minutes:g}min.flac"
    if path.is_file():
        return path
    sources = sorted((work / "test-librispeech").glob("*.flac"))
    total = int(minutes * 60 * 16000)
    with soundfile.SoundFile(str(path) + ".part", "w", 16000, 1, format="FLAC", subtype="PCM_16") as out:
        written, k = 0, 0
        while written < total:
            audio, _ = soundfile.read(sources[k % len(sources)], dtype="float32")
            audio = audio[:total - written]
            out.write(audio)
            written, k = written + len(audio), k + 1
    Path(str(path) + ".part").rename(path)
    del np
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--work", default="/tmp/deep-speaker-diarization")
    p.add_argument("--count", type=int, default=20, help="conversations per set")
    p.add_argument("--corpora", default="librispeech,speechocean762,wuw2")
    p.add_argument("--calibrate", action="store_true", help="sweep settings on the calibration sets")
    p.add_argument("--thresholds", default="0.3,0.35,0.4,0.45,0.5,0.55,0.6")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a DiarizationSettings field for this run (repeatable), e.g. --set vad=webrtc")
    p.add_argument("--vad_only", action="store_true", help="score speech/non-speech only (one label)")
    p.add_argument("--overlap", type=float, default=0.0, help="share of turns that overlap the previous one")
    p.add_argument("--webrtc", type=int, choices=(0, 1, 2, 3), help="measure webrtcvad (this mode) as the VAD")
    p.add_argument("--speed", nargs="*", type=float, metavar="MINUTES")
    args = p.parse_args()

    from deep_speaker import SpeakerEncoder
    from deep_speaker.diarization import DiarizationSettings

    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpora = args.corpora.split(",")
    base = DiarizationSettings()
    changes = {}
    for item in args.set:
        name, value = item.split("=", 1)
        kind = type(getattr(base, name))
        changes[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    base = dataclasses.replace(base, **changes)
    if args.speed is not None:
        build(data, work, "test", "librispeech", args.count, 0.0)
        speed(args.speed or [10, 60], work)
        return
    if args.webrtc is not None:
        import deep_speaker.diarization

        deep_speaker.diarization.speech_frames = webrtc_speech_frames(args.webrtc)
    encoder = SpeakerEncoder()
    print(f"settings: {json.dumps(dataclasses.asdict(base))}", flush=True)
    if args.calibrate:
        folders = {c: build(data, work, "calibration", c, args.count, args.overlap) for c in corpora}
        for threshold in [float(t) for t in args.thresholds.split(",")]:
            settings = dataclasses.replace(base, threshold=threshold)
            rows = [(f"calibration {c}", *score_folder(encoder, f, False, settings, args.vad_only))
                    for c, f in folders.items()]
            print(f"\nthreshold {threshold}\n{table(rows)}", flush=True)
        return
    rows = []
    for corpus in corpora:
        folder = build(data, work, "test", corpus, args.count, args.overlap)
        for given in (False, True):
            name = f"{corpus}{' (overlap %g)' % args.overlap if args.overlap else ''}, " \
                   f"{'num_speakers given' if given else 'count estimated'}"
            rows.append((name, *score_folder(encoder, folder, given, base, args.vad_only)))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
