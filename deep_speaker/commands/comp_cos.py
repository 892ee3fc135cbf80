"""comp_cos.py: cosine distance between two speakers (SAN/SAP) or two files."""
from __future__ import annotations

import json

from deep_speaker.commands.common import (DEFAULT_CACHE_DIR, add_model_arguments, comma_list, parser, positive_int,
                                          quick_exit_entry_point, run, setup_logging)
from deep_speaker.config import SCORING_SEED


def build_parser():
    p = parser("Cosine distance between two cached speakers (SAN if different, SAP if the same) "
               "or between two recordings (--files).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--unseen_speakers", type=comma_list, metavar="A,B",
                      help="two speaker ids of the audio cache; A,A measures SAP on two disjoint halves")
    what.add_argument("--files", nargs=2, metavar=("FILE1", "FILE2"),
                      help="score two audio files directly (no cache needed)")
    p.add_argument("--extra_speakers", action="store_true",
                   help="the speakers were added with --update_cache (accepted for the seed's command; "
                        "every cached speaker can be scored)")
    p.add_argument("--threshold", type=float, default=None,
                   help="with --files: score at or above which both files are the same speaker (the AS-norm score "
                        "when the model ships a score cohort, else the cosine similarity; default: the model's "
                        "stored EER threshold, if any)")
    p.add_argument("--cache_output_dir", default=str(DEFAULT_CACHE_DIR), help="audio cache folder")
    add_model_arguments(p)
    p.add_argument("--max_utterances", type=positive_int, default=50,
                   help="at most this many utterances per speaker (seeded random choice)")
    p.add_argument("--seed", type=int, default=SCORING_SEED, help="seed of the utterance choice and the SAP split")
    p.add_argument("--no_score_norm", action="store_true",
                   help="with --files: score with raw cosine similarity even when the model ships an AS-norm score cohort "
                        "(score_cohort.npz beside it)")
    p.add_argument("--allow_no_speech", action="store_true",
                   help="with --files: score recordings in which no speech is detected instead of refusing them")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of prose")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    return run(_main, argv)


cli = quick_exit_entry_point(main)  # scripts and console entry points


def _main(argv) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.unseen_speakers is not None and len(args.unseen_speakers) != 2:
        p.error("--unseen_speakers takes exactly two ids, e.g. p363,p364 (or p363,p363 for SAP)")
    if args.threshold is not None and args.files is None:
        p.error("--threshold goes with --files")
    if args.no_score_norm and args.files is None:
        p.error("--no_score_norm goes with --files")
    if args.allow_no_speech and args.files is None:
        p.error("--allow_no_speech goes with --files")
    setup_logging(args.verbose)

    from deep_speaker.checkpoints import resolve_model
    from deep_speaker.encoder import SpeakerEncoder
    from deep_speaker.scoring import compare_files, compare_speakers

    resolved = resolve_model(args.checkpoint, args.checkpoint_dir)
    encoder = SpeakerEncoder(resolved.path, require_speech=not args.allow_no_speech, score_norm=not args.no_score_norm,
                             runtime=args.runtime)
    if not args.json:
        print(resolved.line(encoder.runtime), flush=True)
    if args.files:
        result = compare_files(encoder, *args.files, threshold=args.threshold)
    else:
        first, second = args.unseen_speakers
        result = compare_speakers(encoder, args.cache_output_dir, first, second, args.max_utterances, args.seed)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    names = " vs ".join(result.names)
    print(f"{result.kind} ({names}): distance {result.distance:.4f}, cosine similarity {result.similarity:.4f}, "
          f"utterances {'+'.join(map(str, result.counts))}, {result.seconds:.2f} s")
    if result.same_speaker is not None:
        verdict = "same speaker" if result.same_speaker else "different speakers"
        print(f"decision at {result.score_kind} threshold {result.threshold:.4f} "
              f"({result.score_kind} score {result.score:.4f}): {verdict}")
    return 0

