"""run_pipeline: the whole seed workflow in one command."""
from __future__ import annotations

from pathlib import Path

from deep_speaker.commands.common import DATA_ROOT, parser, run, setup_logging


def build_parser():
    p = parser("Run the Deep Speaker workflow end to end: cache, inputs, softmax and triplet training, "
               "SAN/SAP, an embedding and an evaluation with plots. Uses DATA_ROOT/VCTK-Corpus if present, "
               "else downloads it with --download, else the vendored demo corpus.")
    p.add_argument("--data_root", default=str(DATA_ROOT), help="data root holding VCTK-Corpus/ or demo/")
    p.add_argument("--output_dir", default=None, help="where the run writes (default: DATA_ROOT/pipeline)")
    p.add_argument("--download", action="store_true", help="download VCTK 0.80 first if it is not there")
    p.add_argument("--quick", action="store_true", help="tiny training (a smoke test: seconds, not minutes)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    return run(_main, argv)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from deep_speaker.pipeline import run_pipeline

    output_dir = Path(args.output_dir) if args.output_dir else Path(args.data_root) / "pipeline"
    run_pipeline(Path(args.data_root), output_dir, quick=args.quick, download=args.download)
    return 0
