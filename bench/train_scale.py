#!/usr/bin/env python
"""Benchmark of training at growing corpus sizes (not a test).

For each size (hours of 10 ms frames) it builds a synthetic feature store in
--work_dir, runs a training job of a fixed number of steps on it in a fresh
process, records that process's peak RSS, and deletes the store. On the first
(smallest) size it also runs the same job with the in-RAM pipeline (every frame
in one float32 array, as `--input_pipeline memory` does) and compares windows
per second:

- training: windows per second of the trainer's own loop (`training._Trainer`,
  softmax stage) fed by each pipeline: what a user gets. Both trainers live in
  one process and are timed in alternating rounds, best round of each (peak
  RSS is measured in separate processes, one per pipeline and size);
- pipeline alone: windows per second of the `tf.data` input pipeline with no
  model (an upper bound on what it can feed).

Goals (issue 18): peak RSS flat across sizes and <= 2 GB at width 0.25; store /
in-RAM training windows per second >= 0.95 on the smallest size.

The synthetic frames are one random float16 block written over and over (the
values do not matter for speed or memory; generating 9 GB of random numbers
would dominate the run). Speakers talk 25 minutes each (LibriSpeech's
average), utterances last 2-20 s, one in 20 is held out.

    python bench/train_scale.py                      # 10, 50, 200 h: 9.2 GB of disk at the peak (one store at a time)
    python bench/train_scale.py --hours 1,2 --steps 10 --rounds 1   # a quick look
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
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

FRAMES_PER_HOUR = 360_000
SPEAKER_HOURS = 25 / 60


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hours", default="10,50,200", help="store sizes, hours of frames; the first is also run in RAM")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (tracing, autotuning)")
    p.add_argument("--rounds", type=int, default=2, help="alternating store / in-RAM rounds on the first size")
    p.add_argument("--width", type=float, default=0.25, help="model width")
    p.add_argument("--batch_size", type=int, default=32, help="windows per step")
    p.add_argument("--frames", type=int, default=160, help="window length")
    p.add_argument("--pipeline_batches", type=int, default=200, help="batches of the pipeline-alone measurement")
    p.add_argument("--shard_mb", type=float, default=256.0, help="store shard size")
    p.add_argument("--work_dir", default=None, help="where the stores are built (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", choices=("store", "memory", "compare"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- synthetic stores --------------------------------------------------------------------------

def build_store(cache: Path, hours: float, shard_mb: float, seed: int) -> dict:
    """A complete store of `hours` of frames, written as `feature_store.pack_store` writes one."""
    from deep_speaker.config import Config
    from deep_speaker.feature_store import (FORMAT_VERSION, INDEX, INDEX_FIELDS, MANIFEST, STORE_DTYPE, shard_name,
                                            store_dir)
    from deep_speaker.io_utils import atomic_write, atomic_write_text

    config = Config()
    rng = np.random.default_rng(seed)
    total = int(hours * FRAMES_PER_HOUR)
    lengths = rng.integers(200, 2000, total // 1000 + 10)
    lengths = lengths[:np.searchsorted(np.cumsum(lengths), total) + 1]
    num_speakers = max(2, int(round(hours / SPEAKER_HOURS)))
    speaker = np.sort(rng.integers(0, num_speakers, len(lengths)))
    speaker[:num_speakers] = np.arange(num_speakers)  # everyone speaks
    speaker.sort()
    part = (np.arange(len(lengths)) % 20 == 19).astype(np.int8)
    order = np.lexsort((np.arange(len(lengths)), part, speaker))
    speaker, part, lengths = speaker[order], part[order], lengths[order]
    position = np.zeros(len(lengths), np.int32)
    for p in (0, 1):  # position within (speaker, part)
        rows = np.flatnonzero(part == p)
        starts = np.r_[0, np.flatnonzero(np.diff(speaker[rows])) + 1]
        position[rows] = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    capacity = int(shard_mb * (1 << 20)) // (config.num_fbanks * 2)
    shard = np.zeros(len(lengths), np.int32)
    offset = np.zeros(len(lengths), np.int64)
    current, fill = 0, 0
    for i, length in enumerate(lengths.tolist()):  # greedy, as the packer fills shards
        if fill and fill + length > capacity:
            current, fill = current + 1, 0
        shard[i], offset[i] = current, fill
        fill += length
    folder = store_dir(cache)
    folder.mkdir(parents=True, exist_ok=True)
    block = rng.standard_normal((capacity, config.num_fbanks), dtype=np.float32).astype(STORE_DTYPE)
    shards = []
    for number in range(current + 1):
        frames = int((offset + lengths)[shard == number].max())
        atomic_write(folder / shard_name(number), lambda h, n=frames: np.save(h, block[:n]), durable=False)
        shards.append({"name": shard_name(number), "frames": frames})
    index = dict(zip(INDEX_FIELDS, (speaker.astype(np.int32), part, position, shard, offset, lengths.astype(np.int64))))
    atomic_write(folder / INDEX, lambda h: np.savez(h, **index))
    speakers = [f"s{k:05d}" for k in range(num_speakers)]
    manifest = {"version": FORMAT_VERSION, "source_signature": "synthetic", "feature_settings": config.feature_settings(),
                "speakers": speakers, "speaker_metadata": [{} for _ in speakers], "max_shard_bytes": capacity * 128,
                "dtype": "float16", "num_fbanks": config.num_fbanks, "shards": shards,
                "utterances": int(len(lengths)), "frames": int(lengths.sum())}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest))
    return {"speakers": num_speakers, "utterances": int(len(lengths)), "shards": len(shards),
            "gigabytes": sum(f.stat().st_size for f in folder.iterdir()) / 1e9}


# --- one measured training run (a child process) -----------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it starts
    afresh at exec, so it is not the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_ram_banks(store):
    """The in-RAM pipeline's banks: every frame of each part in one float32
    array (what make_bank builds from the inputs pickles); its sampler then
    makes one tf.constant of it (WindowSampler)."""
    from deep_speaker.inputs import UtteranceBank

    banks = []
    for bank in (store.bank("train"), store.bank("test")):
        frames = np.empty((int(bank.lengths.sum()), store.num_fbanks), np.float32)
        offsets = np.r_[0, np.cumsum(bank.lengths)[:-1]].astype(np.int64)
        for number, path in enumerate(store.shards):
            shard = np.load(path)  # read, as load_inputs reads pickles (a map would count the page cache)
            for i in np.flatnonzero(bank.shard == number):
                frames[offsets[i]:offsets[i] + bank.lengths[i]] = shard[bank.offsets[i]:bank.offsets[i] + bank.lengths[i]]
            del shard
        banks.append(UtteranceBank(frames, offsets, bank.lengths.copy(), bank.labels.copy(), list(bank.speakers)))
    return banks


def make_trainer(args, train, test):
    import keras
    import tensorflow as tf

    from deep_speaker.config import Config
    from deep_speaker.model import attach_head, build_embedding_model
    from deep_speaker.training import _Trainer

    config = Config(width=args.width, batch_size=args.batch_size, frames=args.frames, seed=args.seed,
                    eval_utterances=20, speakers=list(train.speakers), steps_per_epoch=args.warmup)
    keras.utils.set_random_seed(args.seed)
    embedding_model = build_embedding_model(config)
    model = attach_head(embedding_model, len(train.speakers), config)
    optimizer = keras.optimizers.Adam(config.lr)
    optimizer.build(model.trainable_variables)
    trainer = _Trainer("softmax", config, tf.distribute.get_strategy(), model, embedding_model, optimizer, train, test)
    trainer.train_epoch(1)  # warm-up: tracing, autotuning
    trainer.config = config.override(steps_per_epoch=args.steps)
    return trainer


def timed_epoch(trainer, epoch: int, steps: int) -> float:
    """Windows per second of one epoch of the trainer's own loop."""
    began = time.perf_counter()
    trainer.train_epoch(epoch)  # reads the device-side sums once, at its end
    return steps * trainer.config.batch_size / (time.perf_counter() - began)


def pipeline_alone(args, bank) -> float:
    """Windows per second of the real softmax dataset with no model."""
    from deep_speaker.config import Config
    from deep_speaker.inputs import softmax_dataset

    config = Config(frames=args.frames)
    dataset = iter(softmax_dataset(bank, config, args.batch_size, args.seed, first_step=10_000))
    for _ in range(5):
        next(dataset)
    began = time.perf_counter()
    for _ in range(args.pipeline_batches):
        next(dataset)
    return args.pipeline_batches * args.batch_size / (time.perf_counter() - began)


def child(args) -> dict:
    """store / memory: one pipeline's peak RSS and speed; compare: both
    pipelines in one process, timed in alternating rounds (best of each)."""
    from deep_speaker.feature_store import FeatureStore

    store = FeatureStore(args.cache)
    if args.child == "compare":
        memory = in_ram_banks(store)
        trainers = {"store": make_trainer(args, store.bank("train"), store.bank("test")),
                    "memory": make_trainer(args, *memory)}
        pipes = {"store": trainers["store"].train_bank, "memory": memory[0]}
        result = {f"{kind}_{what}": [] for kind in trainers for what in ("training", "pipeline")}
        for round_number in range(args.rounds):
            for kind, trainer in trainers.items():
                result[f"{kind}_training"].append(timed_epoch(trainer, 2 + round_number, args.steps))
                result[f"{kind}_pipeline"].append(pipeline_alone(args, pipes[kind]))
        return result
    banks = in_ram_banks(store) if args.child == "memory" else (store.bank("train"), store.bank("test"))
    trainer = make_trainer(args, *banks)
    training = timed_epoch(trainer, 2, args.steps)
    return {"pipeline_windows_per_s": pipeline_alone(args, banks[0]), "training_windows_per_s": training,
            "peak_rss_mb": peak_rss_mb()}


def run_child(args, mode: str, cache: Path) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--cache", str(cache),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--width", str(args.width),
            "--batch_size", str(args.batch_size), "--frames", str(args.frames), "--seed", str(args.seed),
            "--pipeline_batches", str(args.pipeline_batches), "--rounds", str(args.rounds)]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{mode} run on {cache} failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                         f"{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0
    import tensorflow as tf

    print(f"machine: {platform.machine()} {platform.system()}, usable cpus={len(os.sched_getaffinity(0))}, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}; python {platform.python_version()}, "
          f"tensorflow {tf.__version__}")
    print(f"softmax stage, width {args.width}, {args.batch_size} windows x {args.frames} frames per step, "
          f"{args.warmup} warm-up + {args.steps} timed steps per run", flush=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="train_scale-"))
    rows, comparison = [], None
    started = time.perf_counter()
    try:
        for number, hours in enumerate(float(h) for h in args.hours.split(",")):
            cache = work / f"store-{hours:g}h"
            began = time.perf_counter()
            built = build_store(cache, hours, args.shard_mb, args.seed)
            print(f"{hours:g} h: {built['speakers']} speakers, {built['utterances']} utterances, {built['shards']} "
                  f"shards, {built['gigabytes']:.2f} GB on disk, built in {time.perf_counter() - began:.0f} s",
                  flush=True)
            run = run_child(args, "store", cache)
            rows.append((hours, "store", run["peak_rss_mb"], run))
            line = f"  store: peak RSS {run['peak_rss_mb']:.0f} MB"
            if number == 0:
                memory = run_child(args, "memory", cache)
                rows.append((hours, "in RAM", memory["peak_rss_mb"], memory))
                comparison = (hours, run_child(args, "compare", cache))
                line += f"; in RAM: {memory['peak_rss_mb']:.0f} MB"
            print(line, flush=True)
            shutil.rmtree(cache)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("| hours | pipeline | peak RSS (MB) | training windows/s | pipeline alone windows/s |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for hours, kind, rss, run in rows:
        print(f"| {hours:g} | {kind} | {rss:.0f} | {run['training_windows_per_s']:.1f} | "
              f"{run['pipeline_windows_per_s']:.0f} |")
    store_rss = [rss for _, kind, rss, _ in rows if kind == "store"]
    flat = max(store_rss) - min(store_rss)
    print(f"\nstore peak RSS: {min(store_rss):.0f}-{max(store_rss):.0f} MB across sizes (spread {flat:.0f} MB; "
          f"goal flat and <= 2048 MB: {'met' if max(store_rss) <= 2048 and flat <= 0.1 * max(store_rss) else 'NOT met'})")
    if comparison:
        hours, rounds = comparison
        best = {key: max(values) for key, values in rounds.items()}
        ratio = best["store_training"] / best["memory_training"]
        print(f"at {hours:g} h, one process, {args.rounds} alternating rounds of {args.steps} steps (best of each):")
        print(f"  training windows/s: store {best['store_training']:.1f}, in RAM {best['memory_training']:.1f}: "
              f"store / in RAM {ratio:.3f} (goal >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}); rounds "
              f"{', '.join(f'{a:.1f}/{b:.1f}' for a, b in zip(rounds['store_training'], rounds['memory_training']))}")
        print(f"  pipeline alone windows/s: store {best['store_pipeline']:.0f}, in RAM {best['memory_pipeline']:.0f} "
              f"({best['store_pipeline'] / best['memory_pipeline']:.2f}x)")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
