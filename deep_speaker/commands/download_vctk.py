"""download_vctk.py: fetch and extract the official VCTK release into the data root."""
from __future__ import annotations

import argparse

from deep_speaker.commands.common import DATA_ROOT, non_negative_int, parser, positive_float, run, setup_logging


def build_parser():
    from deep_speaker.download import DEFAULT_VERSION, RELEASES

    p = parser("Download the official VCTK corpus and extract it into the data root "
               "(resumable; a rerun after completion does nothing).")
    p.add_argument("--version", choices=sorted(RELEASES), default=DEFAULT_VERSION,
                   help="VCTK release: 0.80 (wav48/pNNN/*.wav, as the original project used) "
                        "or 0.92 (wav48_silence_trimmed/pNNN/*_mic1.flac)")
    p.add_argument("--url", default=None,
                   help="download from this mirror instead of the official Edinburgh DataShare URL of --version; "
                        "zip or tar.gz, detected from the content")
    p.add_argument("--sha256", type=_sha256, default=None, metavar="HEX",
                   help="expected sha256 of the archive, checked instead of the one known for --version "
                        "(if any); a mismatch fails and deletes the download")
    p.add_argument("--data_root", default=str(DATA_ROOT),
                   help="folder that receives downloads/ and the corpus folder")
    p.add_argument("--keep_archive", action=argparse.BooleanOptionalAction, default=False,
                   help="keep the archive in <data_root>/downloads/ after a successful extraction")
    p.add_argument("--timeout", type=positive_float, default=60.0, metavar="SECONDS",
                   help="network timeout for connecting and for each read")
    p.add_argument("--retries", type=non_negative_int, default=3,
                   help="times a dropped connection is resumed before giving up")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--replace_existing", action="store_true",
                   help="replace a corpus folder that exists without this downloader's completion marker")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    return run(_main, argv)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    from deep_speaker.download import download_vctk

    result = download_vctk(args.version, args.data_root, url=args.url, sha256=args.sha256,
                           keep_archive=args.keep_archive, timeout=args.timeout, retries=args.retries,
                           progress=not args.no_progress, replace_existing=args.replace_existing)
    if result.already_complete:
        print(f"VCTK {args.version} is already in {result.folder} ({result.file_count} files); nothing to do")
    else:
        kept = f", archive kept in {result.archive}" if result.archive else ""
        print(f"VCTK {args.version} ready in {result.folder} ({result.file_count} files, "
              f"sha256 {result.sha256}{kept})")
    return 0


def _sha256(text: str) -> str:
    from deep_speaker.download import DownloadError, normalize_sha256

    try:
        return normalize_sha256(text)
    except DownloadError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
