"""Diarization error rates by `pyannote.metrics`, the field's standard scorer (the `eval` extra).

DER = (missed speech + false alarm + speaker confusion) / reference speech, with
the optimal one-to-one mapping of hypothesis to reference speakers, and no
scoring within `COLLAR_S` (0.25 s) of each reference boundary, as in the NIST
RT evaluations; reported over all speech and with overlapped speech left out
(`skip_overlap`). JER (Jaccard error rate, DIHARD II) weighs every reference
speaker equally. Totals are over all files (time-weighted), as pyannote sums them.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

COLLAR_S = 0.25
Segments = Sequence[tuple[float, float, str]]


@dataclass
class FileScore:
    uri: str
    reference_speakers: int
    hypothesis_speakers: int
    speech_s: float  # reference speech
    missed_s: float
    false_alarm_s: float
    confusion_s: float
    der: float
    der_no_overlap: float
    jer: float

    def row(self) -> dict:
        return {"file": self.uri, "speakers": self.reference_speakers, "found": self.hypothesis_speakers,
                "speech_s": round(self.speech_s, 2), "der": round(self.der, 4),
                "missed": round(self._share(self.missed_s), 4), "false_alarm": round(self._share(self.false_alarm_s), 4),
                "confusion": round(self._share(self.confusion_s), 4), "der_no_overlap": round(self.der_no_overlap, 4),
                "jer": round(self.jer, 4)}

    def _share(self, seconds: float) -> float:
        return seconds / self.speech_s if self.speech_s else 0.0


def _annotation(segments: Segments, uri: str):
    from pyannote.core import Annotation, Segment

    annotation = Annotation(uri=uri)
    for k, (start, end, label) in enumerate(segments):
        if end > start:
            annotation[Segment(float(start), float(end)), k] = label
    return annotation


class DiarizationScorer:
    """Accumulates files; `total()` gives the set's figures."""

    def __init__(self, collar: float = COLLAR_S):
        from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate

        self.der = DiarizationErrorRate(collar=collar)
        self.der_no_overlap = DiarizationErrorRate(collar=collar, skip_overlap=True)
        self.jer = JaccardErrorRate(collar=collar)
        self.files: list[FileScore] = []

    def add(self, uri: str, reference: Segments, hypothesis: Segments) -> FileScore:
        from pyannote.core import Segment, Timeline

        ref, hyp = _annotation(reference, uri), _annotation(hypothesis, uri)
        extent = ref.get_timeline().extent() if ref else Segment(0, 0)
        if hyp:
            extent = extent | hyp.get_timeline().extent() if ref else hyp.get_timeline().extent()
        uem = Timeline([extent], uri=uri)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detail = self.der(ref, hyp, uem=uem, detailed=True)
            plain = self.der_no_overlap(ref, hyp, uem=uem)
            jer = self.jer(ref, hyp, uem=uem)
        score = FileScore(uri, len(ref.labels()), len(hyp.labels()), detail["total"], detail["missed detection"],
                          detail["false alarm"], detail["confusion"], float(detail["diarization error rate"]),
                          float(plain), float(jer))
        self.files.append(score)
        return score

    def total(self) -> dict:
        """The set's DER (and its parts, as shares of reference speech), DER without overlap, JER and
        speaker-count accuracy."""
        speech = sum(f.speech_s for f in self.files)
        share = (lambda seconds: seconds / speech if speech else 0.0)
        return {"files": len(self.files), "speech_s": round(speech, 1),
                "der": float(abs(self.der)), "missed": share(sum(f.missed_s for f in self.files)),
                "false_alarm": share(sum(f.false_alarm_s for f in self.files)),
                "confusion": share(sum(f.confusion_s for f in self.files)),
                "der_no_overlap": float(abs(self.der_no_overlap)), "jer": float(abs(self.jer)),
                "count_accuracy": (sum(f.reference_speakers == f.hypothesis_speakers for f in self.files)
                                   / len(self.files)) if self.files else 0.0,
                "der_interval": self.der_interval()}

    def der_interval(self, resamples: int = 2000, seed: int = 0) -> list[float]:
        """A 95 % bootstrap interval of the set's DER, files drawn with replacement (seeded): how much the
        figure owes to which conversations happen to be in the set."""
        import numpy as np

        if not self.files:
            return [0.0, 0.0]
        errors = np.array([f.missed_s + f.false_alarm_s + f.confusion_s for f in self.files])
        speech = np.array([f.speech_s for f in self.files])
        draws = np.random.default_rng(seed).integers(0, len(self.files), (resamples, len(self.files)))
        ders = errors[draws].sum(axis=1) / np.maximum(speech[draws].sum(axis=1), 1e-9)
        return [round(float(v), 4) for v in np.percentile(ders, [2.5, 97.5])]


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".sph", ".aiff", ".aif")


def evaluate_folder(encoder, folder, output_dir, *, given_count: bool = False, online: bool = False,
                    plots: bool = True) -> dict:
    """Diarize every audio file of `folder` that has an RTTM beside it (`<name>.rttm`), score it against that
    reference, and write `output_dir/diarization.tsv` (one row per file), `diarization.json` (the totals
    with the speaker count estimated, given, and with `online` of the online diarizer, with its turns'
    latency) and, with `plots`, `<name>.png` timelines (reference lanes in grey above the speakers found).
    A file that cannot be diarized is listed under "skipped"."""
    import json
    from pathlib import Path

    from deep_speaker.audio import AudioError
    from deep_speaker.diarization import read_rttm
    from deep_speaker.errors import InputError
    from deep_speaker.io_utils import atomic_write_text
    from deep_speaker.scoring import ScoringError

    folder, output_dir = Path(folder), Path(output_dir)
    pairs = [(audio, audio.with_suffix(".rttm")) for audio in sorted(folder.iterdir())
             if audio.suffix.lower() in AUDIO_SUFFIXES and audio.with_suffix(".rttm").is_file()]
    if not pairs:
        raise InputError(f"{folder}: no audio file with an .rttm of the same name beside it")
    output_dir.mkdir(parents=True, exist_ok=True)
    from deep_speaker.online_diarization import diarize_file_online

    kinds = ["estimated"] + (["given"] if given_count else []) + (["online"] if online else [])
    scorers = {kind: DiarizationScorer() for kind in kinds}
    rows, skipped, latencies = [], [], []
    for audio, rttm in pairs:
        references = read_rttm(rttm)
        reference = references.get(audio.stem) or (next(iter(references.values())) if len(references) == 1 else [])
        speakers = len({label for _, _, label in reference})
        try:
            results = {kind: diarize_file_online(encoder, audio, latencies=latencies) if kind == "online" else
                       encoder.diarize(audio, num_speakers=speakers if kind == "given" and speakers else None)
                       for kind in scorers}
        except (AudioError, ScoringError) as error:
            skipped.append({"file": str(audio), "reason": str(error)})
            continue
        for kind, result in results.items():
            row = scorers[kind].add(audio.stem, reference, result.segments).row()
            rows.append({"count": kind, **row})
        if plots:
            from deep_speaker.plots import plot_diarization

            plot_diarization(results["estimated"], output_dir / f"{audio.stem}.png", reference=reference)
    if not rows:
        raise InputError(f"{folder}: none of the {len(pairs)} file(s) could be diarized "
                         f"(first: {skipped[0]['file']}: {skipped[0]['reason']})")
    columns = list(rows[0])
    atomic_write_text(output_dir / "diarization.tsv",
                      "".join("\t".join(str(row[c]) for c in columns) + "\n" for row in [dict(zip(columns, columns))] + rows))
    report = {"collar_s": COLLAR_S, "folder": str(folder), "skipped": skipped,
              **{kind: scorer.total() for kind, scorer in scorers.items()}}
    if online:
        report["online"]["latency_s"] = latency_summary(latencies)
    atomic_write_text(output_dir / "diarization.json", json.dumps(report, indent=2) + "\n")
    return report


def latency_summary(latencies: list[float]) -> dict:
    """Median and 90th percentile of online turns' latency (seconds of audio after a turn's end before it came)."""
    import numpy as np

    if not latencies:
        return {"median": None, "p90": None}
    return {"median": round(float(np.median(latencies)), 2), "p90": round(float(np.percentile(latencies, 90)), 2)}


def summary_line(kind: str, total: dict) -> str:
    """One line of evaluate.py --diarization's output."""
    latency = total.get("latency_s") or {}
    label = {"online": "online (speakers decided as they come)"}.get(kind, f"speakers {kind}")
    return (f"{label}: DER {100 * total['der']:.1f} % (missed {100 * total['missed']:.1f} %, false alarm "
            f"{100 * total['false_alarm']:.1f} %, confusion {100 * total['confusion']:.1f} %), without overlap "
            f"{100 * total['der_no_overlap']:.1f} %, JER {100 * total['jer']:.1f} %, speaker count right in "
            f"{100 * total['count_accuracy']:.0f} % of {total['files']} files ({total['speech_s']:.0f} s of speech; "
            f"collar {COLLAR_S:g} s)" + ("" if latency.get("median") is None else
                                        f"; turns final {latency['median']:.1f} s after they end (median), 90 % "
                                        f"within {latency['p90']:.1f} s"))
