"""export_model.py: write the embedding model as .keras, ONNX and SavedModel."""
from __future__ import annotations

from deep_speaker.commands.common import (add_model_arguments, comma_list, parser, positive_int, run,
                                          setup_logging)

FORMATS = ("onnx", "saved_model")  # deep_speaker.export.FORMATS, named here so --help loads no TensorFlow


def build_parser():
    p = parser("Export the embedding model: embedding.keras and config.json, with embedding.onnx (ONNX Runtime, "
               "what a plain install scores with) and a TensorFlow SavedModel. Needs deep-speaker[train].")
    p.add_argument("--output_dir", required=True,
                   help="folder to write (the model's own folder: its embedding.keras and config.json stay as they are)")
    add_model_arguments(p, runtime=False)
    p.add_argument("--format", action="append", choices=FORMATS, default=None, dest="formats",
                   help="what to write besides embedding.keras and config.json, repeatable (default: onnx and "
                        "saved_model)")
    p.add_argument("--no_saved_model", action="store_true", help="leave out the SavedModel of the default formats")
    p.add_argument("--cohort_audio_dir", action="append", default=None, metavar="DIR",
                   help="also write score_cohort.npz (AS-norm cohort: the mean embedding of each speaker of these "
                        "folder-per-speaker trees, normally the training speakers), repeatable")
    p.add_argument("--cohort_exclude", type=comma_list, default=[], metavar="A,B,...",
                   help="speakers left out of the cohort (held-out evaluation speakers)")
    p.add_argument("--cohort_per_speaker", type=positive_int, default=3, help="files embedded per cohort speaker")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    return run(_main, argv)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    formats = args.formats or [f for f in FORMATS if not (f == "saved_model" and args.no_saved_model)]
    from deep_speaker.checkpoints import resolve_model
    from deep_speaker.export import export_model
    from deep_speaker.extras import require_extra

    require_extra("train", "export_model.py", ("tensorflow", "keras") + (("onnx", "tf2onnx") if "onnx" in formats else ()))
    resolved = resolve_model(args.checkpoint, args.checkpoint_dir)
    print(resolved.line(), flush=True)
    written = export_model(resolved, args.output_dir, formats)
    if args.cohort_audio_dir:
        written.append(_write_cohort(args, resolved))
    print("exported: " + ", ".join(map(str, written)))
    return 0


def _write_cohort(args, resolved):
    from pathlib import Path

    from deep_speaker.encoder import SpeakerEncoder
    from deep_speaker.score_norm import COHORT_FILE, build_cohort, cohort_files

    files = cohort_files(args.cohort_audio_dir, args.cohort_exclude, args.cohort_per_speaker)
    normalizer = build_cohort(SpeakerEncoder(Path(args.output_dir) / "embedding.keras"), files)
    target = Path(args.output_dir) / COHORT_FILE
    normalizer.save(target, Path(args.output_dir) / "embedding.keras")
    print(f"score cohort: {len(normalizer.cohort)} speakers from {len(files)} files")
    return target
