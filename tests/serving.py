"""A real deep-speaker-serve process for the tests that need one over a socket (the page in
a browser, the kill test): started from scripts/serve.py on a free loopback port, in a
session (process group) of its own so that the test can signal it and its workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import REPO_ROOT, free_ports

SERVE = REPO_ROOT / "scripts" / "serve.py"


class Server:
    """`python scripts/serve.py --database DATABASE --port <free> --workers 1 ...`, its output in a log file."""

    def __init__(self, database: str, folder: Path, *flags: str):
        self.port = free_ports(1)[0]
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / f"server-{self.port}.log"
        command = [sys.executable, str(SERVE), "--database", database, "--port", str(self.port), "--workers", "1",
                   "--requests_per_minute", "100000", *flags]
        with open(self.log_path, "w") as log:  # cwd: no deep-speaker-data/checkpoints: the shipped model serves
            self.process = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

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
