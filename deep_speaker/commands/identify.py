"""identify.py: enrol speakers, then name the speaker of recordings.

    identify.py --enroll SPEAKERS_DIR --output enrolment.npz
    identify.py --enrolment enrolment.npz --files x.wav y.flac [--top_k 3] [--threshold T] [--json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from deep_speaker.commands.common import (CommandError, add_model_arguments, parser, positive_int,
                                          quick_exit_entry_point, run, setup_logging)


def build_parser():
    p = parser("Speaker identification: --enroll a folder-per-speaker tree into an enrolment file, then name the "
               "best-matching enrolled speakers of --files (\"unknown\" below --threshold).")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--enroll", metavar="SPEAKERS_DIR",
                      help="one folder per speaker (any layout deep-speaker reads); writes --output")
    mode.add_argument("--enrolment", metavar="ENROLMENT.npz", help="an enrolment written by --enroll; needs --files")
    p.add_argument("--output", metavar="ENROLMENT.npz", help="with --enroll: where the enrolment is written")
    p.add_argument("--files", nargs="+", metavar="FILE|GLOB", help="with --enrolment: recordings to identify")
    p.add_argument("--top_k", type=positive_int, default=3, help="how many best-matching speakers to print")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity below which the best match is reported as unknown (default: the model's "
                        "EER threshold from threshold.json beside it, if any; else always the best match)")
    p.add_argument("--max_utterances", type=positive_int, default=None,
                   help="with --enroll: at most this many files per speaker (seeded random choice; default all)")
    p.add_argument("--allow_no_speech", action="store_true",
                   help="embed files in which no speech is detected instead of skipping them")
    p.add_argument("--json", action="store_true", help="with --files: print one JSON object instead of prose")
    add_model_arguments(p)
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    return run(_main, argv)


cli = quick_exit_entry_point(main)  # scripts and console entry points


def _main(argv) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.enroll and not args.output:
        p.error("--enroll needs --output ENROLMENT.npz")
    if args.enroll and args.files:
        p.error("--files goes with --enrolment, not --enroll")
    if args.enrolment and not args.files:
        p.error("--enrolment needs --files to identify")
    if args.output and Path(args.output).suffix.lower() != ".npz":
        p.error("--output must end in .npz")
    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        p.error("--threshold is a cosine similarity between -1 and 1")
    setup_logging(args.verbose)

    from deep_speaker.checkpoints import resolve_model
    from deep_speaker.commands.get_emb import expand_files
    from deep_speaker.encoder import SpeakerEncoder
    from deep_speaker.identification import Enrolment

    resolved = resolve_model(args.checkpoint, args.checkpoint_dir)
    if args.enroll:
        if not Path(args.enroll).is_dir():
            raise CommandError(f"{args.enroll}: not a folder (one folder per speaker expected)")
        encoder = SpeakerEncoder(resolved.path, require_speech=not args.allow_no_speech, runtime=args.runtime)
        print(resolved.line(encoder.runtime), flush=True)
        enrolment = encoder.enroll(args.enroll, max_utterances=args.max_utterances)
        for path, reason in enrolment.skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        enrolment.save(args.output)
        print(f"{len(enrolment.speakers)} speakers enrolled from {sum(enrolment.utterances)} files"
              + (f" ({len(enrolment.skipped)} skipped)" if enrolment.skipped else "") + f"; written to {args.output}")
        return 0

    enrolment = Enrolment.load(args.enrolment)  # a bad file fails before the model loads
    paths = expand_files(args.files)
    encoder = SpeakerEncoder(resolved.path, require_speech=not args.allow_no_speech, runtime=args.runtime)
    if not args.json:
        print(resolved.line(encoder.runtime), flush=True)
    enrolment.check_compatible(encoder.model_identity, _settings(encoder), args.enrolment)
    embeddings, ok, failed = encoder.embed_files(paths, skip=True, progress=len(paths) >= 20)
    for path, reason in failed:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not ok:
        raise CommandError(f"none of the {len(paths)} file(s) could be embedded")
    found = encoder.identify(embeddings, enrolment, top_k=args.top_k, threshold=args.threshold, names=ok)
    threshold = found[0].threshold
    if args.json:
        print(json.dumps({"model": str(resolved.path), "enrolment": args.enrolment, "threshold": threshold,
                          "results": [f.to_dict() for f in found],
                          "skipped": [{"file": path, "reason": reason} for path, reason in failed]}))
        return 0
    if threshold is not None:
        print(f"threshold: cosine similarity {threshold:.4f}")
    for result in found:
        ranked = ", ".join(f"{m.speaker} {m.similarity:.4f}" for m in result.matches)
        print(f"{result.query}\t{result.speaker}\t({ranked})")
    return 0


def _settings(encoder):
    from deep_speaker.identification import enrolment_settings

    return enrolment_settings(encoder.config)
