"""Download and extract the official VCTK release into the data root.

The steps, each safe to interrupt and rerun:

1. download the archive to ``<root>/downloads/<name>.part`` (resumed with an
   HTTP Range request), check its size and sha256, then rename it to
   ``<root>/downloads/<name>``;
2. extract it into a temporary folder ``<root>/.<folder>.extracting-XXXX``,
   refusing members that would land outside it, check the corpus layout, then
   rename the corpus into ``<root>/<folder>``;
3. write ``<root>/<folder>/.complete`` (JSON). Only a folder with that marker
   counts as done; a folder without it is removed and extracted again.

Standard library only (urllib, tarfile, zipfile) plus tqdm for the progress bar.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import re
import secrets
import shutil
import tarfile
import time
import urllib.parse
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from deep_speaker.errors import InputError
from deep_speaker.io_utils import atomic_write_text
from deep_speaker.paths import DATA_ROOT
from deep_speaker.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = DATA_ROOT  # deep_speaker.paths: one definition for every command
DOWNLOADS_FOLDER = "downloads"
MARKER_NAME = ".complete"
CHUNK_BYTES = 1 << 20
SUPPORTED_SCHEMES = ("https", "http", "ftp", "file")  # what urllib's default opener fetches
USER_AGENT = "deep-speaker-vctk-downloader/1.0 (python urllib)"


class DownloadError(InputError):
    """A download or extraction that failed for an expected reason; the
    message is one line naming the URL or file and the reason."""


class UnsafeArchiveError(DownloadError):
    """An archive member that would be written outside the extraction folder."""


class _TransferInterrupted(Exception):
    """The connection ended before the whole file arrived: worth resuming."""


@dataclass(frozen=True)
class VctkRelease:
    """One official VCTK release: where it lives and what a good copy looks like."""

    version: str
    url: str
    archive_name: str  # file name under <root>/downloads/
    folder: str  # corpus folder under <root>
    layout_glob: str  # at least one match inside the folder proves the layout
    sha256: str | None  # None: not known for sure; pass --sha256 to enforce one
    size_bytes: int | None  # None: not known for sure; the server's Content-Length is checked instead
    note: str


RELEASES: dict[str, VctkRelease] = {
    # The release the original Deep Speaker project used (wav48/pNNN/pNNN_MMM.wav).
    # Historically at http://homepages.inf.ed.ac.uk/jyamagis/release/VCTK-Corpus.tar.gz
    # (a tar.gz; pass it with --url if you have a mirror of it). No checksum is
    # published for the zip on DataShare, so none is pinned here.
    "0.80": VctkRelease(
        version="0.80",
        url="https://datashare.ed.ac.uk/bitstream/handle/10283/2651/VCTK-Corpus.zip",
        archive_name="VCTK-Corpus.zip",
        folder="VCTK-Corpus",
        layout_glob="wav48/p*/p*_*.wav",
        sha256=None,
        size_bytes=None,
        note="about 10 GB, 48 kHz wav, 109 speakers",
    ),
    # wav48_silence_trimmed/pNNN/pNNN_MMM_mic{1,2}.flac, txt/, speaker-info.txt at
    # the top of the zip (no wrapper folder). torchaudio's VCTK_092 pins the sha256
    # f96258be9fdc2cbff6559541aae7ea4f59df3fcaf5cf963aae5ca647357e359c for the same
    # file on the older datashare.is.ed.ac.uk host; it is not verified here, so
    # pass it with --sha256 to enforce it.
    "0.92": VctkRelease(
        version="0.92",
        url="https://datashare.ed.ac.uk/bitstream/handle/10283/3443/VCTK-Corpus-0.92.zip",
        archive_name="VCTK-Corpus-0.92.zip",
        folder="VCTK-Corpus-0.92",
        layout_glob="wav48_silence_trimmed/p*/p*_mic1.flac",
        sha256=None,
        size_bytes=None,
        note="about 11 GB, 48 kHz flac, two microphones, 110 speakers",
    ),
}
DEFAULT_VERSION = "0.80"

# Any corpus shipped as archives is a set of these: a URL, a checksum, the folder
# it goes to and a glob that proves the layout (`download_archive`).
CorpusArchive = VctkRelease

# LibriSpeech (OpenSLR 12). Each archive holds LibriSpeech/<part>/<speaker>/<chapter>/*.flac
# and goes to <root>/LibriSpeech/<part>, a layout preprocess.py discovers (--audio_dir
# <root>/LibriSpeech takes every part there). The sha256 values are those torchaudio pins
# for the same files.
_OPENSLR = "https://www.openslr.org/resources/12"
LIBRISPEECH: dict[str, CorpusArchive] = {
    part: CorpusArchive(version=part, url=f"{_OPENSLR}/{part}.tar.gz", archive_name=f"{part}.tar.gz",
                        folder=f"LibriSpeech/{part}", layout_glob="*/*/*-*-*.flac", sha256=sha256, size_bytes=None,
                        note=note)
    for part, sha256, note in (
        ("train-clean-100", "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
         "6.3 GB, 100 h, 251 speakers"),
        ("train-clean-360", "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf",
         "23 GB, 364 h, 921 speakers"),
        ("train-other-500", "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2",
         "30 GB, 497 h, 1166 speakers"),
        ("dev-clean", "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3", "337 MB, 40 speakers"),
        ("dev-other", "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365", "314 MB, 33 speakers"),
        ("test-clean", "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23", "346 MB, 40 speakers"),
        ("test-other", "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29", "328 MB, 33 speakers"),
    )
}
LIBRISPEECH_960H = ("train-clean-100", "train-clean-360", "train-other-500")


@dataclass(frozen=True)
class DownloadResult:
    """What download_vctk did: the corpus folder, its file count, and whether
    it was already complete (nothing downloaded or extracted)."""

    folder: Path
    file_count: int
    already_complete: bool
    archive: Path | None  # the kept archive, None when deleted or never needed
    sha256: str | None


# --------------------------------------------------------------------------- the whole job


def download_vctk(version: str = DEFAULT_VERSION, data_root: str | Path = DEFAULT_DATA_ROOT, *,
                  url: str | None = None, sha256: str | None = None, keep_archive: bool = False,
                  timeout: float = 60.0, retries: int = 3, retry_wait_s: float = 2.0,
                  progress: bool = True, replace_existing: bool = False) -> DownloadResult:
    """Make sure ``<data_root>/<release folder>`` holds a complete, verified VCTK.

    Does nothing when the completion marker is there. Otherwise downloads (or
    resumes) the archive, verifies it, extracts it safely and writes the marker.
    Extraction renames a finished folder into place, so a folder without the
    marker was put there by hand: it is left alone (DownloadError) unless
    replace_existing=True.
    `url` replaces the official location (a mirror); `sha256` is checked
    instead of the table's checksum. Raises DownloadError with one clear line.
    """
    return download_archive(get_release(version), data_root, url=url, sha256=sha256, keep_archive=keep_archive,
                            timeout=timeout, retries=retries, retry_wait_s=retry_wait_s, progress=progress,
                            replace_existing=replace_existing)


def download_archive(release: CorpusArchive, data_root: str | Path = DEFAULT_DATA_ROOT, *,
                     url: str | None = None, sha256: str | None = None, keep_archive: bool = False,
                     timeout: float = 60.0, retries: int = 3, retry_wait_s: float = 2.0,
                     progress: bool = True, replace_existing: bool = False) -> DownloadResult:
    """Make sure ``<data_root>/<release.folder>`` holds the verified contents of
    one corpus archive (a VCTK release, a LibriSpeech part, or any
    `CorpusArchive(url=..., sha256=..., folder=..., layout_glob=...)`): the
    steps and guarantees of `download_vctk`, which calls this."""
    root = Path(data_root)
    target = root / release.folder
    if is_complete(target):
        return DownloadResult(target, read_marker(target).get("file_count", 0), True, None, None)

    if target.exists() and not replace_existing:
        raise DownloadError(f"{target} already exists but was not made by this downloader (no {MARKER_NAME} "
                            f"marker); the pipeline uses it as it is. Pass --replace_existing to download "
                            f"and extract VCTK over it")
    source = url or release.url
    expected_sha256 = normalize_sha256(sha256) if sha256 else release.sha256
    archive = root / DOWNLOADS_FOLDER / archive_name_for(source, release.archive_name)
    _mkdir(root / DOWNLOADS_FOLDER)
    _mkdir(target.parent)
    remove_stale_extractions(target.parent, target.name)

    digest = _verified_archive(archive, source, expected_sha256, release.size_bytes, timeout=timeout,
                               retries=retries, retry_wait_s=retry_wait_s, progress=progress)
    if target.exists():
        log.warning("%s has no %s marker: replacing it (--replace_existing)", target, MARKER_NAME)
        shutil.rmtree(target)
    file_count = extract_corpus(archive, target, release.layout_glob)
    write_marker(target, version=release.version, url=source, sha256=digest, file_count=file_count,
                 archive=archive.name)
    if not keep_archive:
        archive.unlink()
    return DownloadResult(target, file_count, False, archive if keep_archive else None, digest)


def get_release(version: str) -> VctkRelease:
    """The RELEASES entry for `version`; ValueError listing the known ones otherwise."""
    try:
        return RELEASES[version]
    except KeyError:
        raise DownloadError(f"unknown VCTK version {version!r}; known: {', '.join(RELEASES)}") from None


def normalize_sha256(text: str) -> str:
    """Lower-case 64-hex-digit sha256, or DownloadError."""
    value = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise DownloadError(f"{text!r} is not a sha256 checksum (64 hex digits)")
    return value


def archive_name_for(url: str, default: str) -> str:
    """The file name to save `url` under: its own name when it looks like an
    archive (a mirror's .tar.gz stays a .tar.gz), else the release's name."""
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    looks_like_archive = name.lower().endswith((".zip", ".tar.gz", ".tgz", ".tar"))
    if looks_like_archive and re.fullmatch(r"[A-Za-z0-9._-]+", name) and not name.startswith("."):
        return name
    return default


def _verified_archive(archive: Path, url: str, expected_sha256: str | None, expected_size: int | None,
                      **download_options) -> str:
    """Reuse a kept archive (rechecking a given checksum) or download it; returns its sha256."""
    if archive.is_file():
        # Only ever renamed into place after verification, so it is whole.
        log.info("using the downloaded archive %s", archive)
        digest = sha256_file(archive)
        if expected_sha256 and digest != expected_sha256:
            archive.unlink()
            raise DownloadError(f"{archive}: checksum mismatch (expected sha256 {expected_sha256}, "
                                f"got {digest}); deleted it, rerun to download it again")
        return digest
    return download_file(url, archive, expected_sha256=expected_sha256, expected_size=expected_size,
                         **download_options)


# --------------------------------------------------------------------------- download


def download_file(url: str, destination: str | Path, *, expected_sha256: str | None = None,
                  expected_size: int | None = None, timeout: float = 60.0, retries: int = 3,
                  retry_wait_s: float = 2.0, progress: bool = True) -> str:
    """Download `url` to `destination` through ``<destination>.part``; returns the sha256.

    An existing .part is resumed with a Range request, and a connection that
    drops mid-transfer is resumed up to `retries` times. The .part is renamed
    to `destination` only after its size (the server's, and `expected_size`)
    and `expected_sha256` check out; a file that fails a check is deleted.
    """
    _check_url(url)
    destination = Path(destination)
    part = destination.with_name(destination.name + ".part")
    _mkdir(destination.parent)
    attempt = 0
    while True:
        try:
            _fetch_into(url, part, timeout=timeout, progress=progress)
            break
        except _TransferInterrupted as cut:
            attempt += 1
            if attempt > retries:
                gave_up = f" (after {retries} retries)" if retries else ""
                raise DownloadError(f"{url}: {cut}{gave_up}; rerun to resume from {part}") from None
            log.warning("%s: %s; resuming (attempt %d of %d)", url, cut, attempt, retries)
            time.sleep(retry_wait_s)
    _check_size(part, url, expected_size)
    digest = sha256_file(part)
    if expected_sha256 and digest != expected_sha256:
        part.unlink()
        raise DownloadError(f"{url}: checksum mismatch (expected sha256 {expected_sha256}, got {digest}); "
                            f"deleted the download, rerun to fetch it again")
    _fsync(part)
    os.replace(part, destination)
    return digest


def _check_url(url: str) -> None:
    """Refuse what urllib cannot fetch before touching the disk."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SUPPORTED_SCHEMES or not (parts.netloc or parts.scheme == "file"):
        raise DownloadError(f"{url}: not a usable URL (expected {', '.join(SUPPORTED_SCHEMES)}://...)")


def _fetch_into(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """One HTTP request that appends the rest of the file to `part` (or
    rewrites it when the server sends the whole file). Returns when the server's
    announced size is all there; raises _TransferInterrupted when it is not."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as error:
        with error:
            if error.code == 416 and offset:
                if _part_is_whole(offset, error.headers.get("Content-Range")):
                    return
                log.info("%s: the partial download does not match the server's file (HTTP 416); "
                         "starting over", url)
                part.unlink()
                _fetch_into(url, part, timeout=timeout, progress=progress)  # offset 0 now: no Range
                return
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except URLError as error:
        raise DownloadError(f"{url}: network error ({error.reason})") from None
    except (http.client.HTTPException, OSError) as error:  # e.g. a timeout while waiting for the headers
        raise DownloadError(f"{url}: network error ({error or type(error).__name__})") from None

    with response:
        if response.status == 206:
            start, total = _parse_content_range(url, response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise DownloadError(f"{url}: server resumed at byte {start}, not {offset}; "
                                    f"deleted the partial download, rerun to start over")
        else:
            if offset:
                log.info("%s: server ignored the Range request; downloading from the start", url)
            offset = 0  # a 200 carries the whole file: rewrite the .part from byte 0
            total = _int_or_none(response.headers.get("Content-Length"))
        # Logged only once the server has answered, so a bad URL prints just the error line.
        log.info("%s %s (%s bytes) to %s", "resuming" if offset else "downloading", url,
                 total if total is not None else "unknown", part)
        _stream_to_file(response, part, offset=offset, total=total, url=url, progress=progress)


def _part_is_whole(offset: int, content_range: str | None) -> bool:
    """A 416 answers a Range that starts at or past the end of the file: the
    .part is whole when the server's 'bytes */TOTAL' equals its size (a run died
    before the rename); otherwise it is stale."""
    return _parse_unsatisfied_range_total(content_range) == offset


def _stream_to_file(response, part: Path, *, offset: int, total: int | None, url: str, progress: bool) -> None:
    """Copy the response body into `part` from `offset`, in chunks, with a progress bar."""
    received = offset
    try:
        handle = open(part, "ab" if offset else "wb")
    except OSError as error:
        raise _write_error(part, error) from None
    with handle, _progress_bar(total, initial=offset, desc=part.name, enabled=progress) as bar:
        while True:
            try:
                chunk = response.read1(CHUNK_BYTES)  # what has arrived: a timeout loses nothing read
            except (http.client.HTTPException, OSError) as error:  # reset, timeout, incomplete read
                raise _TransferInterrupted(f"connection lost after {received} bytes "
                                           f"({type(error).__name__}: {error})") from None
            if not chunk:
                break
            try:
                handle.write(chunk)
            except OSError as error:
                raise _write_error(part, error) from None
            received += len(chunk)
            bar.update(len(chunk))
    if total is not None and received < total:
        raise _TransferInterrupted(f"connection closed after {received} of {total} bytes")
    if total is not None and received > total:
        part.unlink()
        raise DownloadError(f"{url}: server sent {received} bytes but announced {total}; "
                            f"deleted the download, rerun to fetch it again")


def _check_size(part: Path, url: str, expected_size: int | None) -> None:
    size = part.stat().st_size
    if size == 0:
        part.unlink()
        raise DownloadError(f"{url}: the server sent an empty file")
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise DownloadError(f"{url}: size mismatch (expected {expected_size} bytes, got {size}); "
                            f"deleted the download, rerun to fetch it again")


def _progress_bar(total: int | None, *, initial: int, desc: str, enabled: bool) -> tqdm:
    """A byte-counting bar (`deep_speaker.progress.progress_bar`, the one bar of every stage)."""
    return progress_bar(total, desc, unit="B", enabled=enabled, initial=initial, scale_bytes=True)


def _parse_content_range(url: str, value: str | None) -> tuple[int, int | None]:
    """(start, total) from 'bytes START-END/TOTAL' (TOTAL may be '*')."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        raise DownloadError(f"{url}: partial response with a bad Content-Range {value!r}")
    total = match.group(3)
    return int(match.group(1)), (None if total == "*" else int(total))


def _parse_unsatisfied_range_total(value: str | None) -> int | None:
    """TOTAL from a 416's 'bytes */TOTAL', or None."""
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", value or "")
    return int(match.group(1)) if match else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- extraction


def archive_kind(path: str | Path) -> str:
    """'zip' or 'tar' by looking inside the file (not at its name)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise DownloadError(f"{path}: not a zip or tar archive (an HTML error page from the server?)")


def extract_corpus(archive: str | Path, target: str | Path, layout_glob: str) -> int:
    """Extract `archive` into a temporary folder next to `target`, check that
    `layout_glob` matches, then rename the corpus to `target`; returns its file
    count. `target` must not exist. Nothing is left behind on failure, and a
    broken archive is deleted so that a rerun downloads it again."""
    archive, target = Path(archive), Path(target)
    kind = archive_kind_or_delete(archive)
    # Not tempfile.mkdtemp: its 0700 mode would stay on the corpus when the
    # archive has no wrapper folder and this very folder becomes the target.
    work = target.parent / f".{target.name}.extracting-{secrets.token_hex(4)}"
    try:
        work.mkdir()
    except OSError as error:
        raise _write_error(work, error) from None
    try:
        log.info("extracting %s", archive)
        try:
            if kind == "zip":
                _extract_zip(archive, work)
            else:
                _extract_tar(archive, work)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
            archive.unlink()
            raise DownloadError(f"{archive}: corrupt archive ({type(error).__name__}: {error}); "
                                f"deleted it, rerun to download it again") from None
        corpus = find_corpus_root(work, layout_glob)
        if corpus is None:
            raise DownloadError(f"{archive}: no file matching {layout_glob} in the archive; "
                                f"is it the right corpus archive?")
        file_count = sum(1 for path in corpus.rglob("*") if path.is_file())
        os.rename(corpus, target)  # same filesystem, so atomic: the corpus appears whole or not at all
        return file_count
    finally:
        shutil.rmtree(work, ignore_errors=True)


def archive_kind_or_delete(archive: Path) -> str:
    """archive_kind, deleting a file that is no archive (so a rerun fetches it again)."""
    try:
        return archive_kind(archive)
    except DownloadError as error:
        archive.unlink()
        raise DownloadError(f"{error}; deleted it, rerun to download it again") from None


def find_corpus_root(folder: Path, layout_glob: str, depth: int = 2) -> Path | None:
    """`folder` itself when it holds the layout, else the first subfolder (up to
    `depth` levels down) that does: archives differ in whether, and how deep,
    they wrap the corpus in top-level folders."""
    if _has_match(folder, layout_glob):
        return folder
    if depth == 0:
        return None
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.is_symlink():
            found = find_corpus_root(child, layout_glob, depth - 1)
            if found is not None:
                return found
    return None


def _has_match(folder: Path, pattern: str) -> bool:
    return next(folder.glob(pattern), None) is not None


def _extract_zip(archive: Path, work: Path) -> None:
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.infolist():
            _check_member_name(archive, member.filename)
            _check_inside(archive, member.filename, work / member.filename, work)
            try:
                zipped.extract(member, work)
            except OSError as error:
                raise _write_error(work / member.filename, error) from None


def _extract_tar(archive: Path, work: Path) -> None:
    # Member by member: the archive is a single pass over a compressed stream.
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            _check_member_name(archive, member.name)
            destination = work / member.name
            _check_inside(archive, member.name, destination, work)
            if member.issym():
                _check_inside(archive, member.name, destination.parent / member.linkname, work)
            elif member.islnk():
                _check_inside(archive, member.name, work / member.linkname, work)
            elif not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"{archive}: refused member {member.name!r} "
                                         f"(device or fifo, not a file)")
            try:
                tar.extract(member, work, set_attrs=False, **_TAR_FILTER)
            except _TAR_FILTER_ERRORS as error:  # second line of defence: Python's own 'data' filter
                raise UnsafeArchiveError(f"{archive}: refused member {member.name!r} ({error})") from None
            except OSError as error:
                raise _write_error(destination, error) from None


# Python >= 3.11.4/3.12 ships tarfile's 'data' filter; older versions rely on our checks alone.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_TAR_FILTER_ERRORS = getattr(tarfile, "FilterError", ())  # () catches nothing


def _check_member_name(archive: Path, name: str) -> None:
    """Refuse absolute names, drive letters and '..' components."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"[A-Za-z]:", normalized) or ".." in normalized.split("/"):
        raise UnsafeArchiveError(f"{archive}: refused member {name!r} (absolute path or '..' "
                                 f"would write outside the corpus folder)")


def _check_inside(archive: Path, name: str, path: Path, root: Path) -> None:
    """Refuse a path that resolves (following symlinks already extracted) outside `root`."""
    real_root = os.path.realpath(root)
    real_path = os.path.realpath(path)
    if os.path.commonpath([real_root, real_path]) != real_root:
        raise UnsafeArchiveError(f"{archive}: refused member {name!r} (it points outside the corpus folder)")


def remove_stale_extractions(root: Path, folder: str) -> None:
    """Delete temporary extraction folders that a killed run left behind."""
    for stale in root.glob(f".{folder}.extracting-*"):
        if stale.is_dir() and not stale.is_symlink():
            log.info("removing the unfinished extraction %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------- completion marker


def is_complete(folder: str | Path) -> bool:
    """True only when `folder` carries a readable completion marker."""
    return bool(read_marker(folder))


def read_marker(folder: str | Path) -> dict:
    """The marker's JSON, or {} when it is missing or unreadable."""
    try:
        data = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_marker(folder: Path, *, version: str, url: str, sha256: str | None, file_count: int,
                 archive: str) -> None:
    """Write ``<folder>/.complete``, atomically, as the last step."""
    record = {"version": version, "url": url, "archive": archive, "sha256": sha256, "file_count": file_count,
              "completed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(folder / MARKER_NAME, json.dumps(record, indent=2) + "\n")


# --------------------------------------------------------------------------- file-system helpers


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"{folder}: cannot create folder ({error.strerror or error})") from None


def _write_error(path: Path, error: OSError) -> DownloadError:
    """One clear line for a failed write; disk full gets its own words."""
    if error.errno == errno.ENOSPC:
        return DownloadError(f"{path}: disk full (no space left on device)")
    return DownloadError(f"{path}: cannot write ({error.strerror or error})")


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
