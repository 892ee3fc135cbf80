"""evaluate.py: speaker-verification evaluation with EER, minDCF and plots."""
from __future__ import annotations

from deep_speaker.commands.common import add_model_arguments, quick_exit_entry_point, parser, run, setup_logging


def build_parser():
    p = parser("Verification evaluation: EER and minDCF (P_target 0.01, 0.05), scores.tsv, metrics.json, "
               "DET curve, score histograms, speaker similarity matrix.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio_dir", help="folder-per-speaker tree: every pair of files is a trial")
    source.add_argument("--trials", help="file of 'label path1 path2' lines (label 1/0 or target/nontarget)")
    source.add_argument("--diarization", metavar="DIR",
                        help="diarization instead: audio files with <name>.rttm references beside them; prints DER "
                             "(missed, false alarm, confusion; with and without overlap), JER and speaker-count "
                             "accuracy, with the count estimated and given; writes diarization.tsv/.json and "
                             "timeline PNGs")
    p.add_argument("--online", action="store_true",
                   help="with --diarization: also score online diarization (diarize.py --stream) and its latency")
    p.add_argument("--audio_root", default=".", help="with --trials: folder the trial paths are relative to")
    p.add_argument("--output_dir", required=True, help="where scores, metrics and plots are written")
    p.add_argument("--plot_embeddings", action="store_true", help="also a 2-D projection of the embeddings")
    p.add_argument("--no_score_norm", action="store_true",
                   help="score with raw cosine similarity even when the model ships an AS-norm score cohort "
                        "(score_cohort.npz beside it)")
    p.add_argument("--allow_no_speech", action="store_true",
                   help="embed files in which no speech is detected instead of skipping them")
    add_model_arguments(p)
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    return run(_main, argv)


cli = quick_exit_entry_point(main)  # scripts and console entry points


def _main(argv) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.online and not args.diarization:
        p.error("--online goes with --diarization")
    setup_logging(args.verbose)
    from deep_speaker.extras import require_extra

    if args.diarization:
        return _diarization(args)
    require_extra("eval", "evaluate.py (its ROC, DET and embedding plots)")  # before any file is embedded
    from deep_speaker.checkpoints import resolve_model
    from deep_speaker.evaluation import evaluate_trials, trials_from_folder, trials_from_list
    from deep_speaker.encoder import SpeakerEncoder

    trials = trials_from_folder(args.audio_dir) if args.audio_dir else trials_from_list(args.trials, args.audio_root)
    resolved = resolve_model(args.checkpoint, args.checkpoint_dir)
    encoder = SpeakerEncoder(resolved.path, require_speech=not args.allow_no_speech, score_norm=not args.no_score_norm,
                             runtime=args.runtime)
    print(resolved.line(encoder.runtime), flush=True)
    report = evaluate_trials(encoder, trials, args.output_dir, args.plot_embeddings)
    interval = (f", 95 % interval {100 * report['eer_ci95'][0]:.1f}-{100 * report['eer_ci95'][1]:.1f} % over speakers"
                if "eer_ci95" in report else "")
    raw = report.get("raw_cosine")
    kind = (f" with AS-norm scores (raw cosine: EER {100 * raw['eer']:.2f} %, minDCF(0.01) {raw['min_dcf_0.01']:.4f})"
            if raw else "")
    print(f"EER {100 * report['eer']:.2f} %{interval}{kind} (threshold {report['eer_threshold']:.4f}), "
          f"minDCF(0.01) {report['min_dcf_0.01']:.4f}, minDCF(0.05) {report['min_dcf_0.05']:.4f}, "
          f"{report['num_target']} target / {report['num_nontarget']} non-target trials, "
          f"{report['num_files']} files ({report['skipped_files']} skipped); written to {args.output_dir}")
    if report.get("top1_accuracy") is not None:
        print(f"identification: top-1 {100 * report['top1_accuracy']:.1f} %, top-5 {100 * report['top5_accuracy']:.1f} % "
              f"({report['identification_queries']} queries against {report['identification_speakers']} speakers "
              f"enrolled with one utterance each)")
    elif report.get("identification_not_available"):
        rest = ("; the EER's speaker interval and the speaker plots are left out too"
                if report.get("identification_speakers") is None else "")
        print(f"identification not available: {report['identification_not_available']}{rest}")
    return 0


def _diarization(args) -> int:
    from deep_speaker.extras import require_extra

    require_extra("eval", "evaluate.py --diarization (pyannote.metrics, its timeline plots)",
                  ["pyannote.metrics", "matplotlib"])
    from deep_speaker.checkpoints import resolve_model
    from deep_speaker.diarization_metrics import evaluate_folder, summary_line
    from deep_speaker.encoder import SpeakerEncoder

    resolved = resolve_model(args.checkpoint, args.checkpoint_dir)
    encoder = SpeakerEncoder(resolved.path, runtime=args.runtime)
    print(resolved.line(encoder.runtime), flush=True)
    report = evaluate_folder(encoder, args.diarization, args.output_dir, given_count=True, online=args.online)
    for item in report["skipped"]:
        print(f"skipped {item['file']}: {item['reason']}")
    for kind in ("estimated", "given") + (("online",) if args.online else ()):
        print(summary_line(kind, report[kind]))
    print(f"per-file table in {args.output_dir}/diarization.tsv, timelines in {args.output_dir}/<name>.png")
    return 0
