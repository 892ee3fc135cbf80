"""A real deep-speaker-serve process for the tests that need one over a socket (the page in
a browser, the kill test): started from scripts/serve.py on a free loopback port, in a
session (process group) of its own so that the test can signal it and its workers. And
`talk`, a conversation of real utterances for the service's diarization tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from conftest import REPO_ROOT, free_ports, write_audio_file

SERVE = REPO_ROOT / "scripts" / "serve.py"


class Server:
    """`python scripts/serve.py --database DATABASE --port <free> --workers 1 ...`, its output in a log file."""

    def __init__(self, database: str, folder: Path, *flags: str):
        self.port = free_ports(1)[0]
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / f"server-{self.port}.log"
        # its temp files (uploads) under the test's folder: a killed server cannot clean up after itself
        self.tmp = folder / f"tmp-{self.port}"
        self.tmp.mkdir()
        command = [sys.executable, str(SERVE), "--database", database, "--port", str(self.port), "--workers", "1",
                   "--requests_per_minute", "100000", *flags]
        with open(self.log_path, "w") as log:  # cwd: no deep-speaker-data/checkpoints: the shipped model serves
            self.process = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env={**os.environ, "TMPDIR": str(self.tmp)})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> "Server":
        """Until /healthz answers (the workers have loaded the model by then)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start (exit {self.process.poll()}):\n{self.log()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL to the server and its workers at once (a power cut, the OOM killer)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # any worker left behind
        except ProcessLookupError:
            pass
        self.process.wait()


def talk(vctk_corpus: Path, utterances: list[str], path: Path, pause_s: float = 0.8,
         ) -> tuple[Path, list[tuple[float, float, str]]]:
    """Real VCTK utterances ("p239_004", ...) one after the other at 16 kHz, `pause_s` of
    silence after each, written to `path`; returns it and the true turns (start_s, end_s,
    speaker) of the utterances."""
    import librosa
    import soundfile

    pause = np.zeros(int(pause_s * 16000), np.float32)
    parts, turns, at = [], [], 0.0
    for name in utterances:
        speaker = name.split("_")[0]
        audio, rate = soundfile.read(str(vctk_corpus / "wav48" / speaker / f"{name}.wav"), dtype="float32")
        audio = librosa.resample(audio, orig_sr=rate, target_sr=16000)
        turns.append((at, at + len(audio) / 16000, speaker))
        parts += [audio, pause]
        at += (len(audio) + len(pause)) / 16000
    return write_audio_file(path, np.concatenate(parts), 16000), turns
