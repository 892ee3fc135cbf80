"""VCTK downloader tests against a local HTTP server (no internet).

The server serves tiny synthetic archives in each release's layout, supports
Range requests, records every request, and can be told to cut a transfer
short, ignore Range, or answer an error status.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import threading
import time
import wave
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile

from deep_speaker import download
from deep_speaker.commands import download_vctk as command
from deep_speaker.download import DownloadError, UnsafeArchiveError, download_vctk

FAST = dict(timeout=5.0, retry_wait_s=0.0, progress=False)


# --------------------------------------------------------------------------- local HTTP server


class _Handler(BaseHTTPRequestHandler):
    """GET with Range support; behaviour comes from the server's attributes."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        server.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if self.path in server.statuses:
            self.send_error(server.statuses[self.path])
            return
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = self._range_start()
        if start is not None and start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if start is not None:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            start = 0
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cut_at = server.cut_once.pop(self.path, None)
        # A cut transfer announces the full length but sends only the first bytes.
        self.wfile.write(payload if cut_at is None else payload[:cut_at])
        self.wfile.flush()
        if server.stall_s:  # then say nothing more, so the client's read times out
            time.sleep(server.stall_s)

    def _range_start(self):
        if self.server.ignore_range:
            return None
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        return int(match.group(1)) if match else None

    def log_message(self, *args):  # keep test output quiet
        pass


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.statuses: dict[str, int] = {}
        self.cut_once: dict[str, int] = {}
        self.ignore_range = False
        self.stall_s = 0.0
        self.requests: list[dict] = []

    def handle_error(self, request, client_address):  # a client that hung up early is expected here
        pass

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server():
    httpd = LocalServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- synthetic archives


def _wav_bytes(seconds: float = 0.05, rate: int = 48000) -> bytes:
    buffer = io.BytesIO()
    samples = (np.sin(np.arange(int(seconds * rate)) * 0.05) * 3000).astype("<i2")
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def _flac_bytes(seconds: float = 0.05, rate: int = 48000) -> bytes:
    buffer = io.BytesIO()
    samples = (np.sin(np.arange(int(seconds * rate)) * 0.05) * 0.1).astype(np.float32)
    soundfile.write(buffer, samples, rate, format="FLAC")
    return buffer.getvalue()


def _members_080() -> dict[str, bytes]:
    """0.80 layout, wrapped in a VCTK-Corpus/ folder as the release is."""
    members = {"VCTK-Corpus/speaker-info.txt": b"ID AGE GENDER ACCENTS\n225 23 F English\n"}
    for speaker in ("p225", "p226"):
        for utterance in ("001", "002"):
            members[f"VCTK-Corpus/wav48/{speaker}/{speaker}_{utterance}.wav"] = _wav_bytes()
            members[f"VCTK-Corpus/txt/{speaker}/{speaker}_{utterance}.txt"] = b"Please call Stella.\n"
    return members


def _members_092() -> dict[str, bytes]:
    """0.92 layout: no wrapper folder, flac per microphone."""
    members = {"speaker-info.txt": b"ID AGE GENDER ACCENTS\n", "README.txt": b"VCTK 0.92\n"}
    for speaker in ("p225", "p226"):
        for mic in ("mic1", "mic2"):
            members[f"wav48_silence_trimmed/{speaker}/{speaker}_001_{mic}.flac"] = _flac_bytes()
        members[f"txt/{speaker}/{speaker}_001.txt"] = b"Please call Stella.\n"
    return members


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def archive_080_tar() -> bytes:
    return _tar_gz(_members_080())


@pytest.fixture(scope="module")
def archive_092_zip() -> bytes:
    return _zip(_members_092())


# --------------------------------------------------------------------------- full runs


def test_080_tar_gz_download_extracts_layout_and_marker(server, tmp_path, archive_080_tar):
    server.files["/VCTK-Corpus.tar.gz"] = archive_080_tar
    url = server.url("/VCTK-Corpus.tar.gz")

    result = download_vctk("0.80", tmp_path, url=url, **FAST)

    corpus = tmp_path / "VCTK-Corpus"
    assert result.folder == corpus and not result.already_complete
    assert (corpus / "wav48/p225/p225_001.wav").is_file()
    audio, rate = soundfile.read(corpus / "wav48/p226/p226_002.wav")
    assert rate == 48000 and len(audio) == 2400
    marker = json.loads((corpus / ".complete").read_text())
    assert marker["version"] == "0.80" and marker["url"] == url
    assert marker["sha256"] == _sha256(archive_080_tar)
    assert marker["file_count"] == result.file_count == 9
    # The archive is deleted by default, and no temporary folder or .part is left.
    assert list((tmp_path / "downloads").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VCTK-Corpus", "downloads"]


def test_092_zip_download_extracts_into_versioned_folder(server, tmp_path, archive_092_zip):
    server.files["/VCTK-Corpus-0.92.zip"] = archive_092_zip

    result = download_vctk("0.92", tmp_path, url=server.url("/VCTK-Corpus-0.92.zip"), keep_archive=True,
                           sha256=_sha256(archive_092_zip), **FAST)

    corpus = tmp_path / "VCTK-Corpus-0.92"
    assert result.folder == corpus
    assert (corpus / "speaker-info.txt").is_file() and (corpus / "txt/p225/p225_001.txt").is_file()
    audio, rate = soundfile.read(corpus / "wav48_silence_trimmed/p225/p225_001_mic1.flac")
    assert rate == 48000 and len(audio) == 2400
    assert json.loads((corpus / ".complete").read_text())["version"] == "0.92"
    assert corpus.stat().st_mode & 0o777 == (tmp_path / "downloads").stat().st_mode & 0o777  # umask, not 0700
    kept = tmp_path / "downloads" / "VCTK-Corpus-0.92.zip"
    assert result.archive == kept and kept.read_bytes() == archive_092_zip


def test_080_zip_is_detected_by_content_not_name(server, tmp_path):
    server.files["/bitstream?id=2651"] = _zip(_members_080())

    result = download_vctk("0.80", tmp_path, url=server.url("/bitstream?id=2651"), **FAST)

    assert (result.folder / "wav48/p225/p225_002.wav").is_file()


# --------------------------------------------------------------------------- resume


def test_cut_transfer_is_resumed_with_a_range_request(server, tmp_path, archive_080_tar):
    server.files["/VCTK-Corpus.tar.gz"] = archive_080_tar
    half = len(archive_080_tar) // 2
    server.cut_once["/VCTK-Corpus.tar.gz"] = half

    result = download_vctk("0.80", tmp_path, url=server.url("/VCTK-Corpus.tar.gz"), keep_archive=True, **FAST)

    assert [r["range"] for r in server.requests] == [None, f"bytes={half}-"]
    assert (tmp_path / "downloads/VCTK-Corpus.tar.gz").read_bytes() == archive_080_tar
    assert result.sha256 == _sha256(archive_080_tar)


def test_cut_transfer_without_retries_fails_then_rerun_resumes(server, tmp_path, archive_080_tar):
    server.files["/VCTK-Corpus.tar.gz"] = archive_080_tar
    half = len(archive_080_tar) // 2
    server.cut_once["/VCTK-Corpus.tar.gz"] = half
    url = server.url("/VCTK-Corpus.tar.gz")

    with pytest.raises(DownloadError, match=r"connection closed after \d+ of \d+ bytes.*rerun to resume"):
        download_vctk("0.80", tmp_path, url=url, retries=0, **FAST)
    assert (tmp_path / "downloads/VCTK-Corpus.tar.gz.part").stat().st_size == half
    assert not (tmp_path / "VCTK-Corpus").exists()  # nothing extracted from a partial download

    download_vctk("0.80", tmp_path, url=url, retries=0, **FAST)

    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert download.is_complete(tmp_path / "VCTK-Corpus")


def test_server_ignoring_range_restarts_cleanly(server, tmp_path, archive_080_tar):
    server.files["/VCTK-Corpus.tar.gz"] = archive_080_tar
    server.ignore_range = True
    part = tmp_path / "downloads/VCTK-Corpus.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes that must not survive")

    download_vctk("0.80", tmp_path, url=server.url("/VCTK-Corpus.tar.gz"), keep_archive=True, **FAST)

    assert server.requests[0]["range"] == f"bytes={len(b'stale bytes that must not survive')}-"
    assert (tmp_path / "downloads/VCTK-Corpus.tar.gz").read_bytes() == archive_080_tar


def test_whole_part_file_answered_416_is_used_as_is(server, tmp_path, archive_080_tar):
    server.files["/VCTK-Corpus.tar.gz"] = archive_080_tar
    part = tmp_path / "downloads/VCTK-Corpus.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(archive_080_tar)  # a run died after the transfer, before the rename

    download_vctk("0.80", tmp_path, url=server.url("/VCTK-Corpus.tar.gz"), **FAST)

    assert len(server.requests) == 1 and download.is_complete(tmp_path / "VCTK-Corpus")


def test_oversized_part_file_answered_416_starts_over(server, tmp_path, archive_080_tar):
    server.files["/VCTK-Corpus.tar.gz"] = archive_080_tar
    part = tmp_path / "downloads/VCTK-Corpus.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(archive_080_tar + b"junk")

    download_vctk("0.80", tmp_path, url=server.url("/VCTK-Corpus.tar.gz"), keep_archive=True, **FAST)

    assert [r["range"] for r in server.requests] == [f"bytes={len(archive_080_tar) + 4}-", None]
    assert (tmp_path / "downloads/VCTK-Corpus.tar.gz").read_bytes() == archive_080_tar


# --------------------------------------------------------------------------- failures


def test_read_timeout_is_reported_after_retries(server, tmp_path, archive_080_tar):
    server.files["/VCTK-Corpus.tar.gz"] = archive_080_tar
    server.cut_once["/VCTK-Corpus.tar.gz"] = 100
    server.stall_s = 1.0
    url = server.url("/VCTK-Corpus.tar.gz")

    with pytest.raises(DownloadError, match=rf"^{re.escape(url)}: connection lost after 100 bytes .*timed out"):
        download_vctk("0.80", tmp_path, url=url, retries=0, timeout=0.2, retry_wait_s=0.0, progress=False)


def test_disk_full_is_one_clear_line(server, tmp_path, archive_080_tar, monkeypatch):
    server.files["/VCTK-Corpus.tar.gz"] = archive_080_tar

    class FullDisk(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open
    monkeypatch.setattr(download, "open", lambda path, mode="r", *args, **kwargs: FullDisk()
                        if mode in ("wb", "ab") else real_open(path, mode, *args, **kwargs), raising=False)

    with pytest.raises(DownloadError, match=r"VCTK-Corpus\.tar\.gz\.part: disk full \(no space left on device\)$"):
        download_vctk("0.80", tmp_path, url=server.url("/VCTK-Corpus.tar.gz"), **FAST)
    assert not (tmp_path / "VCTK-Corpus").exists()


def test_checksum_mismatch_fails_and_leaves_no_corpus(server, tmp_path, archive_080_tar):
    server.files["/VCTK-Corpus.tar.gz"] = archive_080_tar
    url = server.url("/VCTK-Corpus.tar.gz")

    with pytest.raises(DownloadError, match=r"checksum mismatch \(expected sha256 0{64}, got [0-9a-f]{64}\)") as caught:
        download_vctk("0.80", tmp_path, url=url, sha256="0" * 64, **FAST)

    assert url in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "VCTK-Corpus").exists()
    assert list((tmp_path / "downloads").iterdir()) == []  # the bad file is not kept for a resume
    assert not list(tmp_path.glob(".VCTK-Corpus.extracting-*"))


def test_html_error_page_is_not_an_archive(server, tmp_path):
    server.files["/VCTK-Corpus.zip"] = b"<html><body>Maintenance</body></html>"

    with pytest.raises(DownloadError, match=r"VCTK-Corpus\.zip: not a zip or tar archive"):
        download_vctk("0.80", tmp_path, url=server.url("/VCTK-Corpus.zip"), **FAST)

    assert not (tmp_path / "VCTK-Corpus").exists()
    assert list((tmp_path / "downloads").iterdir()) == []


def test_archive_without_the_release_layout_is_refused(server, tmp_path, archive_092_zip):
    server.files["/VCTK-Corpus.zip"] = archive_092_zip  # 0.92 content asked for as 0.80

    with pytest.raises(DownloadError, match=r"no file matching wav48/p\*/p\*_\*\.wav"):
        download_vctk("0.80", tmp_path, url=server.url("/VCTK-Corpus.zip"), **FAST)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads"]


def test_http_error_names_url_and_status(server, tmp_path):
    server.statuses["/VCTK-Corpus.zip"] = 503
    url = server.url("/VCTK-Corpus.zip")

    with pytest.raises(DownloadError, match=rf"^{re.escape(url)}: HTTP 503 "):
        download_vctk("0.80", tmp_path, url=url, **FAST)


@pytest.mark.parametrize("url", ["gopher://example/x.zip", "VCTK-Corpus.zip", "http:///x.zip"])
def test_unusable_url_is_one_clear_line(tmp_path, url):
    with pytest.raises(DownloadError, match=rf"^{re.escape(url)}: not a usable URL"):
        download_vctk("0.80", tmp_path, url=url, **FAST)


def test_connection_refused_is_a_network_error(tmp_path):
    with LocalServer() as closed:  # bind a port, then close it so nothing listens there
        url = closed.url("/VCTK-Corpus.zip")

    with pytest.raises(DownloadError, match=rf"^{re.escape(url)}: network error"):
        download_vctk("0.80", tmp_path, url=url, **FAST)


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_archive_member_escaping_with_dotdot_is_refused(server, tmp_path, kind):
    members = _members_080()
    members["VCTK-Corpus/../evil"] = b"owned"
    server.files["/evil"] = _tar_gz(members) if kind == "tar" else _zip(members)
    root = tmp_path / "root"

    with pytest.raises(UnsafeArchiveError, match=r"refused member 'VCTK-Corpus/\.\./evil'"):
        download_vctk("0.80", root, url=server.url("/evil"), **FAST)

    assert not (tmp_path / "evil").exists() and not (root / "evil").exists()
    assert sorted(p.name for p in root.iterdir()) == ["downloads"]


def test_tar_symlink_escaping_the_folder_is_refused(server, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("VCTK-Corpus/wav48")
        link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
        tar.addfile(link)
    server.files["/link.tar.gz"] = buffer.getvalue()

    with pytest.raises(UnsafeArchiveError, match=r"refused member 'VCTK-Corpus/wav48' \(it points outside"):
        download_vctk("0.80", tmp_path / "root", url=server.url("/link.tar.gz"), **FAST)


def test_absolute_member_name_is_refused(tmp_path):
    archive = tmp_path / "abs.zip"
    archive.write_bytes(_zip({"/etc/evil": b"x"}))
    (tmp_path / "root").mkdir()

    with pytest.raises(UnsafeArchiveError, match=r"refused member '/etc/evil' \(absolute path"):
        download.extract_corpus(archive, tmp_path / "root/VCTK-Corpus", "wav48/p*/p*_*.wav")


# --------------------------------------------------------------------------- reruns


def test_rerun_after_completion_makes_no_request(server, tmp_path, archive_092_zip):
    server.files["/VCTK-Corpus-0.92.zip"] = archive_092_zip
    url = server.url("/VCTK-Corpus-0.92.zip")
    download_vctk("0.92", tmp_path, url=url, **FAST)
    server.requests.clear()

    result = download_vctk("0.92", tmp_path, url=url, **FAST)

    assert result.already_complete and result.file_count == 8
    assert server.requests == []


def test_folder_without_marker_is_left_alone(server, tmp_path, archive_080_tar):
    server.files["/VCTK-Corpus.tar.gz"] = archive_080_tar
    by_hand = tmp_path / "VCTK-Corpus/wav48/p225"
    by_hand.mkdir(parents=True)
    (by_hand / "p225_001.wav").write_bytes(b"unpacked by hand")

    with pytest.raises(download.DownloadError, match="not made by this downloader.*--replace_existing"):
        download_vctk("0.80", tmp_path, url=server.url("/VCTK-Corpus.tar.gz"), **FAST)

    assert server.requests == [] and (by_hand / "p225_001.wav").read_bytes() == b"unpacked by hand"


def test_folder_without_marker_is_replaced_on_request(server, tmp_path, archive_080_tar):
    server.files["/VCTK-Corpus.tar.gz"] = archive_080_tar
    partial = tmp_path / "VCTK-Corpus/wav48/p225"
    partial.mkdir(parents=True)
    (partial / "p225_001.wav").write_bytes(b"truncated")
    (partial / "leftover.tmp").write_bytes(b"x")
    stale = tmp_path / ".VCTK-Corpus.extracting-abc123"
    stale.mkdir()

    result = download_vctk("0.80", tmp_path, url=server.url("/VCTK-Corpus.tar.gz"), replace_existing=True, **FAST)

    assert not result.already_complete and len(server.requests) == 1
    assert (partial / "p225_001.wav").read_bytes() == _members_080()["VCTK-Corpus/wav48/p225/p225_001.wav"]
    assert not (partial / "leftover.tmp").exists() and not stale.exists()
    assert download.is_complete(tmp_path / "VCTK-Corpus")


# --------------------------------------------------------------------------- command line


def test_cli_bad_url_prints_one_error_line_and_returns_2(server, tmp_path, capsys):
    url = server.url("/missing.zip")

    status = command.main(["--url", url, "--data_root", str(tmp_path), "--timeout", "5", "--no_progress"])

    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err.splitlines() == [f"error: {url}: HTTP 404 Not Found"]


def test_script_bad_url_prints_only_the_error_line(server, tmp_path):
    # A real process: the command's logging and progress bar write to the real stderr.
    url = server.url("/missing.zip")
    script = Path(__file__).resolve().parent.parent / "scripts" / "download_vctk.py"

    finished = subprocess.run([sys.executable, str(script), "--url", url, "--data_root", str(tmp_path),
                               "--timeout", "5"], capture_output=True, text=True, timeout=60)

    assert finished.returncode == 2 and finished.stdout == ""
    assert finished.stderr.splitlines() == [f"error: {url}: HTTP 404 Not Found"]


def test_cli_downloads_then_reports_already_there(server, tmp_path, capsys, archive_092_zip):
    server.files["/VCTK-Corpus-0.92.zip"] = archive_092_zip
    argv = ["--version", "0.92", "--url", server.url("/VCTK-Corpus-0.92.zip"), "--data_root", str(tmp_path),
            "--sha256", _sha256(archive_092_zip).upper(), "--timeout", "5", "--no_progress"]

    assert command.main(argv) == 0
    assert "ready in" in capsys.readouterr().out
    assert command.main(argv) == 0
    assert "already in" in capsys.readouterr().out and len(server.requests) == 1


def test_cli_rejects_malformed_sha256(capsys):
    with pytest.raises(SystemExit) as exited:
        command.main(["--sha256", "abc"])
    assert exited.value.code == 2 and "64 hex digits" in capsys.readouterr().err


def test_every_flag_has_help():
    for action in command.build_parser()._actions:
        assert action.help, action.dest


def test_release_table_is_well_formed():
    for release in download.RELEASES.values():
        assert release.url.startswith("https://datashare.ed.ac.uk/bitstream/handle/10283/")
        assert release.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", release.sha256)
