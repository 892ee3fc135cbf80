"""train_cli.py: the seed's three training commands."""
from __future__ import annotations

from deep_speaker.commands.common import (DEFAULT_CACHE_DIR, DEFAULT_CHECKPOINT_DIR, CommandError, checked_config,
                                          non_negative_int, parser, positive_float, positive_int, run, setup_logging)
from deep_speaker.config import Config

DEFAULTS = Config()


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
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help="epochs of this stage")
    p.add_argument("--steps_per_epoch", type=positive_int, default=DEFAULTS.steps_per_epoch, help="steps per epoch")
    p.add_argument("--batch_size", type=positive_int, default=DEFAULTS.batch_size,
                   help="windows per step (softmax) or triplets per step (embeddings), over all replicas")
    p.add_argument("--lr", type=positive_float, default=DEFAULTS.lr, help="Adam learning rate")
    p.add_argument("--lr_schedule", choices=("constant", "cosine"), default=DEFAULTS.lr_schedule,
                   help="learning-rate schedule over the stage")
    p.add_argument("--width", type=positive_float, default=DEFAULTS.width,
                   help="filter-count multiplier: 1.0 = paper (~24 M parameters), 0.125 for laptops and tests")
    p.add_argument("--frames", type=positive_int, default=DEFAULTS.frames, help="training window length (10 ms frames)")
    p.add_argument("--head", choices=("softmax", "amsoftmax"), default=DEFAULTS.head,
                   help="speaker head of softmax stages: plain softmax (seed) or additive-margin cosine softmax")
    p.add_argument("--am_margin_warmup_epochs", type=non_negative_int, default=DEFAULTS.am_margin_warmup_epochs,
                   help="--head amsoftmax: epochs over which the margin grows from 0 to its full value")
    p.add_argument("--triplet_margin", type=positive_float, default=DEFAULTS.triplet_margin,
                   help="alpha of the cosine triplet loss")
    p.add_argument("--negatives", choices=("hard", "random"), default=DEFAULTS.negatives,
                   help="triplet negatives: most similar of a random pool of speakers, or random (seed)")
    p.add_argument("--spec_augment", action="store_true", help="time and frequency masking of training windows")
    p.add_argument("--perturbed_speakers", choices=("classes", "augment"), default=DEFAULTS.perturbed_speakers,
                   help="speed-perturbed copies <speaker>-sp<f> in the inputs: speakers of their own (classes) "
                        "or more training data of their speaker (augment)")
    p.add_argument("--batch_norm_momentum", type=float, default=DEFAULTS.batch_norm_momentum,
                   help="weight of the old value in batch norm's moving statistics (0..0.9999)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of initialisation and batches")
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


def _main(argv) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.freeze_embedding_weights and not args.loss_on_softmax:
        p.error("--freeze_embedding_weights goes with --loss_on_softmax")
    setup_logging(args.verbose)
    if args.loss_on_embeddings:
        stage = "triplet"
    else:
        stage = "softmax_frozen" if args.freeze_embedding_weights else "softmax"

    from deep_speaker.training import TrainingError, train_stage

    config = DEFAULTS.override(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                               lr=args.lr, lr_schedule=args.lr_schedule, width=args.width, frames=args.frames,
                               head=args.head, triplet_margin=args.triplet_margin, negatives=args.negatives,
                               spec_augment=args.spec_augment, perturbed_speakers=args.perturbed_speakers,
                               am_margin_warmup_epochs=args.am_margin_warmup_epochs,
                               batch_norm_momentum=args.batch_norm_momentum, seed=args.seed)
    checked_config(config)
    if stage == "triplet" and args.batch_size * 3 > 3 * 1024:
        raise CommandError("--batch_size of triplets above 1024")
    try:
        result = train_stage(stage, config, args.cache_output_dir, args.checkpoint_dir,
                             strategy_name=args.strategy, restart=args.restart, input_pipeline=args.input_pipeline,
                             mixed_precision=args.mixed_precision, deterministic=args.deterministic,
                             log_every=args.log_every, store_shard_mb=args.store_shard_mb)
    except TrainingError as error:
        raise CommandError(str(error)) from None
    if result.already_finished:
        print(f"{stage}: already trained for {result.epochs_done} epochs in {result.stage_dir} "
              f"(--epochs more to continue, --restart to start over)")
    best = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.best.items())
    print(f"{stage}: done, best {best or '-'}; checkpoints in {result.stage_dir}")
    return 0
