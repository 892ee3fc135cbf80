#!/usr/bin/env python
"""Diarization on simulated conversations of real speakers: DER tables, calibration, speed.

Sets (deep_speaker.conversations, deterministic by seed; 2-6 speakers each):
- test sets, of the held-out speakers of scripts/pretrained_heldout.txt (never trained on):
  librispeech (read English, 16 kHz), speechocean762 (English read by Mandarin speakers, 8 kHz),
  wuw2 (telephone, 8 kHz);
- calibration sets, of the same corpora's TRAINING speakers (every speaker not in that list): what
  the VAD, the windows and the clustering threshold were chosen on; never the test sets.

    python bench/diarization.py                      # DER tables of the test sets (count unknown, and given)
    python bench/diarization.py --calibrate          # sweep plda_threshold (--sweep FIELD) on the calibration sets
    python bench/diarization.py --speed 10 60        # real-time factor and peak RSS of 10 and 60 min recordings
    python bench/diarization.py --fit_plda           # fit the PLDA beside the model (training speakers only)
    python bench/diarization.py --naming             # enrolled names right and wrong, by naming threshold
    python bench/diarization.py --online             # online diarization (diarize_stream): DER and latency
    python bench/diarization.py --naming --online    # the online diarizer's enrolled names, right and wrong
    python bench/diarization.py --online --calibrate --sweep online_threshold --thresholds 0,5,10

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
# What the PLDA is fitted on: one-speaker files of every corpus's training speakers, except those of the
# calibration conversations (so that the threshold calibrated there meets speakers the PLDA has not seen).
PLDA_CORPORA = {**{name: (folder, pattern) for name, (folder, pattern, _) in CORPORA.items()},
                "speechcommands": ("speechcommands", "*.ogg"),
                "arabic-speech-commands": ("arabic-speech-commands", "*.ogg"),
                "vctk-mini": ("vctk-mini/VCTK-Corpus/wav48", "*.wav")}
PLDA_SECONDS = 60.0  # audio read per speaker (the first files, in order)
PLDA_RANK = 128


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


def score_folder(encoder, folder: Path, given: bool, settings=None, vad_only: bool = False,
                 online: bool = False) -> tuple[dict, float]:
    """The set's figures (DiarizationScorer.total(); online: with the turns' latency) and its real-time factor."""
    from deep_speaker.diarization import read_rttm
    from deep_speaker.diarization_metrics import DiarizationScorer, latency_summary
    from deep_speaker.online_diarization import diarize_file_online

    scorer = DiarizationScorer()
    seconds = elapsed = 0.0
    latencies = []
    for audio in sorted(folder.glob("*.flac")):
        reference = read_rttm(audio.with_suffix(".rttm"))[audio.stem]
        start = time.perf_counter()
        if online:
            result = diarize_file_online(encoder, audio, settings=settings, latencies=latencies)
        else:
            result = encoder.diarize(audio, num_speakers=len({s for _, _, s in reference}) if given else None,
                                     settings=settings)
        elapsed += time.perf_counter() - start
        seconds += result.duration_s
        hypothesis = [(s, e, "speech") for s, e, _ in result.segments] if vad_only else result.segments
        scorer.add(audio.stem, [(s, e, "speech") for s, e, _ in reference] if vad_only else reference, hypothesis)
    total = scorer.total()
    if online:
        total["latency_s"] = latency_summary(latencies)
    return total, elapsed / max(seconds, 1e-9)


def fit_plda(data: Path, work: Path, encoder, count: int) -> None:
    """Fit the two-covariance PLDA (deep_speaker.plda) on window embeddings of training speakers' own files and
    save it beside the model."""
    from deep_speaker.audio import read_audio, resample
    from deep_speaker.diarization import read_rttm, waveform_blocks, window_embeddings
    from deep_speaker.plda import PLDA_FILE
    from deep_speaker.plda import fit_plda as fit

    held = heldout_speakers()
    calibration = set()
    for corpus in CORPORA:
        for rttm in build(data, work, "calibration", corpus, count, 0.0).glob("*.rttm"):
            calibration |= {f"{corpus}/{label}" for segments in read_rttm(rttm).values() for _, _, label in segments}
    rate = encoder.config.sample_rate_hz
    embeddings, speakers = [], []
    for corpus, (folder, pattern) in PLDA_CORPORA.items():
        for speaker_dir in sorted(p for p in (data / folder).iterdir() if p.is_dir()):
            name = f"{corpus}/{speaker_dir.name}"
            if speaker_dir.name in held.get(corpus, ()) or name in calibration:
                continue
            seconds = 0.0
            for path in sorted(speaker_dir.rglob(pattern)):
                if seconds >= PLDA_SECONDS:
                    break
                audio, file_rate = read_audio(path)
                audio = resample(audio if audio.ndim == 1 else audio.mean(axis=1), file_rate, rate).astype("float32")
                seconds += len(audio) / rate
                rows = window_embeddings(waveform_blocks(audio, 5 * rate), encoder)
                embeddings.append(rows)
                speakers += [name] * len(rows)
        print(f"{corpus}: {len(set(speakers))} speakers, {len(speakers)} windows so far", flush=True)
    import numpy as np

    plda = fit(np.concatenate(embeddings), speakers, PLDA_RANK, encoder.model_identity["sha256"],
               {"fitted_on": "window embeddings of one-speaker files of the training speakers of "
                             f"{', '.join(PLDA_CORPORA)} (not held out, not in the calibration conversations), "
                             f"the first {PLDA_SECONDS:g} s of each", "rank": PLDA_RANK})
    path = plda.save(encoder.model_path.parent / PLDA_FILE)
    print(f"wrote {path}: {plda.info['speakers']} speakers, {plda.info['embeddings']} windows, rank {plda.rank}")


NAMING_THRESHOLDS = (0.383, 0.5, 0.55, 0.6, 0.65, 0.68, 0.72)


def naming_cases(data: Path, work: Path, encoder, count: int, kind: str):
    """Each conversation of the kind's sets (count estimated) three times, with an enrolment of half its
    speakers (at random) and 10 other speakers of its pool, each enrolled from their first file: yields
    (conversation, its reference, the enrolled names, their embeddings)."""
    import numpy as np

    from deep_speaker.diarization import read_rttm

    for corpus in CORPORA:
        pool = speaker_pool(data, corpus, kind == "test")
        names = sorted(pool)
        enrolled = np.stack([encoder.embed_file(str(pool[name][0])) for name in names])
        rng = np.random.default_rng(1)
        for audio in sorted(build(data, work, kind, corpus, count, 0.0).glob("*.flac")):
            reference = read_rttm(audio.with_suffix(".rttm"))[audio.stem]
            speakers = sorted({label for _, _, label in reference})
            for _ in range(3):
                chosen = [s for s in speakers if rng.random() < 0.5]
                others = [s for s in names if s not in speakers]
                chosen += list(rng.choice(others, min(10, len(others)), replace=False))
                yield audio, reference, chosen, enrolled[[names.index(s) for s in chosen]]


def naming(data: Path, work: Path, encoder, count: int, kinds=("calibration", "test")) -> None:
    """How often enrolled names are right and wrong, by naming threshold (`naming_cases`); a name is wrong
    when the speaker found spoke mostly someone else's turns."""
    import numpy as np

    from deep_speaker.diarization import match_enrolled

    for kind in kinds:
        cases, results = [], {}
        for audio, reference, chosen, embeddings in naming_cases(data, work, encoder, count, kind):
            if audio not in results:
                results[audio] = encoder.diarize(audio)
            result = results[audio]
            found = [_mostly(result.segments, label, reference) for label in result.speakers]
            scores = np.stack([result.embeddings[label] for label in result.speakers]) @ embeddings.T
            cases.append((scores, found, chosen))
        for threshold in NAMING_THRESHOLDS:
            right = wrong = could = total = 0
            for scores, found, chosen in cases:
                total += len(found)
                could += sum(f in chosen for f in found)
                for c, e in match_enrolled(scores, threshold).items():
                    right += found[c] == chosen[e]
                    wrong += found[c] != chosen[e]
            print(f"{kind}, naming threshold {threshold}: enrolled speakers named {100 * right / could:.0f} % "
                  f"({right}/{could}); wrong names {100 * wrong / total:.1f} % of the {total} speakers found",
                  flush=True)


def naming_online(data: Path, work: Path, encoder, count: int, kinds=("calibration", "test"),
                  settings=None) -> None:
    """Enrolled names of the online diarizer, right and wrong, at the settings' online naming threshold: the
    cases of `naming_cases`, each streamed with its enrolment (the names in its final `diarization()`)."""
    from deep_speaker.identification import Enrolment, enrolment_settings
    from deep_speaker.online_diarization import diarize_file_online

    enrolled_with = enrolment_settings(encoder.config)
    for kind in kinds:
        right = wrong = could = total = 0
        for audio, reference, chosen, embeddings in naming_cases(data, work, encoder, count, kind):
            enrolment = Enrolment(list(chosen), embeddings, [1] * len(chosen), dict(encoder.model_identity),
                                  enrolled_with)
            result = diarize_file_online(encoder, audio, enrolment=enrolment, settings=settings)
            for label in result.speakers:
                found = _mostly(result.segments, label, reference)
                total += 1
                could += found in chosen
                right += label == found
                wrong += label in chosen and label != found
        print(f"{kind}, online: enrolled speakers named {100 * right / could:.0f} % ({right}/{could}); wrong names "
              f"{100 * wrong / total:.1f} % of the {total} speakers found", flush=True)


def _mostly(segments, label: str, reference) -> str:
    """The reference speaker whose turns overlap most of the segments of `label`."""
    overlap: dict[str, float] = {}
    for start, end, _ in (segment for segment in segments if segment[2] == label):
        for ref_start, ref_end, speaker in reference:
            overlap[speaker] = overlap.get(speaker, 0.0) + max(0.0, min(end, ref_end) - max(start, ref_start))
    return max(overlap, key=overlap.get) if overlap and max(overlap.values()) > 0 else ""


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
    lines = ["| set | files | DER | 95 % interval | missed | false alarm | confusion | DER w/o overlap | JER | "
             "count right | RTF |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, t, rtf in rows:
        low, high = t["der_interval"]
        lines.append(f"| {name} | {t['files']} | {100 * t['der']:.1f} % | {100 * low:.1f}-{100 * high:.1f} % | "
                     f"{100 * t['missed']:.1f} % | "
                     f"{100 * t['false_alarm']:.1f} % | {100 * t['confusion']:.1f} % | "
                     f"{100 * t['der_no_overlap']:.1f} % | {100 * t['jer']:.1f} % | "
                     f"{100 * t['count_accuracy']:.0f} % | {rtf:.3f} |")
    latency = [f"{name}: {t['latency_s']['median']:.1f} s (90 % within {t['latency_s']['p90']:.1f} s)"
               for name, t, _ in rows if "latency_s" in t]
    return "\n".join(lines + (["", "turn latency (audio after a turn's end before it is final), median:"]
                              + latency if latency else []))


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
    p.add_argument("--sweep", default="plda_threshold", help="the DiarizationSettings field --calibrate sweeps")
    p.add_argument("--thresholds", default="-15,-10,-5,0,5", help="the values --calibrate gives it")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a DiarizationSettings field for this run (repeatable), e.g. --set vad=webrtc")
    p.add_argument("--vad_only", action="store_true", help="score speech/non-speech only (one label)")
    p.add_argument("--overlap", type=float, default=0.0, help="share of turns that overlap the previous one")
    p.add_argument("--webrtc", type=int, choices=(0, 1, 2, 3), help="measure webrtcvad (this mode) as the VAD")
    p.add_argument("--speed", nargs="*", type=float, metavar="MINUTES")
    p.add_argument("--model", help="the model (.keras) to measure or fit the PLDA of (default: the shipped one)")
    p.add_argument("--fit_plda", action="store_true", help="fit the PLDA beside the model on training speakers")
    p.add_argument("--naming", action="store_true", help="enrolled names right and wrong, by naming threshold")
    p.add_argument("--online", action="store_true", help="measure online diarization (diarize_stream) instead")
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
    encoder = SpeakerEncoder(args.model)
    if args.fit_plda:
        fit_plda(data, work, encoder, args.count)
        return
    if args.naming and args.online and args.calibrate:  # sweep the online naming threshold (--thresholds)
        for value in [float(t) for t in args.thresholds.split(",")]:
            print(f"online_naming_threshold {value}", flush=True)
            naming_online(data, work, encoder, args.count, ("calibration",),
                          dataclasses.replace(base, online_naming_threshold=value))
        return
    if args.naming:
        (naming_online if args.online else naming)(data, work, encoder, args.count)
        return
    print(f"settings: {json.dumps(dataclasses.asdict(base))}", flush=True)
    if args.calibrate:
        folders = {c: build(data, work, "calibration", c, args.count, args.overlap) for c in corpora}
        for value in [float(t) for t in args.thresholds.split(",")]:
            settings = dataclasses.replace(base, **{args.sweep: value})
            rows = [(f"calibration {c}", *score_folder(encoder, f, False, settings, args.vad_only, args.online))
                    for c, f in folders.items()]
            print(f"\n{args.sweep} {value}\n{table(rows)}", flush=True)
        return
    rows = []
    for corpus in corpora:
        folder = build(data, work, "test", corpus, args.count, args.overlap)
        for given in (False,) if args.online else (False, True):
            name = f"{corpus}{' (overlap %g)' % args.overlap if args.overlap else ''}, " \
                   f"{'online' if args.online else 'num_speakers given' if given else 'count estimated'}"
            rows.append((name, *score_folder(encoder, folder, given, base, args.vad_only, args.online)))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
