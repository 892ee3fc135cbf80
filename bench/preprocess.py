#!/usr/bin/env python
"""Benchmark of preprocess.py's two stages (not a test).

Stage 1, the audio cache: `build_audio_cache` into a temp folder, against a
reference that only decodes (soundfile) and resamples (soxr HQ) the same files
with the same number of worker processes. Target: ours / reference <= 1.5.

Stage 2, the training inputs: `generate_training_inputs` on caches of 10, 50 and
all speakers (temp caches of symlinks to the stage 1 pickles plus a filtered
index), each in a fresh subprocess so its peak RSS is its own. Subsets are the
speakers with the most audio, so the largest speaker is in every run and peak
RSS is comparable. Targets: time per hour of audio and peak RSS flat in the
number of speakers, peak RSS <= 2 GB.

    python bench/preprocess.py                  # ../shared/data/librispeech, all cores
    python bench/preprocess.py --audio_dir DIR  # ... plus DIR
    python bench/preprocess.py --quick          # a small subset, as a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import soxr  # noqa: E402

from deep_speaker.audio_cache import (AUDIO_CACHE_DIR, INDEX_COLUMNS, INDEX_DIR, build_audio_cache,  # noqa: E402
                                      read_cache_index, speakers_in_cache)
from deep_speaker.config import Config  # noqa: E402
from deep_speaker.corpus import discover_utterances  # noqa: E402
from deep_speaker.parallel import default_workers  # noqa: E402

DEFAULT_AUDIO_DIR = REPO_ROOT.parent / "shared" / "data" / "librispeech"
SPEAKER_COUNTS = (10, 50, None)  # None: all speakers
QUICK_MANY_UTTERANCES = 4  # --quick: files kept per speaker ...
QUICK_MAX_FILES = 60  # ... and files in all


def machine_facts(workers: int) -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"machine: {platform.machine()} {platform.system()} {platform.release()}, cpu_count={os.cpu_count()}, "
            f"usable cpus={cpus}, workers={workers}\n"
            f"python {platform.python_version()}, numpy {np.__version__}, soundfile {soundfile.__version__} "
            f"(libsndfile {soundfile.__libsndfile_version__}), soxr {soxr.__version__}")


# --- stage 1 ---------------------------------------------------------------------------------

def _reference_one(path: str) -> float:
    """What any pipeline must do: decode, mix to mono, resample to 8 kHz (soxr HQ)."""
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1, dtype=np.float32)
    soxr.resample(mono, rate, 8000, quality="HQ")
    return len(mono) / rate


def reference_decode_resample(paths: list[str], workers: int) -> tuple[float, float]:
    """(wall seconds, audio seconds) of the reference over `paths` in a process pool."""
    started = time.monotonic()
    chunksize = max(1, min(16, len(paths) // (max(workers, 1) * 8)))
    if workers <= 1:
        seconds = sum(map(_reference_one, paths))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            seconds = sum(pool.map(_reference_one, paths, chunksize=chunksize))
    return time.monotonic() - started, seconds


def warm_page_cache(paths: list[str]) -> int:
    """Read every file once so neither timed run pays the first disk read."""
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                total += len(chunk)
    return total


def quick_corpus(audio_dirs: list[Path], target: Path) -> Path:
    """A symlink copy of at most QUICK_MAX_FILES files, QUICK_MANY_UTTERANCES per
    speaker, speakers with most utterances first, each file kept at its path below
    its corpus root (so its ids are parsed alike)."""
    by_speaker: dict[str, list[tuple[Path, Path]]] = {}
    for number, audio_dir in enumerate(audio_dirs):
        root = Path(audio_dir).resolve()
        for utterance in discover_utterances([root]):
            link = target / f"corpus{number}" / root.name / utterance.path.relative_to(root)
            by_speaker.setdefault(utterance.speaker_id, []).append((link, utterance.path))
    chosen = 0
    for speaker in sorted(by_speaker, key=lambda s: (-len(by_speaker[s]), s)):
        for link, source in by_speaker[speaker][:QUICK_MANY_UTTERANCES]:
            if chosen >= QUICK_MAX_FILES:
                return target
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)
            chosen += 1
    return target


def bench_cache_stage(audio_dirs: list[str], cache_dir: Path, workers: int) -> dict:
    paths = [str(u.path) for u in discover_utterances(audio_dirs)]
    megabytes = warm_page_cache(paths) / 1e6
    print(f"\n== stage 1: audio cache, {len(paths)} files ({megabytes:.0f} MB), {workers} workers ==", flush=True)
    ref_wall, ref_audio = reference_decode_resample(paths, workers)
    summary = build_audio_cache(audio_dirs, cache_dir, Config(), regenerate=True, workers=workers)
    ours_wall = summary.wall_seconds
    print(f"ours      : {ours_wall:7.2f} s wall, {summary.cached / ours_wall:7.1f} files/s, "
          f"{summary.audio_seconds / ours_wall:8.1f} audio-s/s ({summary.cached} cached, "
          f"{len(summary.failed)} failed, {summary.audio_seconds / 3600:.2f} h)")
    print(f"reference : {ref_wall:7.2f} s wall, {len(paths) / ref_wall:7.1f} files/s, "
          f"{ref_audio / ref_wall:8.1f} audio-s/s (soundfile decode + soxr HQ resample only)")
    ratio = ours_wall / ref_wall
    print(f"ratio ours/reference: {ratio:.2f} (target <= 1.5: {'ok' if ratio <= 1.5 else 'MISSED'})")
    for path, reason in summary.failed[:5]:
        print(f"  failed: {path}: {reason}")
    return {"files": len(paths), "ours_s": ours_wall, "reference_s": ref_wall, "ratio": ratio}


# --- stage 2 ---------------------------------------------------------------------------------

def subset_cache(full_cache: Path, speakers: list[str], by_speaker: dict[str, list[str]], index: dict,
                 target: Path) -> float:
    """A cache of `speakers` only: symlinks to their pickles and a filtered index.
    Returns the hours of audio it holds."""
    pickles, index_dir = target / AUDIO_CACHE_DIR, target / INDEX_DIR
    pickles.mkdir(parents=True)
    index_dir.mkdir()
    rows, seconds = [], 0.0
    for speaker in speakers:
        for name in by_speaker[speaker]:
            (pickles / name).symlink_to(full_cache / AUDIO_CACHE_DIR / name)
            rows.append("\t".join(str(index[name][c]) for c in INDEX_COLUMNS))
            seconds += index[name]["duration_s"]
    (index_dir / "subset.tsv").write_text("\n".join(rows) + "\n")
    return seconds / 3600


def _inputs_child(cache_dir: str, workers: int) -> None:
    """Run in a fresh interpreter: stage 2 on one cache, JSON facts on stdout."""
    from deep_speaker.training_inputs import generate_training_inputs

    summary = generate_training_inputs(cache_dir, Config(), unseen_speakers=[], workers=workers)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"wall_s": summary.wall_seconds, "written": summary.written, "failed": len(summary.failed),
                      "main_rss_mb": own, "worker_rss_mb": workers_peak}))


def bench_inputs_stage(full_cache: Path, work_dir: Path, workers: int) -> list[dict]:
    index = read_cache_index(full_cache)
    by_speaker = speakers_in_cache(index)
    hours_of = {s: sum(index[n]["duration_s"] for n in names) for s, names in by_speaker.items()}
    ranked = sorted(by_speaker, key=lambda s: (-hours_of[s], s))
    print(f"\n== stage 2: training inputs, {workers} workers; subsets = the speakers with most audio "
          f"(largest: {ranked[0]}, {hours_of[ranked[0]] / 60:.1f} min) ==", flush=True)
    print(f"{'speakers':>8} {'utts':>6} {'audio h':>8} {'wall s':>8} {'s per audio h':>14} "
          f"{'peak RSS main MB':>17} {'largest worker MB':>18}")
    results = []
    for count in SPEAKER_COUNTS:
        speakers = ranked if count is None else ranked[:count]
        if count is not None and count >= len(ranked):
            continue  # the same as "all"
        target = work_dir / f"inputs-{len(speakers)}"
        hours = subset_cache(full_cache, speakers, by_speaker, index, target)
        command = [sys.executable, str(Path(__file__).resolve()), "--_inputs_child", str(target),
                   "--workers", str(workers)]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
        if done.returncode != 0:
            print(f"{len(speakers):>8} child failed ({done.returncode}): {done.stderr.strip()[-500:]}")
            continue
        facts = json.loads(done.stdout.strip().splitlines()[-1])
        utterances = sum(len(by_speaker[s]) for s in speakers)
        peak = max(facts["main_rss_mb"], facts["worker_rss_mb"])
        print(f"{len(speakers):>8} {utterances:>6} {hours:8.3f} {facts['wall_s']:8.2f} "
              f"{facts['wall_s'] / hours:14.1f} {facts['main_rss_mb']:17.0f} {facts['worker_rss_mb']:18.0f}"
              + ("" if peak <= 2048 else "  over 2 GB") + (f"  {facts['failed']} failed" if facts["failed"] else ""))
        results.append({"speakers": len(speakers), "hours": hours, "wall_s": facts["wall_s"],
                        "process_wall_s": wall, **facts})
        shutil.rmtree(target)
    if len(results) >= 2:
        per_hour = [r["wall_s"] / r["hours"] for r in results]
        rss = [max(r["main_rss_mb"], r["worker_rss_mb"]) for r in results]
        print(f"time per audio hour: {min(per_hour):.1f}-{max(per_hour):.1f} s; "
              f"peak RSS {min(rss):.0f}-{max(rss):.0f} MB "
              f"(flat: main-process RSS grows {results[-1]['main_rss_mb'] / results[0]['main_rss_mb']:.2f}x "
              f"from {results[0]['speakers']} to {results[-1]['speakers']} speakers)")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--audio_dir", action="append", default=[], metavar="DIR",
                   help=f"corpus folder added to {DEFAULT_AUDIO_DIR} (repeatable)")
    p.add_argument("--workers", type=int, default=default_workers(), help="worker processes for both stages")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run on at most {QUICK_MAX_FILES} files, {QUICK_MANY_UTTERANCES} per speaker")
    p.add_argument("--keep", action="store_true", help="keep the temp folder and print its path")
    p.add_argument("--_inputs_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._inputs_child:
        _inputs_child(args._inputs_child, args.workers)
        return 0

    audio_dirs = [DEFAULT_AUDIO_DIR, *map(Path, args.audio_dir)]
    missing = [d for d in audio_dirs if not d.is_dir()]
    if missing:
        print(f"error: audio folder not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    print(machine_facts(args.workers))
    work_dir = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    try:
        if args.quick:
            audio_dirs = [quick_corpus(audio_dirs, work_dir / "quick-corpus")]
            print(f"--quick: {QUICK_MAX_FILES} files at most, {QUICK_MANY_UTTERANCES} per speaker")
        print("corpus: " + ", ".join(map(str, audio_dirs)))
        full_cache = work_dir / "cache"
        bench_cache_stage([str(d) for d in audio_dirs], full_cache, args.workers)
        bench_inputs_stage(full_cache, work_dir, args.workers)
    finally:
        if args.keep:
            print(f"kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
