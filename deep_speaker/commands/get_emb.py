"""get_emb.py: the embedding of a cached speaker, or of audio files."""
from __future__ import annotations

import glob
import sys
from pathlib import Path

import numpy as np

from deep_speaker.commands.common import (add_model_arguments, DEFAULT_CACHE_DIR, CommandError, parser,
                                          quick_exit_entry_point, positive_int, run, setup_logging)
from deep_speaker.corpus import AUDIO_EXTENSIONS


def build_parser():
    p = parser("Speaker embeddings: of a cached speaker (NAME) or of audio files (paths or globs).")
    p.add_argument("--get_embeddings", nargs="+", required=True, metavar="NAME|FILE|GLOB",
                   help="one cached speaker id, or audio files / quoted globs")
    p.add_argument("--output", default=None, metavar="OUT.npy|OUT.csv|OUT.json",
                   help="write one unit-length row per file (the file list is stored alongside)")
    p.add_argument("--cache_output_dir", default=str(DEFAULT_CACHE_DIR), help="audio cache folder")
    add_model_arguments(p)
    p.add_argument("--max_utterances", type=positive_int, default=50,
                   help="for a speaker: at most this many cached utterances (seeded random choice)")
    p.add_argument("--allow_no_speech", action="store_true",
                   help="embed files in which no speech is detected instead of skipping them (see deep_speaker/speech.py)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    return run(_main, argv)


cli = quick_exit_entry_point(main)  # scripts and console entry points


def _looks_like_files(items: list[str]) -> bool:
    return any(Path(i).suffix.lower() in AUDIO_EXTENSIONS or Path(i).exists() or glob.has_magic(i) for i in items)


def expand_files(items: list[str]) -> list[str]:
    """Paths in the order given, globs expanded (sorted); a glob matching
    nothing is an error."""
    paths = []
    for item in items:
        if glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise CommandError(f"{item}: no file matches this pattern")
            paths.extend(matches)
        else:
            paths.append(item)
    return paths


def _main(argv) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.output and Path(args.output).suffix.lower() not in (".npy", ".csv", ".json"):
        p.error("--output must end in .npy, .csv or .json")
    setup_logging(args.verbose)

    from deep_speaker.embeddings_io import write_embeddings
    from deep_speaker.encoder import SpeakerEncoder
    from deep_speaker.scoring import embed_cached_speaker

    encoder = SpeakerEncoder(args.checkpoint, checkpoint_dir=args.checkpoint_dir,
                             require_speech=not args.allow_no_speech, runtime=args.runtime)
    print(encoder.resolved.line(encoder.runtime), flush=True)
    if not _looks_like_files(args.get_embeddings):
        if len(args.get_embeddings) != 1:
            raise CommandError("give one speaker name, or audio files")
        name = args.get_embeddings[0]
        vector = embed_cached_speaker(encoder, args.cache_output_dir, name, args.max_utterances)
        if args.output:
            write_embeddings(args.output, vector[None, :], [name])
            print(f"embedding of {name} ({vector.shape[0]}-d) written to {args.output}")
        else:
            with np.printoptions(threshold=np.inf, precision=6, suppress=True):
                print(vector)
        return 0
    paths = expand_files(args.get_embeddings)
    embeddings, ok, failed = encoder.embed_files(paths, skip=True, progress=len(paths) >= 20)
    for path, reason in failed:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not ok:
        raise CommandError(f"none of the {len(paths)} file(s) could be embedded; nothing written")
    if args.output:
        written = write_embeddings(args.output, embeddings, ok, failed)
        print(f"{len(ok)} embeddings ({embeddings.shape[1]}-d) written to {', '.join(map(str, written))}"
              + (f"; {len(failed)} file(s) skipped" if failed else ""))
    else:
        with np.printoptions(threshold=np.inf, precision=6, suppress=True, linewidth=np.inf):
            for path, row in zip(ok, embeddings):
                print(f"{path}\t{row}")
    return 0
