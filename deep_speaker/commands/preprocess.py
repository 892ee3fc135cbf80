"""preprocess.py: stage 1 (audio cache) and stage 2 (training inputs)."""
from __future__ import annotations

import argparse
import math

from deep_speaker.commands.common import (DATA_ROOT, DEFAULT_CACHE_DIR, comma_list, parser,
                                          positive_float, positive_int, run, setup_logging)
from deep_speaker.commands.config_flags import add_config_flags, config_from_args
from deep_speaker.config import AUDIO_FIELDS, DATA_FIELDS

# The Config fields preprocess.py takes from flags (default, help and bounds from Config): every data
# setting. Stage 1 applies the audio ones (config.AUDIO_FIELDS), stage 2 the rest.
CONFIG_FLAGS = DATA_FIELDS
AUDIO_FLAGS = AUDIO_FIELDS
INPUTS_FLAGS = tuple(name for name in DATA_FIELDS if name not in AUDIO_FIELDS)
# Flags spelled otherwise than their field (the seed's --speed_perturb).
FLAG_NAMES = {"speed_perturbations": "speed_perturb"}


def build_parser():
    p = parser("Deep Speaker preprocessing: cache trimmed audio (8 kHz by default), then build training inputs.")
    stage = p.add_argument_group("stages (at least one)")
    mode = stage.add_mutually_exclusive_group()
    mode.add_argument("--regenerate_full_cache", action="store_true",
                      help="wipe audio_cache_pkl/ and cache every utterance again (resumes if killed)")
    mode.add_argument("--update_cache", action="store_true",
                      help="cache only files not cached yet, e.g. a new samples/<Name>/ folder")
    stage.add_argument("--generate_training_inputs", action="store_true",
                       help="per-speaker fbank inputs/<speaker>.pkl and full_inputs.pkl from the cache")
    p.add_argument("--audio_dir", action="append", default=None, metavar="DIR",
                   help=f"corpus folder, repeatable (default: {DATA_ROOT}/VCTK-Corpus and, if present, "
                        f"{DATA_ROOT}/samples)")
    p.add_argument("--cache_output_dir", default=str(DEFAULT_CACHE_DIR), help="cache folder")
    p.add_argument("--multi_threading", action="store_true", help="use a process pool on all cores")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="number of worker processes (default: all cores with --multi_threading, else 1)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="cache only the I-th of N deterministic shards of the files (cluster job arrays)")
    p.add_argument("--mic", type=int, choices=(1, 2), default=1, help="VCTK 0.92 microphone")
    p.add_argument("--unseen_speakers", type=comma_list, default=None, metavar="A,B,...",
                   help="speakers left out of the training inputs (default: p363,p364,p374,p376 for VCTK, "
                        "none for other corpora)")
    p.add_argument("--lock_timeout", type=non_negative_float, default=None, metavar="SECONDS",
                   help="when another run is working on the same cache folder, give up after this many seconds "
                        "(default: wait until it finishes; --shard runs of one job array do not wait for each other)")
    p.add_argument("--store_shard_mb", type=positive_float, default=None, metavar="MB",
                   help="--generate_training_inputs also packs the feature store training reads "
                        "(<cache>/store/, float16 shards): largest shard in MB (default 256)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    audio = p.add_argument_group(
        "audio cache settings (stage 1)",
        "applied by --regenerate_full_cache; --update_cache and --generate_training_inputs take the settings the "
        "cache records (a flag that differs from them is refused), so the defaults below are a new cache's. "
        "Recorded in the cache (audio_cache_pkl/settings.json), and from there in the training inputs and the "
        "model's config.json")
    add_config_flags(audio, AUDIO_FLAGS, helps={
        "trim": "silence trim of the audio cache: the seed's 95th-percentile rule, or frame energy like librosa "
                "(default: the rule the cache records, percentile for a new cache); recorded in the cache, and from "
                "there in the training inputs and the model's config.json"})
    inputs = p.add_argument_group(
        "training inputs settings (stage 2)",
        "applied by --generate_training_inputs (the sample rate is the cache's); recorded in inputs/settings.json, "
        "and from there in the model's config.json: training builds its model for them and scoring applies them")
    add_config_flags(inputs, INPUTS_FLAGS, flag_names=FLAG_NAMES,
                     metavars={"speed_perturbations": "F1,F2", "augment_copies": "N"})
    return p


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds, at least 0")
    return value


def main(argv=None) -> int:
    return run(_main, argv)


def _main(argv) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not (args.regenerate_full_cache or args.update_cache or args.generate_training_inputs):
        p.error("choose --regenerate_full_cache, --update_cache and/or --generate_training_inputs")
    ignored = [name for name in INPUTS_FLAGS if getattr(args, name) is not None]
    if ignored and not args.generate_training_inputs:  # a setting that would silently do nothing
        flag = "--" + FLAG_NAMES.get(ignored[0], ignored[0])
        p.error(f"{flag} is a training inputs setting: it goes with --generate_training_inputs")
    setup_logging(args.verbose)

    from deep_speaker.config import Config
    from deep_speaker.corpus import parse_shard
    from deep_speaker.parallel import default_workers
    from deep_speaker.preprocessing import default_audio_dirs, preprocess

    mode = _cache_mode(args)
    config = config_from_args(args, INPUTS_FLAGS, base=Config().override(**_audio_settings_of(args)))
    preprocess(args.cache_output_dir, config, cache_mode=mode,
               audio_dirs=(args.audio_dir or default_audio_dirs(DATA_ROOT)) if mode else None,
               generate_inputs=args.generate_training_inputs, unseen_speakers=args.unseen_speakers,
               workers=args.workers or (default_workers() if args.multi_threading else 1),
               shard=parse_shard(args.shard) if args.shard else None, mic=args.mic, lock_timeout=args.lock_timeout,
               store_shard_mb=args.store_shard_mb)
    return 0


def _cache_mode(args) -> str | None:
    return "regenerate" if args.regenerate_full_cache else "update" if args.update_cache else None


def _audio_settings_of(args) -> dict:
    """The audio settings for the Config: the flags over Config's defaults for a
    new or regenerated cache, else what the cache records, where a flag that
    differs is refused (`audio_settings_of_run`)."""
    from deep_speaker.preprocessing import audio_settings_of_run

    return audio_settings_of_run(args.cache_output_dir, {name: getattr(args, name) for name in AUDIO_FLAGS},
                                 _cache_mode(args))

