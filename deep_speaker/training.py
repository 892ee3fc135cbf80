"""The three training stages of train_cli.py, one training loop for all.

- "softmax": softmax pre-training from scratch (`--loss_on_softmax`), or
  fine-tuning of another folder's softmax stage (`--start_from DIR`: e.g. longer
  windows and a larger margin on the same speakers, or a new head on other ones).
- "triplet": cosine triplet loss from the best softmax checkpoint
  (`--loss_on_embeddings --normalize_embeddings`).
- "softmax_frozen": a new softmax head on frozen triplet embeddings
  (`--loss_on_softmax --freeze_embedding_weights --normalize_embeddings`).

One `tf.function` step run with `strategy.run` serves the default, mirrored
and multi-worker strategies alike (Keras `fit` fails under
MultiWorkerMirroredStrategy with TF 2.21 / Keras 3.15).

Each stage writes to ``<checkpoint_dir>/<stage>/`` (the layout, the stage order and
the state file: `deep_speaker.checkpoints`): ``last.keras`` (+ optimizer state)
after every epoch, ``best.keras``, ``config.json`` (the Config, speakers
included), ``state.json``, ``history.csv``, ``training_curves.png`` and
``tensorboard/``. Rerunning a killed stage resumes after its last epoch.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras

from deep_speaker.checkpoints import (CONFIG_FILE, EARLIER_STAGE, EMBEDDING_FILE, STAGES, CheckpointError,
                                      ResolvedModel, StageFolder, load_embedding_model, model_folder)
from deep_speaker.config import AUDIO_FIELDS, CONFIG_VERSION, DATA_FIELDS, FEATURE_FIELDS, Config
from deep_speaker.errors import InputError
from deep_speaker.inputs import (UtteranceBank, evaluation_windows, make_bank, softmax_dataset, triplet_dataset,
                                 window_sampler)
from deep_speaker.io_utils import atomic_save_npz, atomic_write_text
from deep_speaker.metrics import all_pairs_trials, equal_error_rate, score_trials
from deep_speaker.model import (am_margin_at, attach_head, build_embedding_model, copy_weights_by_name,
                                load_checkpoint, speaker_logits, triplet_loss)
from deep_speaker.progress import progress_bar
from deep_speaker.training_inputs import (inputs_data_settings, load_inputs, merge_augmented_copies,
                                          merge_perturbed_speakers)

log = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multiworker")
INPUT_PIPELINES = ("store", "memory")  # the on-disk feature store (default), or every frame in RAM (the seed's way)
DEFAULT_LOG_EVERY = 20  # steps between reads of the device-side loss for the progress bar
# Windows per predict() call outside the training step (memory, not results): the
# hard-negative refresh embeds 2 windows of `frames` per speaker, the per-epoch
# evaluation `eval_utterances` crops of `eval_frames`.
MINING_PREDICT_BATCH = 256
EVAL_PREDICT_BATCH = 64
# The command that trains each stage a later one starts from (for the error naming it).
STAGE_COMMANDS = {"softmax": "--loss_on_softmax", "triplet": "--loss_on_embeddings --normalize_embeddings"}
# Fields a resumed or next stage must share with the checkpoint it starts from.
ARCHITECTURE_FIELDS = ("model_name", "width", "pooling", "embedding_dim", "num_fbanks", "clipped_relu_max")


class TrainingError(InputError):
    """A stage that cannot start (missing inputs, missing earlier stage, ...)."""


@dataclass
class StageResult:
    stage: str
    stage_dir: Path
    epochs_done: int
    best: dict
    already_finished: bool = False

    def lines(self) -> list[str]:
        """What a finished (or already finished) stage reports, as train_cli.py prints it."""
        lines = []
        if self.already_finished:
            lines.append(f"{self.stage}: already trained for {self.epochs_done} epochs in {self.stage_dir} "
                         f"(--epochs more to continue, --restart to start over)")
        best = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in self.best.items())
        lines.append(f"{self.stage}: done, best {best or '-'}; checkpoints in {self.stage_dir}")
        return lines


def make_strategy(name: str) -> tf.distribute.Strategy:
    """default: one device; mirrored: all local GPUs (or all logical CPUs when
    there is no GPU); multiworker: MultiWorkerMirroredStrategy over TF_CONFIG."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise TrainingError("--strategy multiworker needs TF_CONFIG describing the cluster "
                                "(see https://www.tensorflow.org/guide/distributed_training)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TrainingError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def _worker_identity(strategy) -> tuple[bool, int]:
    """(is_chief, task_id): only the chief writes the stage folder."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, 0
    task_id = resolver.task_id or 0
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    is_chief = resolver.task_type == "chief" or (resolver.task_type == "worker" and task_id == 0 and not has_chief)
    return is_chief, task_id


def _check_architecture(config: Config, saved: Config, source: Path, fields=ARCHITECTURE_FIELDS,
                        hint: str = "use the same flags, or --restart") -> None:
    different = [f for f in fields if getattr(config, f) != getattr(saved, f)]
    if different:
        details = ", ".join(f"{f}={getattr(saved, f)!r} there vs {getattr(config, f)!r} now" for f in different)
        raise TrainingError(f"{source}: checkpoint was trained with other settings ({details}); {hint}")


def _check_features(inputs: dict[str, dict], config: Config, cache_dir: Path) -> Config:
    """Check that every speaker's inputs were made with the same features and
    the same data settings; returns `config` with them (features, trim rule,
    split, speed factors, copies: what preprocess.py decided, `Config.DATA_FIELDS`),
    which the model is built for, the checkpoint's config.json records and
    scoring applies. Inputs written before they recorded their settings get the
    cache's audio settings and the speed factors and copies they hold."""
    features = {speaker: data.get("feature_settings") for speaker, data in sorted(inputs.items())
                if data.get("feature_settings") is not None}
    if features:
        (first, expected), *rest = features.items()
        for speaker, settings in rest:
            if settings != expected:
                raise TrainingError(f"{cache_dir}/inputs/{speaker}.pkl: features made with {settings}, "
                                    f"{cache_dir}/inputs/{first}.pkl with {expected}; regenerate the inputs")
        config = config.override(**expected)
    recorded = inputs_data_settings(inputs)
    if recorded is None:
        from deep_speaker.audio_cache import read_audio_settings

        audio, known = read_audio_settings(cache_dir)
        if not known:
            log.warning("%s/inputs record no data settings and the cache none either: the checkpoint's config.json "
                        "assumes %s", cache_dir, ", ".join(f"{k}={v!r}" for k, v in audio.items()))
        speeds = sorted({float(data.get("speed", 1.0)) for data in inputs.values()} - {1.0})
        copies = max((int(data.get("augmented_copy", 0)) for data in inputs.values()), default=0)
        recorded = {**audio, "speed_perturbations": speeds, "augment_copies": copies}
    different = [f"{k}: {v!r} in the data settings, {config.feature_settings()[k]!r} in the features"
                 for k, v in recorded.items() if features and k in FEATURE_FIELDS and v != config.feature_settings()[k]]
    if different:
        raise TrainingError(f"{cache_dir}/inputs: features made with other settings than their data settings say "
                            f"({'; '.join(different)}); regenerate the inputs")
    return config.override(**recorded)


def _inputs_config(cache_dir: Path, config: Config) -> Config:
    """`config` with the data settings of the training inputs (what preprocess.py
    decided: `inputs/settings.json`; for inputs older than that record, the
    feature settings their first pickle records), so that the model is built for
    their num_fbanks and config.json records them; `_check_features` then checks
    every speaker against them. Without inputs (a cache holding only the feature
    store) `_store_banks` takes the store's."""
    from deep_speaker.training_inputs import INPUTS_DIR, load_inputs_file, read_inputs_settings

    recorded = read_inputs_settings(cache_dir)
    if recorded is not None:
        return config.override(**{k: recorded[k] for k in DATA_FIELDS})
    first = next(iter(sorted((cache_dir / INPUTS_DIR).glob("*.pkl"))), None)
    settings = load_inputs_file(first).get("feature_settings") if first is not None else None
    return config.override(**settings) if settings else config


def _recorded_config(stage: str, config: Config, strategy_name: str, cache_dir: Path, start: "StartingPoint | None",
                     saved: Config | None, where: Path) -> Config:
    """The config.json of a stage: every setting it trains with, the data
    settings of the inputs (``inputs/settings.json``, which stage 2 writes after
    every pickle; inputs older than it keep what `_check_features` found), the
    strategy, and the settings of the stages it started from. A resumed stage
    must have the data settings it was started with."""
    from deep_speaker.training_inputs import read_inputs_settings

    recorded = read_inputs_settings(cache_dir)
    if recorded is not None:
        data = {k: recorded[k] for k in DATA_FIELDS}
        different = [f"{k}: {data[k]!r} there, {getattr(config, k)!r} in the pickles"
                     for k in FEATURE_FIELDS if data[k] != getattr(config, k)]
        if different:  # training took the settings from there: only a stage 2 cut short gets here
            raise TrainingError(f"{cache_dir}/inputs/settings.json records other features than the inputs "
                                f"({'; '.join(different)}); regenerate the inputs")
        config = config.override(**data)
    elif not config.speed_perturbations and not config.augment_copies:  # nothing read from the inputs' pickles
        from deep_speaker.training_inputs import legacy_inputs_data_settings

        config = config.override(**legacy_inputs_data_settings(cache_dir))
    if saved is not None and saved.config_version >= 2:
        if different := _data_settings_differences(saved, config):
            raise TrainingError(f"{where}: stage was trained on inputs made with other settings "
                                f"({'; '.join(different)}); use the same cache, or --restart")
        earlier = saved.earlier_stages
    else:
        earlier = _earlier_stages(start, config)
    return config.override(stage=stage, strategy=strategy_name, earlier_stages=earlier,
                           config_version=CONFIG_VERSION)


def _data_settings_differences(saved: Config, config: Config, fields=DATA_FIELDS) -> list[str]:
    """'<field>: <saved> there vs <now> now' for each data setting of `fields`
    in which a saved config differs from the inputs trained on now."""
    then, now = saved.data_settings(), config.data_settings()
    return [f"{k}: {then[k]!r} there vs {now[k]!r} now" for k in fields if then[k] != now[k]]


def _earlier_stages(start: "StartingPoint | None", config: Config) -> list[dict]:
    """Settings of the models a stage starts from (`start` and what that one
    started from), oldest first. Refuses an earlier stage trained on inputs made
    with other data settings, and an exported model made for other features."""
    if start is None or not start.config.is_file():
        return []
    before = Config.load(start.config)
    if start.exported:  # trained on another corpus: only what the model sees must agree
        if different := _data_settings_differences(before, config, dict.fromkeys(AUDIO_FIELDS + FEATURE_FIELDS)):
            raise TrainingError(f"{start.config}: the model was trained on audio or features made with other "
                                f"settings ({'; '.join(different)}); make the cache and inputs with its settings")
    elif before.config_version >= 2 and (different := _data_settings_differences(before, config)):
        raise TrainingError(f"{start.config}: the {start.stage} stage was trained on inputs made with other settings "
                            f"({'; '.join(different)}); train every stage on the same cache")
    return list(before.earlier_stages) + [{**before.stage_settings(), "stage": before.stage or start.stage}]


def train_stage(stage: str, config: Config, cache_dir: str | Path, checkpoint_dir: str | Path, *,
                strategy_name: str = "default", restart: bool = False, input_pipeline: str = "store",
                mixed_precision: bool = False, deterministic: bool = False, log_every: int = DEFAULT_LOG_EVERY,
                store_shard_mb: float | None = None, start_from: str | Path | None = None) -> StageResult:
    """Run (or resume) one training stage; returns what it achieved.

    start_from: the checkpoint folder holding the stage this one starts from
    (default `checkpoint_dir`), e.g. a triplet stage on a subset of the corpus
    (its own cache and checkpoint folder) from a softmax stage trained on all of it.
    The two caches must share their data settings (refused otherwise). For the
    softmax stage it is optional: the stage fine-tunes that folder's best softmax
    model instead of starting from scratch (its speaker head too when the
    speakers and the head type are the same, a new head otherwise). Any stage
    may also start from an exported model: a folder holding ``embedding.keras``
    and its config.json (`export_model.py`), or "pretrained", the model shipped
    in the package; it must have been made for the same audio and features.

    input_pipeline "store" streams windows from ``<cache>/store/`` (packed from
    ``inputs/`` first when missing or stale), "memory" loads every frame into
    RAM. mixed_precision: float16 compute, float32 variables, dynamic loss
    scaling (for GPUs); checkpoints are saved as float32 models. deterministic:
    TensorFlow's op determinism, for bit-identical results on GPUs too (slower).
    """
    if stage not in STAGES:
        raise TrainingError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if input_pipeline not in INPUT_PIPELINES:
        raise TrainingError(f"unknown input pipeline {input_pipeline!r}; choose one of {', '.join(INPUT_PIPELINES)}")
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    policy = keras.mixed_precision.global_policy()
    start = starting_point(stage, checkpoint_dir, start_from)
    try:
        return _train_stage(stage, config, Path(cache_dir), Path(checkpoint_dir), strategy_name, restart,
                            input_pipeline, mixed_precision, log_every, store_shard_mb, start)
    finally:
        keras.mixed_precision.set_global_policy(policy)


@dataclass
class StartingPoint:
    """The model a stage starts from: the best model of an earlier stage (or, for
    a softmax stage, of another folder's softmax stage), or an exported model."""
    stage: str  # the stage that trained it ("exported" for an export)
    model: Path
    config: Path
    exported: bool = False

    @classmethod
    def of_stage(cls, checkpoint_dir: Path, stage: str) -> "StartingPoint":
        folder = StageFolder.of(checkpoint_dir, stage)
        return cls(stage, folder.best, folder.config)

    def missing(self) -> str:
        """The one-line error for a starting model that is not there."""
        if self.exported:
            return f"{self.model}: no exported model (export_model.py writes {EMBEDDING_FILE} and {CONFIG_FILE})"
        return (f"{self.model}: no checkpoint of the previous stage; run train_cli.py "
                f"{STAGE_COMMANDS[self.stage]} first")


def starting_point(stage: str, checkpoint_dir: str | Path, start_from: str | Path | None) -> StartingPoint | None:
    """The model `stage` starts from, or None for scratch. A triplet stage starts
    from the softmax stage and softmax_frozen from the triplet stage, in
    `checkpoint_dir` unless `start_from` names another folder; the softmax
    stage starts from scratch unless `start_from` names a folder whose softmax
    stage it fine-tunes. `start_from` may instead be an exported model's folder
    (``embedding.keras`` + config.json) or "pretrained" (the shipped model)."""
    if start_from is not None:
        folder = model_folder(start_from)
        previous = EARLIER_STAGE.get(stage, "softmax")
        if (folder / EMBEDDING_FILE).exists() and not StageFolder.of(folder, previous).best.exists():
            return StartingPoint("exported", folder / EMBEDDING_FILE, folder / CONFIG_FILE, exported=True)
        if stage not in EARLIER_STAGE and folder.resolve() == Path(checkpoint_dir).resolve():
            raise TrainingError(f"--start_from {start_from}: a softmax stage fine-tunes the softmax stage of "
                                f"another checkpoint folder, not its own")
        return StartingPoint.of_stage(folder, previous)
    if stage in EARLIER_STAGE:
        return StartingPoint.of_stage(Path(checkpoint_dir), EARLIER_STAGE[stage])
    return None


def _train_stage(stage, config, cache_dir, checkpoint_dir, strategy_name, restart, input_pipeline, mixed_precision,
                 log_every, store_shard_mb, start) -> StageResult:
    strategy = make_strategy(strategy_name)
    is_chief, task_id = _worker_identity(strategy)
    folder = StageFolder.of(checkpoint_dir, stage, worker=None if is_chief else task_id)
    if restart and folder.path.exists() and is_chief:
        shutil.rmtree(folder.path)
    folder.path.mkdir(parents=True, exist_ok=True)

    try:
        state = folder.read_state()
    except CheckpointError as error:  # a damaged state.json: train_stage's own error type, as before
        raise TrainingError(str(error)) from None
    folder.commit(state["epoch"] if state is not None else 0)
    if state is not None:
        saved = Config.load(folder.config)
        # num_fbanks comes from the inputs: checked below, once training has taken it from them
        _check_architecture(config, saved, folder.config, [f for f in ARCHITECTURE_FIELDS if f not in DATA_FIELDS])
        if state["epoch"] >= config.epochs:
            log.info("%s stage already finished (%d epochs) in %s; --restart to train again",
                     stage, state["epoch"], folder.path)
            return StageResult(stage, folder.path, state["epoch"], state.get("best", {}), already_finished=True)

    bank_for_share = None
    config = _inputs_config(cache_dir, config)
    if input_pipeline == "store":
        config, speakers, train_bank, test_bank, bank_for_share = _store_banks(cache_dir, config, store_shard_mb)
    else:
        inputs = load_inputs(cache_dir)
        config = _check_features(inputs, config, cache_dir)
        inputs = merge_augmented_copies(inputs)
        if config.perturbed_speakers == "augment":
            inputs = merge_perturbed_speakers(inputs)
        speakers = sorted(inputs)
    if len(speakers) < 2:
        raise TrainingError(f"{cache_dir}/inputs: {len(speakers)} training speaker(s); at least 2 are needed")
    if state is not None and saved.speakers != speakers:
        raise TrainingError(f"{folder.config}: trained on other speakers than {cache_dir}/inputs holds; "
                            f"use the same cache, or --restart")
    # The settings it trains with and records: the inputs' data settings; a resumed stage, or one
    # started from an earlier stage, trained on inputs made with other ones is refused here.
    config = _recorded_config(stage, config.override(speakers=speakers, mixed_precision=mixed_precision),
                              strategy_name, cache_dir, start, saved if state is not None else None,
                              folder.config)
    if state is not None:
        _check_architecture(config, saved, folder.config)
    if input_pipeline == "memory":
        train_bank = make_bank(inputs, "train", speakers)
        test_bank = make_bank(inputs, "test", speakers)
        del inputs

    keras.utils.set_random_seed(config.seed)
    float32_twin = None
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    with strategy.scope():
        model, embedding_model = _build_stage_model(stage, config, start, folder, state)
        optimizer = keras.optimizers.Adam(learning_rate=_learning_rate(config))
        if mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    if mixed_precision:  # checkpoints stay float32 models, as scoring and the next stages expect
        keras.mixed_precision.set_global_policy("float32")
        float32_twin, twin_embedding = _stage_architecture(stage, config,
                                                           synchronized=strategy.num_replicas_in_sync > 1)
        if stage == "softmax_frozen":
            for layer in twin_embedding.layers:
                layer.trainable = False
        keras.mixed_precision.set_global_policy("mixed_float16")
    if state is not None:
        _restore_optimizer(optimizer, folder.last_optimizer)
    config.save(folder.config)

    trainer = _Trainer(stage, config, strategy, model, embedding_model, optimizer, train_bank, test_bank,
                       bank_for_share=bank_for_share, log_every=log_every)
    # Rows of an epoch that was written but not recorded in state.json are redone.
    history = ([row for row in _read_history(folder.history) if row["epoch"] <= state["epoch"]]
               if state is not None else [])
    best = state.get("best", {}) if state is not None else {}
    first_epoch = state["epoch"] + 1 if state is not None else 1
    writer = tf.summary.create_file_writer(str(folder.tensorboard)) if is_chief else None
    for epoch in range(first_epoch, config.epochs + 1):
        started = time.monotonic()
        train_metrics = trainer.train_epoch(epoch)
        test_metrics = trainer.evaluate()
        row = {"epoch": epoch, **train_metrics, **test_metrics, "seconds": round(time.monotonic() - started, 2)}
        history.append(row)
        improved = _is_better(stage, row, best)
        if improved:
            best = {k: row[k] for k in row if k in ("epoch", "test_accuracy", "test_eer")}
        print(_epoch_line(stage, row, config.epochs, improved), flush=True)
        if float32_twin is not None:
            float32_twin.set_weights(model.get_weights())
        _save_epoch(folder, float32_twin or model, optimizer, config, history, best, epoch, improved, writer, row)
    return StageResult(stage, folder.path, config.epochs, best)


def _store_banks(cache_dir: Path, config: Config, store_shard_mb: float | None):
    """(config, speakers, train bank, test bank, share -> train bank) from the
    feature store, packed from inputs/ first when it is missing or stale (with the
    inputs' settings, which `config` holds: `_inputs_config`); the config after
    `_check_features` on what the inputs recorded. A cache with a store and no
    inputs/ (a worker given only the store) trains from the store, with its settings."""
    from deep_speaker.feature_store import (DEFAULT_SHARD_MB, FeatureStore, StoreError, inputs_signature,
                                            pack_store, store_dir)

    has_inputs = inputs_signature(cache_dir) is not None
    if has_inputs:  # packed with the inputs' settings, which `config` holds (`_inputs_config`)
        summary = pack_store(cache_dir, config, max_shard_mb=store_shard_mb or DEFAULT_SHARD_MB)
        if summary.packed:
            print(summary.line(), flush=True)
    elif not (store_dir(cache_dir) / "manifest.json").exists():
        raise FileNotFoundError(f"{cache_dir}/inputs: no training inputs (run preprocess.py "
                                f"--generate_training_inputs)")
    try:
        store = FeatureStore(cache_dir)
        if not has_inputs:  # only the store: its manifest is the record of the features
            config = config.override(**store.manifest.get("feature_settings", {}))
        store.check_settings(config)  # a store packed with other settings than the inputs'
        config = _check_features(store.stand_ins(), config, cache_dir)
        speakers, _ = store.classes(config.perturbed_speakers)
        if len(speakers) < 2:
            return config, speakers, None, None, None
        train_bank = store.bank("train", config.perturbed_speakers)
        test_bank = store.bank("test", config.perturbed_speakers)
    except StoreError as error:
        raise TrainingError(str(error)) from None
    shares = {}

    def bank_for_share(worker: int, workers: int):
        if (worker, workers) not in shares:
            try:
                shares[worker, workers] = store.bank("train", config.perturbed_speakers, share=(worker, workers))
            except StoreError as error:
                raise TrainingError(str(error)) from None
            log.info("input pipeline %d of %d reads %d of %d store shards (%d training utterances)", worker, workers,
                     len(shares[worker, workers].shards_used), len(store.shards),
                     shares[worker, workers].num_utterances)
        return shares[worker, workers]

    return config, speakers, train_bank, test_bank, bank_for_share


def _learning_rate(config: Config):
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.lr, config.epochs * config.steps_per_epoch, alpha=0.01)
    raise TrainingError(f"unknown lr_schedule {config.lr_schedule!r}; choose constant or cosine")


def _build_stage_model(stage, config, start, folder, state):
    """The training model and its embedding part, with the right starting weights.

    Built in the strategy's scope. With several replicas, batch normalisation
    uses the statistics of the global batch: replicas that each kept moving
    statistics of their own batches would save different models."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    model, embedding_model = _stage_architecture(stage, config, synchronized=replicas > 1)
    if state is not None:
        model.set_weights(load_checkpoint(folder.last).get_weights())
    elif start is not None:
        _start_from(start, embedding_model, config, head_model=model if stage == start.stage else None)
    if stage == "softmax_frozen":
        for layer in embedding_model.layers:
            layer.trainable = False
    return model, embedding_model


def _stage_architecture(stage, config, synchronized: bool):
    """(model, embedding model) of a stage, freshly initialised."""
    embedding_model = build_embedding_model(config, synchronized_batch_norm=synchronized)
    if stage == "triplet":
        return embedding_model, embedding_model
    return attach_head(embedding_model, len(config.speakers), config), embedding_model


def _start_from(start: StartingPoint, embedding_model, config: Config, head_model=None) -> None:
    """Copy the embedding weights of the model a stage starts from; with
    `head_model` (a softmax stage fine-tuning another's) its speaker head too,
    when it was trained on the same speakers with the same head type."""
    if not start.model.exists():
        raise TrainingError(start.missing())
    saved = Config.load(start.config)
    _check_architecture(config, saved, start.config, hint=f"use the same flags (or --config {start.config})")
    origin = "exported model" if start.exported else f"best {start.stage} checkpoint"
    source = load_embedding_model(ResolvedModel(start.model, saved, origin))
    copied = copy_weights_by_name(source, embedding_model)
    log.info("starting from %s (%d layers copied by name)", start.model, copied)
    if head_model is None:
        return
    if saved.speakers == config.speakers and saved.head == config.head:
        copy_weights_by_name(load_checkpoint(start.model), head_model)
        log.info("speaker head taken from %s (same %d speakers)", start.model, len(config.speakers))
    else:
        log.info("new speaker head: %s was trained on other speakers or another head type", start.model)


def _restore_optimizer(optimizer, path: Path) -> None:
    if not path.exists():
        log.warning("%s missing: optimizer state starts fresh", path)
        return
    with np.load(path) as saved:
        values = [saved[f"v{i}"] for i in range(len(saved.files))]
    if len(values) != len(optimizer.variables):
        log.warning("%s does not match the optimizer: starting it fresh", path)
        return
    for variable, value in zip(optimizer.variables, values):
        variable.assign(value)


def _is_better(stage: str, row: dict, best: dict) -> bool:
    if not best:
        return True
    if stage == "triplet":
        return row["test_eer"] < best.get("test_eer", math.inf)
    return row["test_accuracy"] > best.get("test_accuracy", -math.inf)


def _epoch_line(stage: str, row: dict, epochs: int, improved: bool) -> str:
    parts = [f"{stage} epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}", f"train acc {row['accuracy']:.3f}"]
    if "test_accuracy" in row:
        parts.append(f"test acc {row['test_accuracy']:.3f}")
    parts.append(f"test EER {100 * row['test_eer']:.2f} %")
    parts.append(f"{row['seconds']:.0f} s" + (" (best)" if improved else ""))
    return ", ".join(parts)


HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "test_accuracy", "test_eer", "seconds")


def _read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for row in csv.DictReader(io.StringIO(path.read_text())):
        rows.append({k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v not in ("", None)})
    return rows


def _save_epoch(folder, model, optimizer, config, history, best, epoch, improved, writer, row) -> None:
    """Checkpoint after an epoch. The model and optimizer files are written
    under temporary names, state.json records the epoch, and only then do they
    replace last.keras, last_optimizer.npz and best.keras: a kill at any point
    leaves the files of the recorded epoch, so a rerun repeats the unrecorded
    epoch from the same weights and optimizer state (and gets the same result)."""
    uncommitted = {final: path for path, final in folder.uncommitted(epoch).items()}
    model.save(uncommitted[folder.last])
    atomic_save_npz(uncommitted[folder.last_optimizer],
                    **{f"v{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    if improved:
        shutil.copyfile(uncommitted[folder.last], uncommitted[folder.best])
    buffer = io.StringIO()
    table = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
    table.writeheader()
    table.writerows(history)
    atomic_write_text(folder.history, buffer.getvalue())
    if writer is not None:
        with writer.as_default(step=epoch):
            for key, value in row.items():
                if key != "epoch":
                    tf.summary.scalar(key, value)
        writer.flush()
    try:
        from deep_speaker.plots import plot_training_curves

        plot_training_curves({k: [r.get(k, math.nan) for r in history] for k in HISTORY_COLUMNS[1:5]},
                             folder.curves)
    except Exception as error:  # a plot must never stop training
        log.warning("training curves not plotted: %s", error)
    folder.write_state({"epoch": epoch, "best": best, "epochs": config.epochs, "history": str(folder.history)})
    folder.commit(epoch)


class _Trainer:
    """Steps and per-epoch evaluation of one stage under a distribution strategy."""

    def __init__(self, stage, config: Config, strategy, model, embedding_model, optimizer, train_bank, test_bank, *,
                 bank_for_share=None, log_every: int = DEFAULT_LOG_EVERY):
        """train_bank/test_bank: UtteranceBank or feature_store.StoreBank.
        bank_for_share(I, N): the training bank of input pipeline I of N (a
        multi-worker worker's share of the store); None: train_bank for all."""
        self.stage, self.config, self.strategy = stage, config, strategy
        self.model, self.embedding_model, self.optimizer = model, embedding_model, optimizer
        self.train_bank, self.test_bank = train_bank, test_bank
        self.bank_for_share = bank_for_share
        self.log_every = max(1, log_every)
        # Sums over the epoch, kept where the step runs: the host reads them every
        # log_every steps and at the epoch's end, never once per step.
        self._loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
        self._correct_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_correct_sum")
        self.global_batch = config.batch_size
        self.similarity = None
        if stage == "triplet" and config.negatives == "hard":
            num = len(config.speakers)
            self.similarity = tf.Variable(tf.zeros([num, num]), trainable=False, name="speaker_similarity")
        elif config.negatives not in ("hard", "random"):
            raise TrainingError(f"unknown negatives {config.negatives!r}; choose hard or random")
        self.eval_windows, self.eval_labels = evaluation_windows(test_bank, config.eval_frames,
                                                                 config.eval_utterances, config.seed)
        self._step = tf.function(self._distributed_step)
        self._iterator = None
        self._iterator_step = None

    def _dataset(self, first_step: int):
        def dataset_fn(context: tf.distribute.InputContext):
            batch = context.get_per_replica_batch_size(self.global_batch)
            bank = self.train_bank
            if self.bank_for_share is not None and context.num_input_pipelines > 1:
                bank = self.bank_for_share(context.input_pipeline_id, context.num_input_pipelines)
            common = dict(bank=bank, config=self.config, batch_size=batch, seed=self.config.seed,
                          first_step=first_step, stream=context.input_pipeline_id)
            if self.stage == "triplet":
                return triplet_dataset(speaker_similarity=self.similarity, **common)
            return softmax_dataset(**common)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def _replica_step(self, windows, labels):
        config = self.config
        with tf.GradientTape() as tape:
            if self.stage == "triplet":
                embeddings = tf.cast(self.model(windows, training=True), tf.float32)
                anchor, positive, negative = tf.split(embeddings, 3, axis=0)
                per_example = triplet_loss(anchor, positive, negative, config.triplet_margin)
                correct = tf.reduce_sum(anchor * positive, -1) > tf.reduce_sum(anchor * negative, -1)
            else:
                _, head = self.model(windows, training=True)
                head = tf.cast(head, tf.float32)
                margin = am_margin_at(self.optimizer.iterations, config)
                logits = speaker_logits(head, labels, config, training=True, margin=margin)
                per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
                correct = tf.equal(tf.cast(tf.argmax(head, axis=-1), tf.int32), labels)
            per_example = tf.cast(per_example, tf.float32)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n([tf.cast(x, tf.float32) for x in self.model.losses]))
            # Mixed precision: the loss scaled as Keras does (apply_gradients unscales and skips non-finite steps).
            scaled = self.optimizer.scale_loss(loss) if isinstance(
                self.optimizer, keras.optimizers.LossScaleOptimizer) else loss
        variables = self.model.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return loss, tf.reduce_sum(tf.cast(correct, tf.float32))

    def _distributed_step(self, iterator):
        windows, labels = next(iterator)
        loss, correct = self.strategy.run(self._replica_step, args=(windows, labels))
        total_loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        total_correct = self.strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
        self._loss_sum.assign_add(tf.cast(total_loss, tf.float64))
        self._correct_sum.assign_add(tf.cast(total_correct, tf.float64))
        return total_loss, total_correct

    def train_epoch(self, epoch: int) -> dict:
        config = self.config
        first_step = (epoch - 1) * config.steps_per_epoch
        mining = self.similarity is not None
        if not mining and (self._iterator is None or self._iterator_step != first_step):
            self._iterator = self._dataset(first_step)
        self._loss_sum.assign(0.0)
        self._correct_sum.assign(0.0)
        examples_per_step = self.global_batch
        with progress_bar(total=config.steps_per_epoch, desc=f"{self.stage} epoch {epoch}", unit="step") as bar:
            for step in range(config.steps_per_epoch):
                if mining and step % config.hard_refresh_steps == 0:
                    self._refresh_similarity(first_step + step)
                    # Batches prefetched before the refresh chose their negatives with
                    # the old similarities: a new iterator makes every batch depend on
                    # (seed, step, model) only, as in a run resumed at this step.
                    self._iterator = self._dataset(first_step + step)
                self._step(self._iterator)  # no read of its results: the host runs ahead of the device
                bar.update(1)
                if (step + 1) % self.log_every == 0:
                    bar.set_postfix(loss=f"{float(self._loss_sum.numpy()) / (step + 1):.3f}", refresh=False)
        self._iterator_step = first_step + config.steps_per_epoch
        loss_sum, correct = float(self._loss_sum.numpy()), float(self._correct_sum.numpy())
        return {"loss": loss_sum / config.steps_per_epoch,
                "accuracy": correct / (examples_per_step * config.steps_per_epoch)}

    def _refresh_similarity(self, step: int) -> None:
        """Speaker-centroid cosine similarities under the current model, for
        choosing hard negatives: two random windows per speaker."""
        sampler = window_sampler(self.train_bank, self.config.frames)  # made once: no copy per refresh
        speakers = tf.repeat(tf.range(len(self.config.speakers), dtype=tf.int64), 2)
        speakers = tf.boolean_mask(speakers, tf.gather(sampler.count, speakers) > 0)
        seed = tf.constant([self.config.seed, step], dtype=tf.int64)
        windows = sampler.random_windows(seed, sampler.random_utterances(seed + 1, speakers))
        embeddings = np.asarray(self.embedding_model.predict(windows, batch_size=MINING_PREDICT_BATCH, verbose=0),
                                np.float32)
        num = len(self.config.speakers)
        centroids = np.zeros((num, embeddings.shape[1]), np.float32)
        np.add.at(centroids, speakers.numpy(), embeddings)
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        similarity = centroids @ centroids.T
        np.fill_diagonal(similarity, -2.0)  # never the anchor's own speaker
        self.similarity.assign(similarity)

    def evaluate(self) -> dict:
        """Held-out metrics: verification EER of the embeddings (all pairs of
        evaluation crops), plus speaker accuracy for softmax stages."""
        metrics = {}
        if self.stage == "triplet":
            embeddings = self.embedding_model.predict(self.eval_windows, batch_size=EVAL_PREDICT_BATCH, verbose=0)
        else:
            embeddings, head = self.model.predict(self.eval_windows, batch_size=EVAL_PREDICT_BATCH, verbose=0)
            metrics["test_accuracy"] = float(np.mean(np.argmax(head, axis=1) == self.eval_labels))
        first, second, labels = all_pairs_trials(self.eval_labels)
        scores = score_trials(np.asarray(embeddings, np.float32), first, second)
        try:
            metrics["test_eer"] = float(equal_error_rate(scores, labels)[0])
        except ValueError:  # every held-out crop from one speaker: no EER
            metrics["test_eer"] = math.nan
        return metrics
