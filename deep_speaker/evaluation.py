"""Verification evaluation: trials, scores, EER/minDCF, and plots.

Trials come from a folder (speaker = folder; every pair of files is a trial)
or from a list of `label path1 path2` lines (label 1/target or 0/nontarget).
Every file is embedded once; a trial's score is the cosine similarity. The
same embeddings give the closed-set identification figures (top-1/top-5, one
enrolment utterance per speaker, `identification.identification_accuracy`).

A list's files are named by their own speaker folders (`corpus.file_speaker_id`:
`set/1688/142285/1688-142285-0000.flac` and `set/1688/x.flac` are speaker 1688).
Where that cannot say who is who (a file directly in the audio root, or speakers
that contradict a trial's label) identification, the speaker bootstrap interval
and the speaker plots are left out, with the reason, rather than guessed.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deep_speaker.corpus import discover_utterances, file_speaker_id
from deep_speaker.errors import InputError
from deep_speaker.io_utils import atomic_write_text
from deep_speaker.metrics import all_pairs_trials, det_curve, score_trials, verification_report
from deep_speaker.identification import identification_accuracy

log = logging.getLogger(__name__)

_LABELS = {"1": 1, "target": 1, "0": 0, "nontarget": 0}


@dataclass
class Trials:
    files: list[str]  # every file once
    speakers: list[str] | None  # speaker id of each file; None when the trials do not say
    first: np.ndarray  # (num_trials,) index into files
    second: np.ndarray
    labels: np.ndarray  # (num_trials,) 1 target, 0 non-target
    no_speakers_reason: str = ""  # why `speakers` is None


def trials_from_folder(audio_dir: str | Path) -> Trials:
    """All unordered pairs of the files of a folder-per-speaker tree."""
    utterances = discover_utterances([audio_dir])
    files = [str(u.path) for u in utterances]
    speakers = [u.speaker_id for u in utterances]
    first, second, labels = all_pairs_trials(speakers)
    return Trials(files, speakers, first, second, labels.astype(np.int8))


def trials_from_list(trials_file: str | Path, audio_root: str | Path) -> Trials:
    """Parse `label path1 path2` lines (paths relative to audio_root); '#' starts a comment."""
    audio_root = Path(audio_root)
    index: dict[str, int] = {}
    first, second, labels, numbers = [], [], [], []
    for number, line in enumerate(Path(trials_file).read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or parts[0].lower() not in _LABELS:
            raise InputError(f"{trials_file}:{number}: expected 'label path1 path2' with label 1/0 or "
                             f"target/nontarget, got {line!r}")
        ids = []
        for name in parts[1:]:
            path = str(audio_root / name)
            ids.append(index.setdefault(path, len(index)))
        first.append(ids[0])
        second.append(ids[1])
        labels.append(_LABELS[parts[0].lower()])
        numbers.append(number)
    if not labels:
        raise InputError(f"{trials_file}: no trials")
    files = list(index)
    speakers, reason = _speakers_of_listed_files(files, audio_root, trials_file, numbers, first, second, labels)
    return Trials(files, speakers, np.array(first), np.array(second), np.array(labels, dtype=np.int8), reason)


def _speakers_of_listed_files(files, audio_root, trials_file, numbers, first, second, labels
                              ) -> tuple[list[str] | None, str]:
    """(speaker of each file, "") by its speaker folder (`corpus.file_speaker_id`), or
    (None, why) when folders cannot say who is who: a file lies directly in the audio
    root (or in no folder at all), or a trial's label contradicts the folders."""
    root = Path(os.path.abspath(audio_root))
    speakers = []
    for path in files:
        full = Path(os.path.abspath(path))  # `..` resolved by name, symbolic links kept: the layout as listed
        if full.parent == root or full.parent == full.parent.parent:
            return None, (f"{full.name} lies directly in the audio root {audio_root}, not in a speaker folder, "
                          f"so the trials do not say who it is")
        speakers.append(file_speaker_id(full))
    for number, i, j, label in zip(numbers, first, second, labels):
        if label and speakers[i] != speakers[j]:
            return None, (f"{trials_file}:{number}: a target trial pairs files of speakers {speakers[i]!r} and "
                          f"{speakers[j]!r} as their folders name them, so the folders do not say who is who")
        if not label and speakers[i] == speakers[j]:
            return None, (f"{trials_file}:{number}: a non-target trial pairs two files of speaker {speakers[i]!r} "
                          f"as their folders name them, so the folders do not say who is who")
    return speakers, ""


def evaluate_trials(encoder, trials: Trials, output_dir: str | Path, plot_embeddings: bool = False) -> dict:
    """Embed every file with `encoder` (a `SpeakerEncoder`), score, write
    scores.tsv, metrics.json and the plots; returns the metrics."""
    from deep_speaker import plots

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    embeddings, ok, failed = encoder.embed_files(trials.files, skip=True, progress=len(trials.files) >= 20)
    for path, reason in failed:
        log.warning("skipped %s: %s", path, reason)
    row_of = np.full(len(trials.files), -1)
    ok_set = {path: row for row, path in enumerate(ok)}
    for position, path in enumerate(trials.files):
        row_of[position] = ok_set.get(path, -1)
    usable = (row_of[trials.first] >= 0) & (row_of[trials.second] >= 0)
    first, second = row_of[trials.first][usable], row_of[trials.second][usable]
    labels = trials.labels[usable]
    if not (np.any(labels == 1) and np.any(labels == 0)):
        raise InputError(f"{int(np.sum(labels == 1))} target and {int(np.sum(labels == 0))} non-target trials could "
                         f"be scored: an EER needs both (two speakers at least, one of them with two usable files)")
    cosines = score_trials(embeddings, first, second)
    normalizer = getattr(encoder, "score_normalizer", None)
    scores = cosines if normalizer is None else normalizer.trial_scores(embeddings, embeddings, first, second)
    if trials.speakers is not None:
        speaker_by_file = dict(zip(trials.files, trials.speakers))
        speaker_of_row = np.array([speaker_by_file[path] for path in ok], dtype=object)
        sides = (speaker_of_row[first], speaker_of_row[second])
    else:  # no speaker bootstrap interval, no identification, no speaker plots
        speaker_of_row, sides = None, (None, None)
    report = verification_report(scores, labels, *sides)
    report["score"] = "cosine" if normalizer is None else "as-norm"
    if normalizer is not None:  # the raw cosine's figures beside the normalised ones
        report["raw_cosine"] = verification_report(cosines, labels, *sides)
    report.update(model=str(encoder.resolved.path), num_files=len(ok), skipped_files=len(failed),
                  skipped_trials=int((~usable).sum()))
    report.update(_identification(embeddings, speaker_of_row, trials.no_speakers_reason))
    lines = ["label\tscore\tcosine\tfile1\tfile2"] + [
        f"{label}\t{score:.6f}\t{cosine:.6f}\t{ok[i]}\t{ok[j]}"
        for label, score, cosine, i, j in zip(labels, scores, cosines, first, second)]
    atomic_write_text(output_dir / "scores.tsv", "\n".join(lines) + "\n")
    atomic_write_text(output_dir / "metrics.json", json.dumps(report, indent=2))

    fpr, fnr, _ = det_curve(scores, labels)
    plots.plot_det_curve(fpr, fnr, output_dir / "det_curve.png", eer=report["eer"], label="deep-speaker")
    plots.plot_score_histograms(scores, labels, output_dir / "score_histograms.png",
                                threshold=report["eer_threshold"])
    speakers_ok = list(speaker_of_row) if speaker_of_row is not None and len(ok) < 5000 else None
    if speakers_ok is not None:
        plots.plot_similarity_matrix(embeddings, speakers_ok, output_dir / "similarity_matrix.png")
        if plot_embeddings:
            plots.plot_embeddings_2d(embeddings, speakers_ok, output_dir / "embeddings_2d.png")
    return report


def _identification(embeddings, speaker_of_row, no_speakers_reason: str) -> dict:
    """`identification_accuracy`'s figures, or the same keys as None with
    ``identification_not_available`` saying why."""
    if speaker_of_row is None:
        return {"identification_speakers": None, "identification_queries": None, "top1_accuracy": None,
                "top5_accuracy": None, "identification_not_available": no_speakers_reason}
    result = identification_accuracy(embeddings, [str(s) for s in speaker_of_row])
    if result["top1_accuracy"] is None:
        result["identification_not_available"] = (
            f"{result['identification_speakers']} speaker(s) and {result['identification_queries']} file(s) "
            f"beyond each speaker's first: it needs two speakers and a second file of one")
    return result
