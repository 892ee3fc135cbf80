#!/usr/bin/env python
"""Benchmark of the model's runtimes (not a test): ONNX Runtime against Keras on
TensorFlow, side by side, on the same files, in one run (issue 27).

Three parts, each printing ratios measured in this run (the machine is noisy:
compare, don't trust absolute times):

- compare: `comp_cos.py --files a b` in a fresh process per run, alternating the
  runtimes (`--repeats` each): median wall time and peak RSS; the ratio onnx/keras
  (goal <= 0.35 of the wall time, and much less memory).
- throughput: `SpeakerEncoder.embed_files` on real files in a fresh process per
  setting: cold start (interpreter + import + model load), files per second and
  peak RSS; ONNX Runtime at several intra-op thread counts against the decode pool
  (`--threads`, `--workers`), and Keras at the default; the embeddings of every
  setting against Keras's (lowest cosine).
- parity: every file of vctk-mini and of the held-out LibriSpeech set (built as
  bench/heldout_sets.py builds it) embedded by both runtimes: the lowest cosine
  (goal >= 0.9999), and each set's all-pairs EER from both (goal: within 0.05 points).

    python bench/runtimes.py                       # all three parts
    python bench/runtimes.py --parts compare --repeats 5
    python bench/runtimes.py --parts throughput --files 300 --threads 1,2,0 --workers 1,2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))
SHARED = REPO_ROOT.parent / "shared" / "data"
VCTK_MINI = SHARED / "vctk-mini" / "VCTK-Corpus" / "wav48"

from embed_files import real_files  # noqa: E402  (the same 1000-file choice as bench/embed_files.py)

# Runs in a fresh interpreter: cold start, embed_files, peak RSS; embeddings saved for the parent.
THROUGHPUT_CHILD = """
import json, resource, sys, time
started = time.perf_counter()
settings = json.loads(sys.argv[1])
import numpy as np
from deep_speaker import runtimes
runtimes.ONNX_INTRA_OP_THREADS = settings["threads"]
from deep_speaker.encoder import SpeakerEncoder
encoder = SpeakerEncoder(runtime=settings["runtime"], workers=settings["workers"])
encoder.embed_files(settings["files"][:1])  # the first call (Keras: its first trace)
cold_s = time.perf_counter() - started
t0 = time.perf_counter()
embeddings, ok, failed = encoder.embed_files(settings["files"], skip=True)
seconds = time.perf_counter() - t0
np.save(settings["out"], embeddings)
print(json.dumps({"runtime": encoder.runtime, "cold_s": cold_s, "seconds": seconds, "files": len(ok),
                  "failed": len(failed), "ok": ok, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _spawn(command: list[str]) -> tuple[float, float, str, str, int]:
    """Run one child: (wall s, its own peak RSS in MB, stdout, stderr, exit code)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return wall, usage.ru_maxrss / 1024, out.read(), err.read(), child.returncode


def part_compare(repeats: int) -> None:
    first, second = sorted(VCTK_MINI.glob("p225/*.wav"))[0], sorted(VCTK_MINI.glob("p226/*.wav"))[0]
    runs: dict[str, list[tuple[float, float]]] = {"onnx": [], "keras": []}
    for _ in range(repeats):
        for runtime in runs:  # alternating, so drift in the machine's load hits both
            wall, rss, out, err, code = _spawn([sys.executable, str(REPO_ROOT / "scripts" / "comp_cos.py"), "--files",
                                                str(first), str(second), "--runtime", runtime])
            if code != 0:
                sys.exit(f"comp_cos.py --runtime {runtime} failed: {err.strip()}")
            runs[runtime].append((wall, rss))
    medians = {r: (statistics.median(w for w, _ in v), statistics.median(m for _, m in v)) for r, v in runs.items()}
    for runtime, (wall, rss) in medians.items():
        print(f"compare: comp_cos.py --files (2 vctk-mini files) --runtime {runtime}: median {wall:.2f} s wall, "
              f"{rss:.0f} MB peak RSS over {repeats} runs ({', '.join(f'{w:.2f}' for w, _ in runs[runtime])} s)")
    print(f"compare: onnx / keras = {medians['onnx'][0] / medians['keras'][0]:.2f} of the wall time (goal <= 0.35), "
          f"{medians['onnx'][1] / medians['keras'][1]:.2f} of the peak RSS", flush=True)


def part_throughput(count: int, threads: list[int], workers: list[int]) -> None:
    import numpy as np

    files = real_files(count)
    settings = [("keras", 0, workers[-1])] + [("onnx", t, w) for t in threads for w in workers]
    results, reference = [], None
    with tempfile.TemporaryDirectory() as work:
        for runtime, thread_count, worker_count in settings:
            out = str(Path(work) / f"{runtime}-{thread_count}-{worker_count}.npy")
            spec = {"runtime": runtime, "threads": thread_count, "workers": worker_count, "files": files, "out": out}
            wall, rss, stdout, stderr, code = _spawn([sys.executable, "-c", THROUGHPUT_CHILD, json.dumps(spec)])
            if code != 0:
                sys.exit(f"embed_files with {runtime} failed: {stderr.strip()[-2000:]}")
            row = json.loads(stdout.strip().splitlines()[-1])
            embeddings = np.load(out)
            if reference is None:
                reference = (row["ok"], embeddings)
            same_files = row["ok"] == reference[0]
            cosine = float(np.min(np.sum(embeddings * reference[1], axis=1))) if same_files else float("nan")
            label = f"{runtime:5s} intra-op threads {thread_count or 'auto'}, decode workers {worker_count}"
            results.append((label, row["files"] / row["seconds"]))
            print(f"throughput: {label}: cold start {row['cold_s']:.2f} s, {row['files'] / row['seconds']:.1f} files/s "
                  f"({row['files']} files, {row['failed']} left out), peak RSS {row['rss_mb']:.0f} MB, lowest cosine "
                  f"to keras {cosine:.6f}", flush=True)
    keras_rate = results[0][1]
    best = max(results[1:], key=lambda r: r[1])
    print(f"throughput: best onnx setting ({best[0].strip()}) / keras = {best[1] / keras_rate:.2f}x files/s (goal >= 1)")


def _heldout_librispeech(work: Path) -> Path:
    subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "heldout_sets.py"), str(work)], check=True,
                   stdout=subprocess.DEVNULL)
    return work / "librispeech"


def part_parity() -> None:
    import numpy as np

    from deep_speaker.encoder import SpeakerEncoder
    from deep_speaker.metrics import all_pairs_trials, equal_error_rate

    encoders = {runtime: SpeakerEncoder(runtime=runtime) for runtime in ("onnx", "keras")}
    with tempfile.TemporaryDirectory() as work:
        sets = {"vctk-mini": VCTK_MINI, "held-out LibriSpeech": _heldout_librispeech(Path(work))}
        for name, folder in sets.items():
            files = sorted(p for p in folder.rglob("*") if p.suffix in (".wav", ".flac"))
            speakers = [p.relative_to(folder).parts[0] for p in files]
            embedded = {r: e.embed_files(files, skip=True) for r, e in encoders.items()}
            if embedded["onnx"].files != embedded["keras"].files:
                print(f"parity: {name}: the runtimes left out different files")
            ok = [files.index(Path(p)) for p in embedded["keras"].files]
            cosines = np.sum(embedded["onnx"].embeddings * embedded["keras"].embeddings, axis=1)
            i, j, labels = all_pairs_trials([speakers[k] for k in ok])
            eers = {}
            for runtime, result in embedded.items():
                scores = np.sum(result.embeddings[i] * result.embeddings[j], axis=1)
                eers[runtime] = 100 * equal_error_rate(scores, labels)[0]
            print(f"parity: {name}: {len(ok)} of {len(files)} files, lowest cosine onnx/keras {cosines.min():.7f} "
                  f"(goal >= 0.9999), mean {cosines.mean():.7f}; raw-cosine EER {eers['onnx']:.3f} % onnx, "
                  f"{eers['keras']:.3f} % keras, difference {abs(eers['onnx'] - eers['keras']):.3f} points "
                  f"(goal <= 0.05)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="compare,throughput,parity")
    p.add_argument("--repeats", type=int, default=3, help="comp_cos.py runs per runtime")
    p.add_argument("--files", type=int, default=300, help="files for throughput")
    p.add_argument("--threads", default="1,2", help="ONNX Runtime intra-op threads to try (0: its default)")
    p.add_argument("--workers", default="1,2", help="decode workers of embed_files to try")
    args = p.parse_args()
    print(f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    parts = args.parts.split(",")
    if "compare" in parts:
        part_compare(args.repeats)
    if "throughput" in parts:
        part_throughput(args.files, [int(t) for t in args.threads.split(",")], [int(w) for w in args.workers.split(",")])
    if "parity" in parts:
        part_parity()


if __name__ == "__main__":
    main()
