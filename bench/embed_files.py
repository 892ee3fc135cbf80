#!/usr/bin/env python
"""Benchmark of `SpeakerEncoder.embed_files` (not a test): files per second of
`embed_files` (the worker pool prepares the next files while the model runs)
against one-file-at-a-time `embed_file` calls, on the same real files, with one
loaded model, in one run; prints the ratio (goal >= 1.5x on 2 cores).

Also prints the profile of the one-at-a-time run: seconds (wall and CPU) spent
preparing files (decode, resample, trim, features, speech check) and in the
model. On otherwise idle cores perfect overlap gives at most (prepare + model) /
max(prepare, model), and never more than cores x wall / CPU seconds of the
one-at-a-time loop: when that loop already keeps every core busy (the model's
two TensorFlow threads, numpy and soxr in the preparation), there is no idle
core for the pool to fill, and that bound, not the pool, limits the ratio. On a machine busy with other jobs (ours runs a training
job on both cores) a process with more runnable threads also gets a larger share
of the CPUs, which the ratio includes; the CPU seconds show how much work each
way did.

    python bench/embed_files.py                      # 1000 files: speechocean762 + speechcommands
    python bench/embed_files.py --files 200 --pool thread,process
    python bench/embed_files.py --checkpoint best.keras
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
SHARED = REPO_ROOT.parent / "shared" / "data"
SETS = ("speechocean762", "speechcommands")


def real_files(count: int, sets=SETS) -> list[str]:
    """`count` files, taken alternately from each set in sorted order (reproducible)."""
    per_set = []
    for name in sets:
        files = sorted(str(p) for p in (SHARED / name).rglob("*") if p.suffix in (".flac", ".ogg", ".wav"))
        if not files:
            sys.exit(f"no audio under {SHARED / name}")
        per_set.append(files)
    chosen = [f for group in zip(*per_set) for f in group][:count]
    if len(chosen) < count:
        sys.exit(f"only {len(chosen)} files available")
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--checkpoint", default=None, help="default: the pretrained model")
    p.add_argument("--pool", default="thread", help="comma list of pool kinds to time: thread, process")
    p.add_argument("--workers", type=int, default=None, help="default: number of CPUs")
    p.add_argument("--batch_size", type=int, default=32)
    args = p.parse_args()

    from deep_speaker import encoder as encoder_module
    from deep_speaker.audio import AudioError
    from deep_speaker.encoder import SpeakerEncoder, _prepare_file
    from deep_speaker.scoring import ScoringError

    paths = real_files(args.files)
    encoder = SpeakerEncoder(args.checkpoint, workers=args.workers)
    print(f"{encoder.resolved.line()}; {len(paths)} files from {', '.join(SETS)}; "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    encoder.embed_files(paths[:8])  # warm-up: TensorFlow's first calls

    # One at a time, with its profile; files no path can embed (e.g. under 100 ms of voice) are left out of all runs.
    prepare_s = model_s = prepare_cpu = model_cpu = 0.0
    usable = []
    for path in paths:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            features = _prepare_file(path, encoder.config, True)
            t1, c1 = time.perf_counter(), time.process_time()
            encoder._embed_prepared(path, features, True)
        except (AudioError, ScoringError) as error:
            print(f"left out: {error}")
            continue
        t2, c2 = time.perf_counter(), time.process_time()
        prepare_s, prepare_cpu = prepare_s + t1 - t0, prepare_cpu + c1 - c0
        model_s, model_cpu = model_s + t2 - t1, model_cpu + c2 - c1
        usable.append(path)
    paths = usable
    # The public call, for the record (same work, no profiling in between).
    started, cpu = time.perf_counter(), time.process_time()
    plain = [encoder.embed_file(path) for path in paths]
    plain_s, plain_cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"one at a time (embed_file): {len(paths) / plain_s:.1f} files/s ({plain_s:.1f} s, {plain_cpu:.1f} CPU s); "
          f"profile of the same loop: prepare {prepare_s:.1f} s ({prepare_cpu:.1f} CPU s), model {model_s:.1f} s "
          f"({model_cpu:.1f} CPU s); on otherwise idle cores, perfect overlap would give at most "
          f"{(prepare_s + model_s) / max(prepare_s, model_s):.2f}x (by wall time), "
          f"{(prepare_cpu + model_cpu) / max(prepare_cpu, model_cpu):.2f}x (by CPU time); the loop already keeps "
          f"{plain_cpu / plain_s:.2f} of {os.cpu_count()} cores busy, so no overlap can beat "
          f"{os.cpu_count() * plain_s / plain_cpu:.2f}x here (cores x wall / CPU s)", flush=True)

    import numpy as np

    for kind in args.pool.split(","):
        encoder_module._POOL_KIND = kind
        started, cpu = time.perf_counter(), time.process_time()
        batched = encoder.embed_files(paths, batch_size=args.batch_size)
        batched_s, batched_cpu = time.perf_counter() - started, time.process_time() - cpu
        same = bool(np.array_equal(batched, np.stack(plain)))
        print(f"embed_files ({kind} pool, {encoder.workers} workers): {len(paths) / batched_s:.1f} files/s "
              f"({batched_s:.1f} s, {batched_cpu:.1f} CPU s in this process); ratio {plain_s / batched_s:.2f}x; identical to embed_file: {same}", flush=True)


if __name__ == "__main__":
    main()
