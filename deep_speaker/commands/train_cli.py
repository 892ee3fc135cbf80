"""train_cli.py: the seed's three training commands."""
from __future__ import annotations

from deep_speaker.checkpoints import CONFIG_FILE, PRETRAINED_DIR, PRETRAINED_NAME
from deep_speaker.commands.common import (DEFAULT_CACHE_DIR, DEFAULT_CHECKPOINT_DIR, CommandError, parser,
                                          positive_float, positive_int, run, setup_logging)
from deep_speaker.commands.config_flags import add_config_flags, config_from_args, training_settings_from_file
from deep_speaker.config import Config

# The Config fields training takes from flags (deep_speaker.commands.config_flags: name,
# default, help and bounds come from Config); --config FILE sets these and any other field.
TRAINING_FLAGS = ("epochs", "steps_per_epoch", "batch_size", "lr", "lr_schedule", "weight_decay", "width", "pooling",
                  "embedding_dim", "batch_norm_momentum", "frames", "head", "am_scale", "am_margin",
                  "am_margin_warmup_epochs", "triplet_margin", "negatives", "hard_pool_size", "hard_refresh_steps",
                  "spec_augment", "spec_augment_time_mask", "spec_augment_freq_mask", "window_cmvn",
                  "perturbed_speakers", "eval_utterances", "eval_frames", "seed")


def build_parser():
    p = parser("Deep Speaker training: softmax pre-training, triplet training, softmax on frozen embeddings.")
    loss = p.add_mutually_exclusive_group(required=True)
    loss.add_argument("--loss_on_softmax", action="store_true",
                      help="softmax stage (pre-training; with --freeze_embedding_weights: head only)")
    loss.add_argument("--loss_on_embeddings", action="store_true",
                      help="triplet stage (cosine triplet loss), starting from the best softmax checkpoint")
    p.add_argument("--normalize_embeddings", action="store_true",
                   help="accepted for the seed's commands: embeddings are always L2-normalised")
    p.add_argument("--freeze_embedding_weights", action="store_true",
                   help="with --loss_on_softmax: train only a new softmax head on the frozen triplet embeddings")
    p.add_argument("--cache_output_dir", default=str(DEFAULT_CACHE_DIR), help="cache holding inputs/")
    p.add_argument("--checkpoint_dir", default=str(DEFAULT_CHECKPOINT_DIR), help="one sub-folder per stage")
    p.add_argument("--start_from", default=None, metavar="DIR",
                   help="--loss_on_embeddings / --freeze_embedding_weights: the checkpoint folder holding the stage "
                        "this one starts from (default: --checkpoint_dir), e.g. a triplet stage on a subset's cache "
                        "from a softmax stage trained on the whole corpus (same data settings); --loss_on_softmax: "
                        "fine-tune that folder's softmax stage instead of starting from scratch (default: scratch). "
                        "Any stage: an exported model's folder (embedding.keras + config.json) or 'pretrained' (the "
                        "shipped model), to fine-tune it on your own speakers (same audio and feature settings)")
    settings = p.add_argument_group("training settings (a flag given here wins over --config FILE)")
    settings.add_argument("--config", metavar="FILE", default=None,
                          help="JSON object of Config fields to train with: a recipe (scripts/recipes/*.json) or a "
                               "checkpoint's config.json, to train again with its settings (its data settings, "
                               "decided by preprocess.py, and its bookkeeping are skipped; 'pretrained': the shipped "
                               "model's) (default: none)")
    add_config_flags(settings, TRAINING_FLAGS)
    p.add_argument("--strategy", choices=("default", "mirrored", "multiworker"), default="default",
                   help="tf.distribute strategy: one device, all local GPUs, or workers over TF_CONFIG")
    p.add_argument("--input_pipeline", choices=("store", "memory"), default="store",
                   help="store: stream windows from <cache>/store/ (packed from inputs/ when missing or stale; "
                        "memory stays flat at any corpus size); memory: load every frame into RAM (the seed's way)")
    p.add_argument("--store_shard_mb", type=positive_float, default=None,
                   help="when this run packs the feature store: largest shard in MB (default 256)")
    p.add_argument("--log_every", type=positive_int, default=20,
                   help="steps between reads of the loss for the progress bar: losses are summed on the device, "
                        "so no step waits for the host")
    p.add_argument("--mixed_precision", action="store_true",
                   help="float16 compute with float32 variables and dynamic loss scaling (GPUs with tensor cores); "
                        "checkpoints are still float32 models")
    p.add_argument("--deterministic", action="store_true",
                   help="TensorFlow op determinism: bit-identical results from the same seed on GPUs too "
                        "(CPU runs already are); slower")
    p.add_argument("--restart", action="store_true", help="discard this stage's checkpoints and train from the start")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    return run(_main, argv)


def training_config(args) -> Config:
    """The Config a parsed command line trains with: Config's defaults, then the
    fields of --config FILE, then the settings flags given on the command line."""
    path = PRETRAINED_DIR / CONFIG_FILE if args.config == PRETRAINED_NAME else args.config
    base = Config().override(**training_settings_from_file(path)) if path else Config()
    return config_from_args(args, TRAINING_FLAGS, base)


def _main(argv) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.freeze_embedding_weights and not args.loss_on_softmax:
        p.error("--freeze_embedding_weights goes with --loss_on_softmax")
    setup_logging(args.verbose)
    from deep_speaker.extras import require_extra

    # Before any work: a plain install (ONNX Runtime only) says in one line what to add.
    require_extra("train", "training (train_cli.py)", ("tensorflow", "tensorboard", "keras", "sklearn", "matplotlib"))
    if args.loss_on_embeddings:
        stage = "triplet"
    else:
        stage = "softmax_frozen" if args.freeze_embedding_weights else "softmax"

    config = training_config(args)  # a bad setting or --config file is reported before TensorFlow is imported
    if stage == "triplet" and config.batch_size > 1024:
        raise CommandError("--batch_size of triplets above 1024")
    from deep_speaker.training import TrainingError, train_stage

    try:
        result = train_stage(stage, config, args.cache_output_dir, args.checkpoint_dir,
                             strategy_name=args.strategy, restart=args.restart, input_pipeline=args.input_pipeline,
                             mixed_precision=args.mixed_precision, deterministic=args.deterministic,
                             log_every=args.log_every, store_shard_mb=args.store_shard_mb,
                             start_from=args.start_from)
    except TrainingError as error:
        raise CommandError(str(error)) from None
    for line in result.lines():
        print(line)
    return 0
