"""download_corpus.py: fetch and extract corpus archives (LibriSpeech parts, or
any archive given by URL and sha256) into the data root, with the VCTK
downloader's guarantees: resumed transfers, checksums, safe extraction,
a completion marker, nothing to do on a rerun."""
from __future__ import annotations

import argparse
import re

from deep_speaker.commands.common import DATA_ROOT, CommandError, parser, positive_float, run, setup_logging


def build_parser():
    from deep_speaker.download import LIBRISPEECH

    p = parser("Download corpus archives and extract them into the data root (resumable; a rerun after "
               "completion does nothing).")
    p.add_argument("--librispeech", default=None, metavar="PART[,PART...]",
                   help=f"LibriSpeech parts from OpenSLR, checksums pinned ({', '.join(LIBRISPEECH)}; '960h' = the "
                        f"three training parts); each goes to <data_root>/LibriSpeech/<part>")
    p.add_argument("--url", default=None, help="any zip or tar(.gz) archive instead (needs --sha256 and --folder)")
    p.add_argument("--sha256", default=None, metavar="HEX",
                   help="with --url: the archive's sha256 (required); with --librispeech: a mirror's, for one part")
    p.add_argument("--mirror", default=None, metavar="BASE_URL",
                   help="with --librispeech: fetch <BASE_URL>/<part>.tar.gz instead of OpenSLR (same checksums)")
    p.add_argument("--folder", default=None, help="with --url: folder under --data_root that receives the corpus")
    p.add_argument("--layout", default="**/*.*",
                   help="with --url: a glob that must match inside the extracted corpus (proves the layout)")
    p.add_argument("--data_root", default=str(DATA_ROOT), help="folder that receives downloads/ and the corpora")
    p.add_argument("--keep_archive", action=argparse.BooleanOptionalAction, default=False,
                   help="keep each archive in <data_root>/downloads/ after a successful extraction")
    p.add_argument("--timeout", type=positive_float, default=60.0, metavar="SECONDS",
                   help="network timeout for connecting and for each read")
    p.add_argument("--retries", type=int, default=3, help="times a dropped connection is resumed before giving up")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    return run(_main, argv)


def _main(argv) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    from deep_speaker.download import LIBRISPEECH, LIBRISPEECH_960H, CorpusArchive, download_archive, normalize_sha256

    if (args.librispeech is None) == (args.url is None):
        p.error("choose --librispeech PARTS or --url URL")
    if args.url is not None:
        if not args.sha256 or not args.folder:
            p.error("--url needs --sha256 and --folder")
        name = re.sub(r"[^A-Za-z0-9._-]", "_", args.folder.strip("/")) + ".archive"  # unless the URL names one
        archives = [CorpusArchive(version=args.folder, url=args.url, archive_name=name, folder=args.folder,
                                  layout_glob=args.layout, sha256=normalize_sha256(args.sha256), size_bytes=None,
                                  note="")]
    else:
        parts = [part for item in args.librispeech.split(",") if item.strip()
                 for part in (LIBRISPEECH_960H if item.strip() == "960h" else (item.strip(),))]
        unknown = [part for part in parts if part not in LIBRISPEECH]
        if unknown or not parts:
            raise CommandError(f"unknown LibriSpeech part {','.join(unknown) or '-'}; known: {', '.join(LIBRISPEECH)}, "
                               f"960h")
        if args.sha256 and len(parts) > 1:
            p.error("--sha256 checks one archive; give one --librispeech part with it")
        archives = [LIBRISPEECH[part] for part in parts]
    for archive in archives:
        url = f"{args.mirror.rstrip('/')}/{archive.archive_name}" if args.mirror else None
        result = download_archive(archive, args.data_root, url=url, sha256=args.sha256 if args.librispeech else None,
                                  keep_archive=args.keep_archive, timeout=args.timeout, retries=args.retries,
                                  progress=not args.no_progress)
        state = "already complete" if result.already_complete else f"ready (sha256 {result.sha256})"
        print(f"{archive.version}: {state} in {result.folder} ({result.file_count} files)")
    return 0
