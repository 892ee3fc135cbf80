#!/usr/bin/env python
"""Benchmark of the scoring commands (not a test): how close a command's run is
to the model compute it cannot avoid.

For `comp_cos.py --unseen_speakers A,B` (SAN) and `get_emb.py --get_embeddings A`,
all in one run on one audio cache:

(a) the wall time of the command as a subprocess, as a user runs it;
(b) the wall time of a subprocess that only imports TensorFlow and loads the
    model (keras.models.load_model, as scoring does) and exits without the
    interpreter's teardown, as the commands do: the start-up no command avoids
    (in the commands' environment);
(c) the bare model compute on the same frames: in this process, after a warm-up
    pass, only the embedding calls (one tf.function with the command's input
    signature) over the features of the utterances the command scores.
    The commands themselves run the same model with batch norm folded into the
    convolutions, eagerly (deep_speaker/inference.py), with TensorFlow's own
    convolutions instead of oneDNN's (SCORING_ENVIRONMENT); (c') is the folded
    pass warm in this process (oneDNN on), for comparison.

ratio (a - b) / c: 1.0 means the command costs start-up plus model compute and
nothing else; target <= 1.1.

(c) is warm: it leaves out what the first call at each new utterance length
costs (the tf.function trace, oneDNN's set-up for each new input shape), which
any program pays once per length. So the run also times

(d) a bare script as a subprocess: import TensorFlow, load the model, then the
    same embedding calls on the same frames (read from .npy), cold, as a user
    who skips deep-speaker's commands would write it;

and prints (a - b) / (d - b): the command against the cold model compute.

Each time is the minimum (and median) over --repeats runs, interleaved so
background load hits every measurement alike.
On a shared machine wall times swing with other jobs, so the same ratio is
also given in CPU seconds (user + system, all threads; children's rusage for
the subprocesses, process_time for the in-process compute), which load moves
much less.

    python bench/score.py                          # fresh width-1.0 model, vctk-mini, p225,p226
    python bench/score.py --checkpoint best.keras  # a trained model (config.json beside it)
    python bench/score.py --audio_dir DIR --speakers A,B --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from deep_speaker.config import SCORING_ENVIRONMENT  # noqa: E402
from deep_speaker.config import Config  # noqa: E402

DEFAULT_AUDIO_DIR = REPO_ROOT.parent / "shared" / "data" / "vctk-mini"
TARGET = 1.1
# Every subprocess ends with os._exit, as the scoring commands do (exit_skipping_teardown):
# the interpreter's teardown after TensorFlow (~1.3 s) is not start-up and no one needs it.
LOAD_ONLY = ("import os, sys, tensorflow, keras; "
             "keras.models.load_model(sys.argv[1], compile=False, safe_mode=True); os._exit(0)")
# (d): LOAD_ONLY, then one embedding per utterance of the .npz in argv[2] (cold).
BARE_SCRIPT = ("import sys, numpy, tensorflow as tf, keras; "
               "model = keras.models.load_model(sys.argv[1], compile=False, safe_mode=True); "
               "model = keras.Model(model.input, model.outputs[0]) if len(model.outputs) > 1 else model; "
               "embed = tf.function(lambda x: model(x, training=False), "
               "input_signature=[tf.TensorSpec((1, None, int(model.input.shape[2]), 1), tf.float32)]); "
               "frames = numpy.load(sys.argv[2]); "
               "[embed(frames[k][None, :, :, None]).numpy() for k in sorted(frames.files)]; "
               "import os; os._exit(0)")


def machine_facts() -> str:
    import tensorflow as tf

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    processor = platform.processor() or _cpu_model()
    return (f"machine: {platform.machine()} {platform.system()} {platform.release()}, {processor}, "
            f"cpu_count={os.cpu_count()}, usable cpus={cpus}, load average {load}\n"
            f"python {platform.python_version()}, tensorflow {tf.__version__}, numpy {np.__version__}, "
            f"GPUs visible to TensorFlow: {len(tf.config.list_physical_devices('GPU'))}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


def fresh_model(folder: Path, width: float) -> Path:
    """A randomly initialised embedding model saved as training saves a triplet checkpoint."""
    import keras

    from deep_speaker.model import build_embedding_model

    stage = folder / "checkpoints" / "triplet"
    stage.mkdir(parents=True)
    config = Config(width=width)
    keras.utils.set_random_seed(0)
    build_embedding_model(config).save(stage / "best.keras")
    config.save(stage / "config.json")
    return stage / "best.keras"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], environment: dict | None = None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of one subprocess run."""
    cpu = _children_cpu()
    env = {**os.environ, **(environment or {})}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-2000:]}")
    return seconds, _children_cpu() - cpu, result.stdout


def model_compute(checkpoint: Path, config: Config, features: list[np.ndarray], repeats: int
                  ) -> tuple[tuple[list[float], list[float]], tuple[list[float], list[float]]]:
    """(wall, CPU) seconds of the embedding calls alone over `features`, after a
    warm-up pass: first for the Keras model in a tf.function (the bare model
    compute, c), then for the folded eager pass the commands run (c')."""
    import tensorflow as tf

    from deep_speaker.inference import fold_rescnn
    from deep_speaker.model import load_checkpoint

    model = load_checkpoint(checkpoint)
    if len(model.outputs) > 1:
        from deep_speaker.model import embedding_part

        model = embedding_part(model)
    spec = tf.TensorSpec((1, None, config.num_fbanks, 1), tf.float32)
    embed = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    folded = fold_rescnn(model, config.clipped_relu_max) or embed
    inputs = [tf.constant(f[None, :, :, None].astype(np.float32)) for f in features]
    return _warm_calls(embed, inputs, repeats), _warm_calls(folded, inputs, repeats)


def _warm_calls(embed, inputs, repeats: int) -> tuple[list[float], list[float]]:
    for x in inputs:  # warm-up: trace once, and let oneDNN set up each input length
        embed(x).numpy()
    times, cpu_times = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        for x in inputs:
            embed(x).numpy()
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu)
    return times, cpu_times


def summary(times: list[float]) -> str:
    return f"{min(times):7.2f} s min, {statistics.median(times):7.2f} s median"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="a .keras model with config.json beside it (default: a fresh model of --width)")
    p.add_argument("--width", type=float, default=1.0, help="width of the fresh model (1.0: the seed's size)")
    p.add_argument("--audio_dir", action="append", default=None, metavar="DIR",
                   help=f"corpus cached for the run (default: {DEFAULT_AUDIO_DIR})")
    p.add_argument("--speakers", default="p225,p226", help="A,B: comp_cos scores A vs B, get_emb embeds A")
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement")
    p.add_argument("--keep", action="store_true", help="keep the temp folder and print its path")
    args = p.parse_args(argv)
    first, second = args.speakers.split(",")
    audio_dirs = args.audio_dir or [str(DEFAULT_AUDIO_DIR)]
    if not all(Path(d).is_dir() for d in audio_dirs):
        p.error(f"audio folder not found: {', '.join(audio_dirs)}")

    from deep_speaker.audio_cache import build_audio_cache
    from deep_speaker.checkpoints import resolve_model
    from deep_speaker.scoring import cached_features, cached_speakers

    print(machine_facts(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_score_"))
    try:
        checkpoint = Path(args.checkpoint) if args.checkpoint else fresh_model(work, args.width)
        resolved = resolve_model(checkpoint)
        config = resolved.config
        cache = work / "cache"
        cached = build_audio_cache(audio_dirs, cache, Config(), regenerate=True)
        import keras

        params = keras.models.load_model(checkpoint, compile=False).count_params()
        print(f"model: {checkpoint} (width {config.width}, {params / 1e6:.2f} M parameters)\n"
              f"cache: {cached.cached} utterances of {', '.join(audio_dirs)}; repeats: {args.repeats}", flush=True)

        # What each command embeds: the same seeded choice of cached utterances (defaults: 50, seed 1234).
        speakers = {s.speaker_id: s for s in cached_speakers(cache, [first, second])}
        features = {name: cached_features(speakers[name], config, 50, 1234) for name in (first, second)}
        commands = {
            f"comp_cos.py --unseen_speakers {first},{second}": (
                ["scripts/comp_cos.py", "--unseen_speakers", f"{first},{second}", "--json"],
                features[first] + features[second]),
            f"get_emb.py --get_embeddings {first}": (["scripts/get_emb.py", "--get_embeddings", first],
                                                     features[first]),
        }
        common = ["--checkpoint", str(checkpoint), "--cache_output_dir", str(cache)]
        command_times = {name: ([], []) for name in commands}
        bare_times = {name: ([], []) for name in commands}
        frame_files = {}
        for k, (name, (_, frames)) in enumerate(commands.items()):
            frame_files[name] = work / f"frames{k}.npz"
            np.savez(frame_files[name], **{f"u{i:04d}": f.astype(np.float32) for i, f in enumerate(frames)})
        inside = []
        load_times = ([], [])
        for _ in range(args.repeats):
            for name, (command, _) in commands.items():
                seconds, cpu, out = timed([sys.executable, *command, *common])
                command_times[name][0].append(seconds)
                command_times[name][1].append(cpu)
                if name.startswith("comp_cos"):
                    inside.append(json.loads(out)["seconds"])
                seconds, cpu, _ = timed([sys.executable, "-c", BARE_SCRIPT, str(checkpoint), str(frame_files[name])])
                bare_times[name][0].append(seconds)
                bare_times[name][1].append(cpu)
            # The start-up as the commands start: in their environment (SCORING_ENVIRONMENT).
            seconds, cpu, _ = timed([sys.executable, "-c", LOAD_ONLY, str(checkpoint)], SCORING_ENVIRONMENT)
            load_times[0].append(seconds)
            load_times[1].append(cpu)

        print(f"\n(b) import TensorFlow + load the model (subprocess): {summary(load_times[0])}; "
              f"CPU {min(load_times[1]):.2f} s min")
        for name, (_, frames) in commands.items():
            (compute, compute_cpu), (folded, _) = model_compute(checkpoint, config, frames, args.repeats)
            walls, cpus = command_times[name]
            a, b, c = min(walls), min(load_times[0]), min(compute)
            a_med, b_med, c_med = (statistics.median(t) for t in (walls, load_times[0], compute))
            a_cpu, b_cpu, c_cpu = min(cpus), min(load_times[1]), min(compute_cpu)
            ratio, ratio_med, ratio_cpu = (a - b) / c, (a_med - b_med) / c_med, (a_cpu - b_cpu) / c_cpu
            d, d_cpu = min(bare_times[name][0]), min(bare_times[name][1])
            d_med = statistics.median(bare_times[name][0])
            cold = (a - b) / (d - b)
            cold_med, cold_cpu = (a_med - b_med) / (d_med - b_med), (a_cpu - b_cpu) / (d_cpu - b_cpu)
            speech = sum(len(f) for f in frames) / 100
            print(f"\n== {name}: {len(frames)} utterances, {speech:.1f} s of voiced speech ==\n"
                  f"(a) command (subprocess)      : {summary(walls)}; CPU {a_cpu:.2f} s min\n"
                  f"(c) model compute, same frames: {summary(compute)}; CPU {c_cpu:.2f} s min\n"
                  f"(c') the commands' folded eager pass, warm: {summary(folded)}\n"
                  f"a - b - c (the command's own overhead): {a - b - c:.2f} s wall, "
                  f"{a_cpu - b_cpu - c_cpu:.2f} s CPU\n"
                  f"ratio (a - b) / c: {ratio:.2f} from wall minima (target <= {TARGET}: "
                  f"{'ok' if ratio <= TARGET else 'MISSED'}), {ratio_med:.2f} from wall medians, "
                  f"{ratio_cpu:.2f} in CPU seconds\n"
                  f"(d) bare script, cold (subprocess): {summary(bare_times[name][0])}; CPU {d_cpu:.2f} s min\n"
                  f"ratio (a - b) / (d - b), command vs cold model compute: {cold:.2f} from wall minima, "
                  f"{cold_med:.2f} from wall medians, {cold_cpu:.2f} in CPU seconds")
            if inside and name.startswith("comp_cos"):
                print(f"    (comp_cos's own timer, features + embeddings: {min(inside):.2f} s min)")
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
        print(f"\nload average at the end: {load}")
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
