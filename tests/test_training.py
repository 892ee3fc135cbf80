"""train_cli.py end to end on a tiny real-speech cache: the three stages, their
checkpoints, resume after a kill, determinism, and the distribution strategies.

Everything runs at width 0.125 on 64-frame windows with a handful of steps;
most of the time goes into tracing the training step once per run.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import ANY

import keras
import numpy as np
import pytest

from conftest import SHARED_DATA, free_ports, need_real_speech
from deep_speaker.commands import preprocess, train_cli
from deep_speaker.config import Config
from deep_speaker.model import EMBEDDING_LAYER, HEAD_LAYER, attach_head, build_embedding_model

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRISPEECH = SHARED_DATA / "librispeech" / "train-clean-100"
# Three speakers with three utterances each, three with a single long one.
UTTERANCES = {
    "19": ("19/198/19-198-0000.flac", "19/198/19-198-0008.flac", "19/198/19-198-0037.flac"),
    "26": ("26/495/26-495-0019.flac", "26/495/26-495-0020.flac", "26/496/26-496-0026.flac"),
    "27": ("27/124992/27-124992-0026.flac", "27/124992/27-124992-0062.flac", "27/124992/27-124992-0073.flac"),
    "32": ("32/21625/32-21625-0000.flac",),
    "39": ("39/121914/39-121914-0000.flac",),
    "40": ("40/121026/40-121026-0000.flac",),
}
SPEAKERS = sorted(UTTERANCES)
SMALL = ["--width", "0.125", "--frames", "64", "--batch_size", "8", "--seed", "7"]
SOFTMAX = ["--loss_on_softmax", *SMALL, "--steps_per_epoch", "12", "--epochs", "3"]
TRIPLET = ["--loss_on_embeddings", "--normalize_embeddings", *SMALL, "--steps_per_epoch", "6"]
FROZEN = ["--loss_on_softmax", "--freeze_embedding_weights", "--normalize_embeddings", *SMALL,
          "--steps_per_epoch", "6"]
SUBPROCESS_TIMEOUT = 300  # seconds: a hang fails the test instead of blocking CI


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A training-inputs cache of the six speakers, made by preprocess.py."""
    for files in UTTERANCES.values():
        for relative in files:
            if not (LIBRISPEECH / relative).is_file():
                need_real_speech(f"real speech not found: {LIBRISPEECH / relative}")
    root = tmp_path_factory.mktemp("corpus")
    for files in UTTERANCES.values():
        for relative in files:
            (root / "train-clean-100" / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(LIBRISPEECH / relative, root / "train-clean-100" / relative)
    cache = tmp_path_factory.mktemp("cache")
    assert preprocess.main(["--regenerate_full_cache", "--generate_training_inputs", "--audio_dir", str(root),
                            "--cache_output_dir", str(cache)]) == 0
    assert sorted(p.stem for p in (cache / "inputs").glob("*.pkl")) == SPEAKERS
    return cache


def train(cache: Path, checkpoints: Path, *argv) -> tuple[int, str, str]:
    """train_cli.main in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train_cli.main([*argv, "--cache_output_dir", str(cache), "--checkpoint_dir", str(checkpoints)])
    return code, out.getvalue(), _without_progress_bars(err.getvalue())


def _without_progress_bars(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if "step/s" not in line and "s/step" not in line
                   and "\r" not in line)


def history(stage_dir: Path) -> list[dict]:
    with open(stage_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def history_epochs(stage_dir: Path) -> list[int]:
    return [int(row["epoch"]) for row in history(stage_dir)]


def weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, compile=False, safe_mode=True).get_weights()


def assert_same_weights(first: Path, second: Path) -> None:
    a, b = weights(first), weights(second)
    assert len(a) == len(b)
    different = [i for i, (x, y) in enumerate(zip(a, b)) if not np.array_equal(x, y)]
    assert not different, (f"{len(different)} of {len(a)} weights differ between {first} and {second}; "
                           f"max |diff| {max(float(np.abs(a[i] - b[i]).max()) for i in different):.3g}")


def layer_weights(path: Path, names) -> dict[str, list[np.ndarray]]:
    model = keras.models.load_model(path, compile=False, safe_mode=True)
    return {name: model.get_layer(name).get_weights() for name in names}


def copy_stage(source_checkpoints: Path, stage: str, target_checkpoints: Path) -> None:
    shutil.copytree(source_checkpoints / stage, target_checkpoints / stage,
                    ignore=shutil.ignore_patterns("tensorboard", "workers"))


# --- the three stages, in order ------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline(cache, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def softmax_run(cache, pipeline):
    return train(cache, pipeline, *SOFTMAX)


def test_softmax_stage_learns_and_writes_its_checkpoints(cache, pipeline, softmax_run):
    code, out, _ = softmax_run
    assert code == 0
    assert "softmax epoch 1/3" in out and "softmax epoch 3/3" in out and "softmax: done" in out
    stage = pipeline / "softmax"
    for name in ("best.keras", "last.keras", "config.json", "state.json", "history.csv", "training_curves.png"):
        assert (stage / name).is_file(), name
    assert (stage / "training_curves.png").read_bytes().startswith(b"\x89PNG")
    config = json.loads((stage / "config.json").read_text())
    assert config["width"] == 0.125 and config["frames"] == 64 and config["seed"] == 7
    assert config["speakers"] == SPEAKERS
    state = json.loads((stage / "state.json").read_text())
    assert state["epoch"] == 3
    rows = history(stage)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses  # it learns the six speakers
    # best.keras is the epoch state.json names, with a 6-way head.
    model = keras.models.load_model(stage / "best.keras", compile=False, safe_mode=True)
    assert model.get_layer(HEAD_LAYER).units == len(SPEAKERS)
    assert 1 <= state["best"]["epoch"] <= 3


def test_rerunning_a_finished_stage_does_not_train_again(cache, pipeline, softmax_run):
    stage = pipeline / "softmax"
    before = {p.name: p.stat().st_mtime_ns for p in stage.iterdir() if p.is_file()}
    code, out, _ = train(cache, pipeline, *SOFTMAX)
    assert code == 0
    assert "already" in out and "epoch 1/3" not in out
    assert {p.name: p.stat().st_mtime_ns for p in stage.iterdir() if p.is_file()} == before


def test_a_mismatched_width_is_refused(cache, pipeline, softmax_run):
    argv = [a if a != "0.125" else "0.25" for a in SOFTMAX]
    code, out, err = train(cache, pipeline, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "width=0.125" in err and "0.25" in err
    assert json.loads((pipeline / "softmax" / "state.json").read_text())["epoch"] == 3
    # The next stage checks its starting checkpoint too.
    code, _, err = train(cache, pipeline, *[a if a != "0.125" else "0.25" for a in TRIPLET], "--epochs", "1")
    assert code == 2 and "width" in err and not (pipeline / "triplet" / "state.json").exists()


def test_triplet_without_a_softmax_checkpoint_is_one_line_exit_2(cache, tmp_path):
    code, out, err = train(cache, tmp_path, *TRIPLET, "--epochs", "1")
    assert code == 2
    assert err.count("\n") == 1 and "softmax/best.keras" in err and "--loss_on_softmax" in err
    code, out, err = train(cache, tmp_path, *FROZEN, "--epochs", "1")
    assert code == 2 and err.count("\n") == 1 and "triplet/best.keras" in err


def test_triplet_on_a_subset_starts_from_the_softmax_stage_of_another_folder(cache, pipeline, softmax_run, tmp_path):
    """The pretrained recipe's read-English stage: a triplet stage on its own cache (three of
    the six speakers) and checkpoint folder, starting from the whole corpus's softmax stage."""
    subset = tmp_path / "subset-cache"
    subset.mkdir()
    for name in ("audio_cache_pkl", "audio_cache_index"):
        (shutil.copytree if (cache / name).is_dir() else shutil.copyfile)(cache / name, subset / name)
    assert preprocess.main(["--generate_training_inputs", "--cache_output_dir", str(subset),
                            "--unseen_speakers", "32,39,40"]) == 0
    own = tmp_path / "subset-checkpoints"
    code, out, err = train(subset, own, *TRIPLET, "--epochs", "1", "--start_from", str(pipeline))
    assert code == 0, err
    config = json.loads((own / "triplet" / "config.json").read_text())
    assert config["speakers"] == ["19", "26", "27"]
    assert [stage["stage"] for stage in config["earlier_stages"]] == ["softmax"]
    assert not (own / "softmax").exists()
    # Without --start_from the folder of its own has no softmax stage to start from.
    code, out, err = train(subset, tmp_path / "empty", *TRIPLET, "--epochs", "1")
    assert code == 2 and "softmax/best.keras" in err


def _head_kernel(path: Path) -> np.ndarray:
    from deep_speaker.model import load_checkpoint

    return np.asarray(load_checkpoint(path).get_layer(HEAD_LAYER).get_weights()[0])


def test_softmax_stage_fine_tunes_the_softmax_stage_of_another_folder(cache, pipeline, softmax_run, tmp_path):
    """Large-margin fine-tuning: a softmax stage with longer windows and a larger margin
    from another folder's best softmax model, its speaker head included when the speakers
    are the same; a new head on other speakers; never from its own folder."""
    assert softmax_run[0] == 0
    tuned = tmp_path / "tuned"
    # At a vanishing learning rate the head stays what the earlier stage learned.
    code, out, err = train(cache, tuned, *SOFTMAX, "--epochs", "1", "--frames", "96", "--am_margin", "0.3",
                           "--lr", "1e-12", "--start_from", str(pipeline))
    assert code == 0, err
    np.testing.assert_allclose(_head_kernel(tuned / "softmax" / "best.keras"),
                               _head_kernel(pipeline / "softmax" / "best.keras"), atol=1e-6)
    config = json.loads((tuned / "softmax" / "config.json").read_text())
    assert (config["frames"], config["am_margin"]) == (96, 0.3)
    (earlier,) = config["earlier_stages"]
    assert (earlier["stage"], earlier["frames"]) == ("softmax", 64)

    subset = tmp_path / "subset-cache"  # three of the six speakers: a new head of three classes
    subset.mkdir()
    for name in ("audio_cache_pkl", "audio_cache_index"):
        (shutil.copytree if (cache / name).is_dir() else shutil.copyfile)(cache / name, subset / name)
    assert preprocess.main(["--generate_training_inputs", "--cache_output_dir", str(subset),
                            "--unseen_speakers", "32,39,40"]) == 0
    code, out, err = train(subset, tmp_path / "subset", *SOFTMAX, "--epochs", "1", "--start_from", str(pipeline))
    assert code == 0, err
    assert _head_kernel(tmp_path / "subset" / "softmax" / "best.keras").shape[-1] == 3

    code, out, err = train(cache, pipeline, *SOFTMAX, "--epochs", "4", "--start_from", str(pipeline))
    assert code == 2 and err.count("\n") == 1 and "another checkpoint folder" in err


def test_any_stage_starts_from_the_shipped_model_or_an_export(cache, tmp_path):
    """Fine-tuning the pretrained model on your own speakers: --start_from pretrained (or an
    export_model.py folder) gives its embedding weights and lineage to a softmax stage with a new
    head; a model made for other audio or features is refused in one line, before training."""
    from deep_speaker.checkpoints import PRETRAINED_DIR
    from deep_speaker.model import load_checkpoint

    if not (PRETRAINED_DIR / "embedding.keras").is_file():
        pytest.skip("no pretrained model in this checkout")
    shipped = json.loads((PRETRAINED_DIR / "config.json").read_text())
    tuned = tmp_path / "tuned"
    code, out, err = train(cache, tuned, "--loss_on_softmax", "--config", "pretrained", "--frames", "64", "--batch_size",
                           "8", "--epochs", "1", "--steps_per_epoch", "2", "--lr", "1e-12",
                           "--start_from", "pretrained")  # the shipped model's width: from its config
    assert code == 0, err
    start, after = load_checkpoint(PRETRAINED_DIR / "embedding.keras"), load_checkpoint(tuned / "softmax" / "best.keras")
    kernels = [(layer.name, layer.get_weights()[0]) for layer in start.layers if "conv" in layer.name and layer.weights]
    assert kernels
    for name, kernel in kernels:
        np.testing.assert_allclose(after.get_layer(name).get_weights()[0], kernel, atol=1e-6)
    config = json.loads((tuned / "softmax" / "config.json").read_text())
    assert [stage["stage"] for stage in config["earlier_stages"]] == [
        *(stage["stage"] for stage in shipped["earlier_stages"]), shipped["stage"]]
    assert config["speakers"] == SPEAKERS

    export = tmp_path / "export-16k"  # the same model, said to be made for 16 kHz audio
    export.mkdir()
    shutil.copyfile(PRETRAINED_DIR / "embedding.keras", export / "embedding.keras")
    (export / "config.json").write_text(json.dumps({**shipped, "sample_rate_hz": 16000}))
    code, out, err = train(cache, tmp_path / "refused", *TRIPLET, "--epochs", "1", "--width", str(shipped["width"]),
                           "--start_from", str(export))
    assert code == 2 and err.count("\n") == 1
    assert "export-16k/config.json" in err and "sample_rate_hz: 16000 there vs 8000 now" in err
    assert not (tmp_path / "refused" / "triplet" / "state.json").exists()


class _Killed(BaseException):
    """Stands for a SIGKILL at one precise point of the checkpointing."""


@pytest.fixture(scope="module")
def triplet_run(cache, pipeline, softmax_run):
    """Triplet training for two epochs, killed after writing epoch 2's
    checkpoint files but before state.json records it; then rerun."""
    from deep_speaker.checkpoints import StageFolder

    assert softmax_run[0] == 0
    write_state = StageFolder.write_state

    def killed_before_epoch_2_is_recorded(self, state):
        if state["epoch"] == 2:
            raise _Killed()
        write_state(self, state)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StageFolder, "write_state", killed_before_epoch_2_is_recorded)
        with pytest.raises(_Killed):
            train(cache, pipeline, *TRIPLET, "--epochs", "2")
    state_after_kill = json.loads((pipeline / "triplet" / "state.json").read_text())["epoch"]
    resumed = train(cache, pipeline, *TRIPLET, "--epochs", "2")
    return state_after_kill, resumed


def test_triplet_stage_redoes_an_epoch_killed_before_it_was_recorded(pipeline, triplet_run):
    state_after_kill, (resumed_code, resumed_out, _) = triplet_run
    assert state_after_kill == 1
    assert resumed_code == 0 and "epoch 1/2" not in resumed_out and "triplet epoch 2/2" in resumed_out
    stage = pipeline / "triplet"
    assert history_epochs(stage) == [1, 2]  # epoch 2 once, though the killed run had written its row
    assert json.loads((stage / "state.json").read_text())["epoch"] == 2
    assert not [p.name for p in stage.iterdir() if p.name.startswith(".")]  # no leftovers
    rows = history(stage)
    assert rows[0]["test_eer"] != "" and rows[0]["test_accuracy"] == ""
    # The triplet model is the embedding model: no speaker head.
    model = keras.models.load_model(stage / "last.keras", compile=False, safe_mode=True)
    assert model.output_shape == (None, 512) and HEAD_LAYER not in [layer.name for layer in model.layers]


def test_same_seed_uninterrupted_triplet_run_gives_identical_weights(cache, pipeline, triplet_run, tmp_path):
    """The same seed gives the same weights, whether the run went straight
    through or was stopped and resumed (even killed between writing an epoch's
    files and recording it). Hard negatives are mined with a similarity matrix
    the trainer refreshes: a batch must not depend on what the input pipeline
    had prefetched before a refresh."""
    copy_stage(pipeline, "softmax", tmp_path)
    code, out, _ = train(cache, tmp_path, *TRIPLET, "--epochs", "2")
    assert code == 0 and "triplet epoch 1/2" in out and "triplet epoch 2/2" in out
    assert_same_weights(pipeline / "triplet" / "last.keras", tmp_path / "triplet" / "last.keras")
    assert_same_weights(pipeline / "triplet" / "best.keras", tmp_path / "triplet" / "best.keras")
    assert history(pipeline / "triplet") == [{**row, "seconds": ANY} for row in history(tmp_path / "triplet")]


@pytest.fixture(scope="module")
def frozen_run(cache, pipeline, triplet_run):
    """The frozen stage for one epoch, then continued to two with a larger --epochs."""
    assert triplet_run[1][0] == 0
    return train(cache, pipeline, *FROZEN, "--epochs", "1"), train(cache, pipeline, *FROZEN, "--epochs", "2")


def test_frozen_stage_continues_when_epochs_grow(pipeline, frozen_run):
    (code, out, _), (more_code, more_out, _) = frozen_run
    assert code == 0 and "softmax_frozen epoch 1/1" in out
    assert more_code == 0 and "epoch 1/2" not in more_out and "softmax_frozen epoch 2/2" in more_out
    assert history_epochs(pipeline / "softmax_frozen") == [1, 2]
    assert json.loads((pipeline / "softmax_frozen" / "state.json").read_text())["epoch"] == 2


def test_frozen_stage_keeps_the_triplet_embedding_weights(pipeline, frozen_run):
    assert frozen_run[1][0] == 0
    triplet_model = keras.models.load_model(pipeline / "triplet" / "best.keras", compile=False, safe_mode=True)
    embedding_layers = [layer.name for layer in triplet_model.layers if layer.weights]
    assert EMBEDDING_LAYER in [layer.name for layer in triplet_model.layers] and len(embedding_layers) > 50
    frozen = layer_weights(pipeline / "softmax_frozen" / "last.keras", embedding_layers + [HEAD_LAYER])
    for name in embedding_layers:  # kernels and batch-norm statistics alike
        for before, after in zip(triplet_model.get_layer(name).get_weights(), frozen[name]):
            np.testing.assert_array_equal(after, before, err_msg=name)
    # ... while its new head, initialised as training initialises it, did train.
    config = Config.load(pipeline / "softmax_frozen" / "config.json")
    keras.utils.set_random_seed(config.seed)
    initial_head = attach_head(build_embedding_model(config), len(SPEAKERS), config).get_layer(HEAD_LAYER)
    assert frozen[HEAD_LAYER][0].shape == initial_head.get_weights()[0].shape
    assert not np.allclose(frozen[HEAD_LAYER][0], initial_head.get_weights()[0], atol=1e-4)
    best = json.loads((pipeline / "softmax_frozen" / "state.json").read_text())["best"]
    assert 0.0 <= best["test_accuracy"] <= 1.0


# --- kill and resume in a real process -------------------------------------------------------

def run_cli(argv, *, env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "scripts" / "train_cli.py"), *argv], cwd=REPO_ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(process: subprocess.Popen, what: str) -> str:
    try:
        out, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"{what} did not finish in {SUBPROCESS_TIMEOUT} s:\n{out[-3000:]}")
    assert process.returncode == 0, f"{what} failed ({process.returncode}):\n{out[-3000:]}"
    return out


def state_epoch(stage: Path) -> int:
    try:
        return json.loads((stage / "state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_training_resumes_after_its_last_epoch_with_identical_results(cache, pipeline, softmax_run,
                                                                             tmp_path):
    assert softmax_run[0] == 0
    argv = [*SOFTMAX, "--cache_output_dir", str(cache), "--checkpoint_dir", str(tmp_path)]
    stage = tmp_path / "softmax"
    process = run_cli(argv)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while state_epoch(stage) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"finished before it could be killed:\n{out[-3000:]}"
    done = state_epoch(stage)
    assert 1 <= done < 3, out[-3000:]

    out = finish(run_cli(argv), "the resumed run")

    epoch_lines = [line for line in out.splitlines() if line.startswith("softmax epoch ") and "/3," in line]
    assert epoch_lines and epoch_lines[0].startswith(f"softmax epoch {done + 1}/3"), out[-3000:]
    assert history_epochs(stage) == [1, 2, 3]
    # The data stream is a function of (seed, step) and the optimizer state is
    # restored: the result is the uninterrupted run's, bit for bit.
    assert_same_weights(pipeline / "softmax" / "last.keras", stage / "last.keras")
    assert_same_weights(pipeline / "softmax" / "best.keras", stage / "best.keras")


# --- distribution strategies ------------------------------------------------------------------

MIRRORED_SCRIPT = """
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {root!r})
from deep_speaker.commands import train_cli

print("logical CPUs:", len(tf.config.list_logical_devices("CPU")), flush=True)
sys.exit(train_cli.main(sys.argv[1:]))
"""


def check_saved_model(path: Path) -> keras.Model:
    """The checkpoint loads in safe mode and embeds windows as unit vectors."""
    model = keras.models.load_model(path, compile=False, safe_mode=True)
    windows = np.random.default_rng(0).standard_normal((2, 100, 64, 1)).astype(np.float32)
    embeddings = model.predict(windows, verbose=0)[0]
    assert embeddings.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    return model


def test_mirrored_strategy_on_two_logical_cpus(cache, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT.format(root=str(REPO_ROOT)))
    # AM-softmax with a margin warm-up: the margin is a tensor of the step inside the replica step.
    argv = ["--loss_on_softmax", *SMALL, "--steps_per_epoch", "2", "--epochs", "1", "--strategy", "mirrored",
            "--head", "amsoftmax", "--am_margin_warmup_epochs", "1",
            "--cache_output_dir", str(cache), "--checkpoint_dir", str(tmp_path / "checkpoints")]
    process = subprocess.Popen([sys.executable, str(script), *argv], cwd=REPO_ROOT, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = finish(process, "mirrored training")
    assert "logical CPUs: 2" in out
    assert "MirroredStrategy with devices" in out and "CPU:1" in out
    stage = tmp_path / "checkpoints" / "softmax"
    assert history_epochs(stage) == [1]
    model = check_saved_model(stage / "last.keras")
    # Replicas normalise with the statistics of the global batch, so they keep one
    # set of moving statistics.
    assert all(layer.synchronized for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))


def test_multiworker_strategy_with_two_local_workers(cache, tmp_path):
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    argv = ["--loss_on_softmax", *SMALL, "--steps_per_epoch", "2", "--epochs", "1", "--strategy", "multiworker",
            "--cache_output_dir", str(cache), "--checkpoint_dir", str(tmp_path)]
    workers = [run_cli(argv, env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                                         "index": index}})})
               for index in range(2)]
    try:
        outputs = [finish(worker, f"worker {index}") for index, worker in enumerate(workers)]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    chief, other = tmp_path / "softmax", tmp_path / "softmax" / "workers" / "1"
    assert f"checkpoints in {chief}\n" in outputs[0] and f"checkpoints in {other}\n" in outputs[1]
    assert history_epochs(chief) == [1]
    rows, other_rows = history(chief), history(other)
    assert [{**row, "seconds": ANY} for row in rows] == other_rows  # the same all-reduced loss
    # Both workers applied the same updates and kept the same batch-norm statistics.
    assert_same_weights(chief / "last.keras", other / "last.keras")
    check_saved_model(chief / "last.keras")


# --- input pipelines, mixed precision, determinism (issue 18) --------------------------------------

def test_the_in_ram_pipeline_still_trains_and_matches_the_store(cache, tmp_path):
    """--input_pipeline memory (every frame in RAM, float32) and the default
    feature store (float16 on disk) draw the same windows from the same
    initial model, so the loss of a first step agrees to float16 rounding.
    (Later steps drift apart faster: Adam's first updates are nearly the signs
    of the gradients, which tiny input differences can flip.)"""
    short = [*SMALL, "--loss_on_softmax", "--steps_per_epoch", "1", "--epochs", "1"]
    code, _, err = train(cache, tmp_path / "memory", *short, "--input_pipeline", "memory")
    assert code == 0, err
    code, out, err = train(cache, tmp_path / "store", *short)
    assert code == 0, err
    memory, store = (float(history(tmp_path / kind / "softmax")[0]["loss"]) for kind in ("memory", "store"))
    assert abs(memory - store) < 2e-3 * memory, (memory, store)


def test_mixed_precision_trains_on_cpu_and_saves_a_float32_model(cache, tmp_path):
    code, out, err = train(cache, tmp_path, *SOFTMAX, "--mixed_precision", "--log_every", "4")
    assert code == 0, err
    assert keras.mixed_precision.global_policy().name == "float32"  # the process-wide policy is restored
    losses = [float(r["loss"]) for r in history(tmp_path / "softmax")]
    assert losses[-1] < 0.8 * losses[0], losses  # loss scaling keeps float16 gradients useful
    model = check_saved_model(tmp_path / "softmax" / "last.keras")
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}  # scoring gets a float32 model


DETERMINISTIC_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from deep_speaker.commands import train_cli

argv, folder = sys.argv[1:-1], sys.argv[-1]
for run in ("first", "second"):
    code = train_cli.main([*argv, "--deterministic", "--checkpoint_dir", f"{{folder}}/{{run}}"])
    if code:
        sys.exit(code)
"""


def test_deterministic_flag_gives_bit_identical_runs(cache, tmp_path):
    """--deterministic turns on TensorFlow's op determinism (process-wide, so in
    a process of its own, which trains twice from the same seed)."""
    script = tmp_path / "deterministic.py"
    script.write_text(DETERMINISTIC_SCRIPT.format(root=str(REPO_ROOT)))
    argv = ["--loss_on_softmax", *SMALL, "--steps_per_epoch", "4", "--epochs", "1",
            "--cache_output_dir", str(cache), str(tmp_path)]
    process = subprocess.Popen([sys.executable, str(script), *argv], cwd=REPO_ROOT, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = finish(process, "two --deterministic runs")
    assert out.count("softmax epoch 1/1") == 2
    assert_same_weights(tmp_path / "first" / "softmax" / "last.keras", tmp_path / "second" / "softmax" / "last.keras")
