"""export_model.py: write the embedding model as .keras + SavedModel."""
from __future__ import annotations

from deep_speaker.commands.common import add_model_arguments, parser, run, setup_logging


def build_parser():
    p = parser("Export the embedding model: embedding.keras, config.json and a TensorFlow SavedModel.")
    p.add_argument("--output_dir", required=True, help="folder to write")
    add_model_arguments(p)
    p.add_argument("--no_saved_model", action="store_true", help="write only the .keras file and its config")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    return run(_main, argv)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    from deep_speaker.export import export_model
    from deep_speaker.scoring import resolve_model

    resolved = resolve_model(args.checkpoint, args.checkpoint_dir)
    print(resolved.line(), flush=True)
    written = export_model(resolved, args.output_dir, saved_model=not args.no_saved_model)
    print("exported: " + ", ".join(map(str, written)))
    return 0
