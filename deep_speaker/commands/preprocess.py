"""preprocess.py: stage 1 (audio cache) and stage 2 (training inputs)."""
from __future__ import annotations

import argparse
import contextlib
import math

from deep_speaker.commands.common import (DATA_ROOT, DEFAULT_CACHE_DIR, CommandError, comma_list, parser,
                                          positive_float, positive_int, run, setup_logging)
from deep_speaker.commands.config_flags import add_config_flags, config_from_args

# The Config fields preprocess.py takes from flags (default, help and bounds from Config).
CONFIG_FLAGS = ("trim", "speed_perturbations", "augment_copies")


def build_parser():
    p = parser("Deep Speaker preprocessing: cache 8 kHz trimmed audio, then build training inputs.")
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
    add_config_flags(p, ("trim",), helps={
        "trim": "silence trim of the audio cache: the seed's 95th-percentile rule, or frame energy like librosa "
                "(default: the rule the cache records, percentile for a new cache); recorded in the cache, and from "
                "there in the training inputs and the model's config.json"})
    p.add_argument("--unseen_speakers", type=comma_list, default=None, metavar="A,B,...",
                   help="speakers left out of the training inputs (default: p363,p364,p374,p376 for VCTK, "
                        "none for other corpora)")
    add_config_flags(p, ("speed_perturbations", "augment_copies"), flag_names={"speed_perturbations": "speed_perturb"},
                     metavars={"speed_perturbations": "F1,F2", "augment_copies": "N"})
    p.add_argument("--lock_timeout", type=non_negative_float, default=None, metavar="SECONDS",
                   help="when another run is working on the same cache folder, give up after this many seconds "
                        "(default: wait until it finishes; --shard runs of one job array do not wait for each other)")
    p.add_argument("--store_shard_mb", type=positive_float, default=None, metavar="MB",
                   help="--generate_training_inputs also packs the feature store training reads "
                        "(<cache>/store/, float16 shards): largest shard in MB (default 256)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
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
    setup_logging(args.verbose)

    from deep_speaker.config import Config
    from deep_speaker.corpus import parse_shard
    from deep_speaker.parallel import default_workers

    config = config_from_args(args, CONFIG_FLAGS, base=Config().override(**_trim_of(args)))
    workers = args.workers or (default_workers() if args.multi_threading else 1)
    shard = parse_shard(args.shard) if args.shard else None
    if shard and args.generate_training_inputs:
        raise CommandError("--shard splits the audio cache only; run --generate_training_inputs once, unsharded")
    both = (args.regenerate_full_cache or args.update_cache) and args.generate_training_inputs
    with contextlib.ExitStack() as stack:
        if both:  # hold the cache for both stages: no other run may slip in between them
            from deep_speaker.locking import cache_lock

            if not args.audio_dir:
                _default_audio_dirs()  # "corpus not found" before the cache folder is made
            stack.enter_context(cache_lock(args.cache_output_dir, timeout=args.lock_timeout, purpose="preprocess"))
        _stages(args, config, workers, shard)
    return 0


def _stages(args, config, workers, shard) -> None:
    from deep_speaker.audio_cache import build_audio_cache, failures_path
    from deep_speaker.training_inputs import generate_training_inputs

    if args.regenerate_full_cache or args.update_cache:
        audio_dirs = args.audio_dir or _default_audio_dirs()
        summary = build_audio_cache(audio_dirs, args.cache_output_dir, config, regenerate=args.regenerate_full_cache,
                                    workers=workers, shard=shard, mic=args.mic, lock_timeout=args.lock_timeout)
        print(summary.line())
        if summary.failed:
            print(f"failures listed in {failures_path(args.cache_output_dir, shard)}")
        if summary.cached == 0 and summary.skipped == 0:
            raise CommandError(f"nothing could be cached: every file failed "
                               f"(see {failures_path(args.cache_output_dir, shard)})")
    if args.generate_training_inputs:
        summary = generate_training_inputs(args.cache_output_dir, config, unseen_speakers=args.unseen_speakers,
                                           workers=workers, lock_timeout=args.lock_timeout)
        print(summary.line())
        if summary.written == 0 and summary.skipped == 0:
            raise CommandError("no speaker's training inputs could be written (see inputs_failures.tsv)")
        from deep_speaker.feature_store import DEFAULT_SHARD_MB, pack_store

        print(pack_store(args.cache_output_dir, config, max_shard_mb=args.store_shard_mb or DEFAULT_SHARD_MB,
                         lock_timeout=args.lock_timeout).line())


def _trim_of(args) -> dict:
    """{'trim': ...}: the flag, else the rule a cache being updated records (so
    --update_cache without --trim keeps an energy-trimmed cache energy-trimmed),
    else nothing (the default). With --generate_training_inputs alone the inputs
    always take the cache's settings, so a --trim that differs from them is refused."""
    from deep_speaker.audio_cache import audio_cache_dir, read_audio_settings

    cache_exists = audio_cache_dir(args.cache_output_dir).is_dir()
    if args.trim is not None:
        if cache_exists and not (args.regenerate_full_cache or args.update_cache):
            recorded, known = read_audio_settings(args.cache_output_dir)
            if known and recorded["trim"] != args.trim:
                raise CommandError(f"--trim {args.trim}: the cache in {args.cache_output_dir} was trimmed with "
                                   f"--trim {recorded['trim']}, and the training inputs take the cache's settings; "
                                   f"rebuild the cache with --regenerate_full_cache --trim {args.trim}")
        return {"trim": args.trim}
    if cache_exists and not args.regenerate_full_cache:
        return {"trim": read_audio_settings(args.cache_output_dir)[0]["trim"]}
    return {}


def _default_audio_dirs() -> list[str]:
    dirs = [DATA_ROOT / "VCTK-Corpus"]
    if (DATA_ROOT / "samples").is_dir():
        dirs.append(DATA_ROOT / "samples")
    if not dirs[0].is_dir():
        raise CommandError(f"{dirs[0]}: corpus not found; pass --audio_dir DIR or download VCTK "
                           f"(python scripts/download_vctk.py)")
    return [str(d) for d in dirs]
