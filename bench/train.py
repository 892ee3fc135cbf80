#!/usr/bin/env python
"""Benchmark of training throughput and inference speed (not a test).

1. Training steps/s of the full input pipeline: the trainer's own compiled
   step (`deep_speaker.training._Trainer`) pulling batches from the real
   `softmax_dataset` (or `triplet_dataset`) over an UtteranceBank, against the
   bare model: the same replica step fed in-memory tensors of the same shape.
   Target: pipeline step time <= 1.10 x bare step time.
2. Inference windows/s of the embedding model at width 1.0 and 0.25.

The bank is synthetic (random features; the pipeline's cost does not depend on
the values) unless --cache points at a preprocess.py cache with inputs/.
Both training loops read the loss each step (the same sync on both sides; the
trainer itself reads it only every --log_every steps), and are
timed in alternating rounds; the best round of each is reported, so a busy
machine penalises neither side more.

    python bench/train.py                        # tiny defaults, about 2 minutes on 2 cores
    python bench/train.py --width 1 --batch_size 64 --steps 50 --rounds 3
    python bench/train.py --cache deep-speaker-data/cache --stage triplet
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from deep_speaker.config import Config  # noqa: E402
from deep_speaker.inputs import UtteranceBank, make_bank  # noqa: E402
from deep_speaker.model import attach_head, build_embedding_model  # noqa: E402
from deep_speaker.training import _Trainer  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", choices=("softmax", "triplet"), default="softmax", help="which training step")
    p.add_argument("--width", type=float, default=0.25, help="model width of the training benchmark")
    p.add_argument("--batch_size", type=int, default=32, help="windows (softmax) or triplets per step")
    p.add_argument("--frames", type=int, default=160, help="training window length")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing, autotuning)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of pipeline and bare timing")
    p.add_argument("--speakers", type=int, default=40, help="synthetic bank: speakers")
    p.add_argument("--utterances", type=int, default=20, help="synthetic bank: utterances per speaker")
    p.add_argument("--cache", default=None, help="use this cache's inputs/ instead of a synthetic bank")
    p.add_argument("--inference_widths", default="1.0,0.25", help="widths of the inference benchmark")
    p.add_argument("--inference_batch", type=int, default=32, help="windows per inference call")
    p.add_argument("--inference_frames", type=int, default=300, help="frames per inference window")
    p.add_argument("--inference_calls", type=int, default=3, help="timed inference calls per width")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def synthetic_bank(speakers: int, utterances: int, num_fbanks: int, seed: int) -> UtteranceBank:
    rng = np.random.default_rng(seed)
    inputs = {f"s{k:04d}": {"train": [rng.standard_normal((int(n), num_fbanks)).astype(np.float32)
                                      for n in rng.integers(150, 900, utterances)]}
              for k in range(speakers)}
    return make_bank(inputs, "train", sorted(inputs))


def real_bank(cache: str) -> UtteranceBank:
    from deep_speaker.training_inputs import load_inputs

    inputs = load_inputs(cache)
    return make_bank(inputs, "train", sorted(inputs))


def make_trainer(args, bank: UtteranceBank) -> _Trainer:
    config = Config(width=args.width, batch_size=args.batch_size, frames=args.frames, seed=args.seed,
                    eval_utterances=2, speakers=list(bank.speakers), negatives="hard")
    strategy = tf.distribute.get_strategy()
    keras.utils.set_random_seed(args.seed)
    embedding_model = build_embedding_model(config)
    model = embedding_model if args.stage == "triplet" else attach_head(embedding_model, len(bank.speakers), config)
    optimizer = keras.optimizers.Adam(config.lr)
    optimizer.build(model.trainable_variables)
    return _Trainer(args.stage, config, strategy, model, embedding_model, optimizer, bank, bank)


def bare_step(trainer: _Trainer, args, num_speakers: int):
    """The trainer's replica step on fixed in-memory tensors (no input pipeline)."""
    rows = args.batch_size * (3 if args.stage == "triplet" else 1)
    rng = np.random.default_rng(1)
    windows = tf.constant(rng.standard_normal((rows, args.frames, trainer.config.num_fbanks, 1)).astype(np.float32))
    labels = tf.constant(rng.integers(0, num_speakers, rows).astype(np.int32))
    strategy = trainer.strategy

    @tf.function
    def step(windows, labels):  # arguments, not captured constants: nothing to constant-fold
        loss, correct = strategy.run(trainer._replica_step, args=(windows, labels))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

    return lambda: step(windows, labels)


def timed(step, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        loss, _ = step()
        float(loss)  # one sync per step on both sides, so each step's time is its own
    return time.perf_counter() - started


def training_benchmark(args) -> None:
    bank = real_bank(args.cache) if args.cache else synthetic_bank(args.speakers, args.utterances, 64, args.seed)
    frame_shift_ms = Config().frame_shift_ms  # synthetic frames: the default features'
    if args.cache:
        from deep_speaker.training_inputs import read_inputs_settings

        frame_shift_ms = (read_inputs_settings(args.cache) or {}).get("frame_shift_ms", frame_shift_ms)
    hours = len(bank.frames) * frame_shift_ms / 3_600_000
    print(f"bank: {len(bank.speakers)} speakers, {bank.num_utterances} utterances, {hours:.2f} h "
          f"({'cache ' + args.cache if args.cache else 'synthetic'})")
    trainer = make_trainer(args, bank)
    if trainer.similarity is not None:
        trainer._refresh_similarity(0)
    iterator = trainer._dataset(0)

    def pipeline_step():
        return trainer._step(iterator)

    bare = bare_step(trainer, args, len(bank.speakers))
    started = time.perf_counter()
    timed(pipeline_step, args.warmup)
    timed(bare, args.warmup)
    print(f"warm-up ({args.warmup} steps each, tracing included): {time.perf_counter() - started:.1f} s")
    pipeline_times, bare_times = [], []
    for _ in range(args.rounds):
        pipeline_times.append(timed(pipeline_step, args.steps) / args.steps)
        bare_times.append(timed(bare, args.steps) / args.steps)
    pipeline, bare_time = min(pipeline_times), min(bare_times)
    rows = args.batch_size * (3 if args.stage == "triplet" else 1)
    print(f"training ({args.stage}, width {args.width}, {rows} windows x {args.frames} frames per step, "
          f"best of {args.rounds} rounds x {args.steps} steps):")
    print(f"  full pipeline (real {args.stage}_dataset): {1 / pipeline:7.2f} steps/s  "
          f"({1000 * pipeline:.1f} ms/step, rounds {', '.join(f'{1000 * t:.1f}' for t in pipeline_times)} ms)")
    print(f"  bare model (in-memory tensors):       {1 / bare_time:7.2f} steps/s  "
          f"({1000 * bare_time:.1f} ms/step, rounds {', '.join(f'{1000 * t:.1f}' for t in bare_times)} ms)")
    ratio = pipeline / bare_time
    print(f"  pipeline / bare step time: {ratio:.3f} (target <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")


def inference_benchmark(args) -> None:
    rng = np.random.default_rng(2)
    windows = tf.constant(rng.standard_normal((args.inference_batch, args.inference_frames, 64, 1)).astype(np.float32))
    print(f"inference ({args.inference_batch} windows x {args.inference_frames} frames per call, "
          f"best of {args.inference_calls} calls):")
    for width in (float(w) for w in args.inference_widths.split(",")):
        model = build_embedding_model(Config(width=width))
        embed = tf.function(lambda x, model=model: model(x, training=False))
        embed(windows).numpy()  # trace
        times = []
        for _ in range(args.inference_calls):
            started = time.perf_counter()
            embed(windows).numpy()
            times.append(time.perf_counter() - started)
        print(f"  width {width:<5} ({model.count_params() / 1e6:5.2f} M parameters): "
              f"{args.inference_batch / min(times):8.1f} windows/s")


def main(argv=None) -> int:
    args = parse_args(argv)
    gpus = tf.config.list_physical_devices("GPU")
    print(f"machine: {platform.machine()} {platform.system()}, cpu_count={os.cpu_count()}, "
          f"usable cpus={len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}, "
          f"GPUs: {', '.join(g.name for g in gpus) or 'none'}")
    print(f"python {platform.python_version()}, tensorflow {tf.__version__}, keras {keras.__version__}")
    started = time.perf_counter()
    training_benchmark(args)
    inference_benchmark(args)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
