"""preprocess.py under stress: killed and resumed, run twice, run concurrently,
and out of disk space or permission.

- SIGKILL at random points of ``--regenerate_full_cache`` and of
  ``--generate_training_inputs``, then the same command again: the result equals
  an uninterrupted run byte for byte, no temp file is left, and every pickle
  present after a kill loads (none is ever half written).
- The same command twice gives bit-identical cache and inputs.
- Two runs on one cache folder: the second waits for the first (or gives up
  after --lock_timeout); the --shard jobs of one job array do not wait for each
  other, only for whole-cache runs (see deep_speaker/locking.py).
- Disk full (a write raising ENOSPC) and a read-only folder (os.replace raising
  PermissionError, since root ignores chmod) give one clear line and exit 2, and
  leave what was written intact.

Kill points come from random.Random(KILL_SEED); set DEEP_SPEAKER_KILL_SEED to try others.
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deep_speaker import io_utils
from deep_speaker.audio_cache import AUDIO_CACHE_DIR, REGENERATING_MARKER, load_cached_utterance
from deep_speaker.commands import preprocess
from deep_speaker.io_utils import load_pickle
from deep_speaker.locking import folder_lock, shard_lock_name
from deep_speaker.training_inputs import load_inputs_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "preprocess.py"
KILL_SEED = int(os.environ.get("DEEP_SPEAKER_KILL_SEED", "20240611"))
NUM_FILES, NUM_SPEAKERS = 34, 14  # vctk-mini


# --- helpers ---------------------------------------------------------------------------------------

def command(cache: Path, corpus: Path | None, *stages: str) -> list[str]:
    argv = [sys.executable, str(SCRIPT), *stages, "--cache_output_dir", str(cache)]
    return argv + (["--audio_dir", str(corpus)] if corpus else [])


def start(argv: list[str], log: Path) -> subprocess.Popen:
    """The command, with stdout and stderr going to `log`."""
    with open(log, "w") as handle:
        return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)


def finish(process: subprocess.Popen, timeout: float = 120) -> int:
    return process.wait(timeout=timeout)


def run_script(argv: list[str], log: Path) -> tuple[int, str]:
    code = finish(start(argv, log))
    return code, log.read_text()


def kill_when(process: subprocess.Popen, ready, extra_delay: float) -> bool:
    """SIGKILL `process` once ready() holds (plus a short delay); True if it was
    still running when killed."""
    deadline = time.monotonic() + 60
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(extra_delay)
    alive = process.poll() is None
    if alive:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    return alive


def count(folder: Path, pattern: str = "*.pkl") -> int:
    try:
        return sum(1 for _ in folder.glob(pattern))
    except FileNotFoundError:
        return 0


def snapshot(cache: Path) -> dict[str, bytes]:
    """What a run produces that must be reproducible: cache and inputs pickles, failure lists."""
    files = [*cache.glob(f"{AUDIO_CACHE_DIR}/*.pkl"), *cache.glob("inputs/*.pkl"), cache / "full_inputs.pkl",
             cache / "failures.tsv", cache / "inputs_failures.tsv"]
    return {str(p.relative_to(cache)): p.read_bytes() for p in files if p.exists()}


def same_contents(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_contents(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_contents(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_as_reference(cache: Path, reference: Path, why: str) -> None:
    got, expected = snapshot(cache), snapshot(reference)
    assert sorted(got) == sorted(expected), why
    for name in expected:
        if name.endswith(".pkl"):
            assert same_contents(load_pickle(cache / name), load_pickle(reference / name)), f"{why}: {name}"
        assert got[name] == expected[name], f"{why}: {name} differs in bytes"


def leftovers(cache: Path) -> list[str]:
    """Temp files and markers a finished run must not leave."""
    found = [str(p) for p in cache.rglob("*.tmp")] + [str(p) for p in cache.rglob(f"{REGENERATING_MARKER}*")]
    return found + [str(p) for p in cache.rglob("*.tsv") if p.stat().st_size == 0]


def assert_present_pickles_load(cache: Path) -> None:
    """After a kill: whatever .pkl is in place is complete (writes are rename-atomic)."""
    for path in cache.glob(f"{AUDIO_CACHE_DIR}/*.pkl"):
        load_cached_utterance(path)
    for path in cache.glob("inputs/*.pkl"):
        load_inputs_file(path)
    if (cache / "full_inputs.pkl").exists():
        load_pickle(cache / "full_inputs.pkl")


def one_error_line(text: str) -> str:
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text
    return errors[0]


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(vctk_corpus) -> Path:
    return vctk_corpus  # read in place, never written


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """One uninterrupted run of both stages."""
    cache = tmp_path_factory.mktemp("reference") / "cache"
    code, log = run_script(command(cache, corpus, "--regenerate_full_cache", "--generate_training_inputs"),
                           cache.parent / "log")
    assert code == 0, log
    assert count(cache / AUDIO_CACHE_DIR) == NUM_FILES and count(cache / "inputs") == NUM_SPEAKERS
    assert leftovers(cache) == []
    return cache


# --- reproduce ------------------------------------------------------------------------------------

def test_same_command_twice_is_bit_identical(reference, corpus, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)  # where the reference command ran once...
    code, log = run_script(command(cache, corpus, "--regenerate_full_cache", "--generate_training_inputs"),
                           tmp_path / "second.log")  # ...it runs again: everything is recomputed
    assert code == 0 and f"{NUM_FILES} files cached" in log and f"{NUM_SPEAKERS} speakers written" in log, log
    assert_same_as_reference(cache, reference, "the same command twice")
    assert leftovers(cache) == []


# --- kill and resume --------------------------------------------------------------------------------

def test_killed_regenerate_resumes_to_the_same_cache(reference, corpus, tmp_path):
    rng = random.Random(KILL_SEED)
    cache = tmp_path / "cache"
    argv = command(cache, corpus, "--regenerate_full_cache")
    first, second = sorted(rng.sample(range(1, NUM_FILES - 2), 2))
    killed_mid_run = []
    for threshold in (first, second):  # a killed run, then its killed resumption
        process = start(argv, tmp_path / f"kill-{threshold}.log")
        killed_mid_run.append(kill_when(process, lambda: count(cache / AUDIO_CACHE_DIR) >= threshold,
                                        rng.uniform(0, 0.02)))
        assert (cache / AUDIO_CACHE_DIR / REGENERATING_MARKER).exists() or not killed_mid_run[-1]
        assert_present_pickles_load(cache)
    assert any(killed_mid_run), f"seed {KILL_SEED}: every run finished before its kill"

    code, log = run_script(argv, tmp_path / "resume.log")
    assert code == 0, log
    done, skipped = map(int, re.search(r"audio cache: (\d+) files cached, (\d+) skipped", log).groups())
    assert done + skipped == NUM_FILES and skipped >= second - 1, log  # resumed, not wiped
    code, log = run_script(command(cache, None, "--generate_training_inputs"), tmp_path / "inputs.log")
    assert code == 0, log
    assert_same_as_reference(cache, reference, f"seed {KILL_SEED}, kills after {first} and {second} files")
    assert leftovers(cache) == []


def test_killed_training_inputs_resume_to_the_same_inputs(reference, tmp_path):
    rng = random.Random(KILL_SEED + 1)
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in (AUDIO_CACHE_DIR, "audio_cache_index"):  # stage 1's output
        shutil.copytree(reference / name, cache / name)
    shutil.copy2(reference / "failures.tsv", cache)
    argv = command(cache, None, "--generate_training_inputs")
    kills = [("files", rng.randrange(1, NUM_SPEAKERS // 2)),
             ("files", rng.randrange(NUM_SPEAKERS // 2, NUM_SPEAKERS)),
             ("seconds", rng.uniform(0.8, 2.5))]
    killed_mid_run = []
    for kind, value in kills:
        process, started = start(argv, tmp_path / f"kill-{value}.log"), time.monotonic()
        if kind == "files":
            ready = lambda: count(cache / "inputs") >= value  # noqa: E731
        else:
            ready = lambda: time.monotonic() - started >= value  # noqa: E731
        killed_mid_run.append(kill_when(process, ready, rng.uniform(0, 0.02)))
        assert_present_pickles_load(cache)
    assert any(killed_mid_run), f"seed {KILL_SEED}: every run finished before its kill"

    code, log = run_script(argv, tmp_path / "resume.log")
    assert code == 0, log
    written, up_to_date = map(int, re.search(r"(\d+) speakers written, (\d+) up to date", log).groups())
    assert written + up_to_date == NUM_SPEAKERS and up_to_date > 0, log  # resumed
    assert_same_as_reference(cache, reference, f"seed {KILL_SEED}, kills {kills}")
    assert leftovers(cache) == []


# --- two runs at once ---------------------------------------------------------------------------

def test_two_runs_started_at_once_take_turns(reference, corpus, tmp_path):
    cache = tmp_path / "cache"
    argv = command(cache, corpus, "--regenerate_full_cache", "--generate_training_inputs")
    runs = [start(argv, tmp_path / f"run{i}.log") for i in range(2)]  # same start-up time: they collide
    assert [finish(p) for p in runs] == [0, 0], [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    logs = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    waited = [f"waiting for another run on {cache} to finish: pid {runs[1 - i].pid} on " in logs[i]
              for i in range(2)]
    # At most one waited, for the other (when one run finishes before the other reaches the
    # lock, neither waits: the start-up times decide; the lock's waiting itself is pinned
    # deterministically by the next test). Never both: that would be a deadlock.
    assert sorted(waited) in ([False, True], [False, False]), logs
    assert_same_as_reference(cache, reference, "after two concurrent runs")
    assert leftovers(cache) == []


def test_waiting_is_announced_and_lock_timeout_gives_one_line(corpus, tmp_path):
    cache = tmp_path / "cache"
    argv = command(cache, corpus, "--update_cache")
    with folder_lock(cache, purpose="a test holding the cache"):
        timed_out = start(argv + ["--lock_timeout", "0.5"], tmp_path / "timeout.log")
        waiting = start(argv, tmp_path / "wait.log")
        assert finish(timed_out) == 2
        deadline = time.monotonic() + 60
        while "waiting for another run" not in (tmp_path / "wait.log").read_text():
            assert waiting.poll() is None and time.monotonic() < deadline, (tmp_path / "wait.log").read_text()
            time.sleep(0.02)
        assert waiting.poll() is None  # still waiting while the lock is held
    assert finish(waiting) == 0
    assert count(cache / AUDIO_CACHE_DIR) == NUM_FILES
    line = one_error_line((tmp_path / "timeout.log").read_text())
    assert re.fullmatch(rf"error: {re.escape(str(cache))}: another run is still working on this cache "
                        rf"\(pid {os.getpid()} on .*a test holding the cache.*\); gave up after 0\.5 s\. .*",
                        line), line


def test_shards_share_the_cache_but_not_a_shard(reference, corpus, tmp_path):
    cache = tmp_path / "cache"
    (cache / AUDIO_CACHE_DIR).mkdir(parents=True)
    # While "shard 0/2" runs (this test holds its locks as the run would)...
    with folder_lock(cache, shared=True), folder_lock(cache, name=shard_lock_name((0, 2))):
        runs = {
            "same shard": start(command(cache, corpus, "--regenerate_full_cache", "--shard", "0/2",
                                        "--lock_timeout", "0.3"), tmp_path / "same.log"),
            "other shard": start(command(cache, corpus, "--regenerate_full_cache", "--shard", "1/2",
                                         "--lock_timeout", "30"), tmp_path / "other.log"),
            "whole cache": start(command(cache, corpus, "--update_cache", "--lock_timeout", "0.3"),
                                 tmp_path / "whole.log"),
            "inputs": start(command(cache, None, "--generate_training_inputs", "--lock_timeout", "0.3"),
                            tmp_path / "inputs.log"),
        }
        codes = {name: finish(process) for name, process in runs.items()}
    assert codes == {"same shard": 2, "other shard": 0, "whole cache": 2, "inputs": 2}
    assert "waiting" not in (tmp_path / "other.log").read_text()  # different shards never wait
    assert shard_lock_name((0, 2)) in one_error_line((tmp_path / "same.log").read_text())
    for name in ("whole", "inputs"):
        assert "gave up after 0.3 s" in one_error_line((tmp_path / f"{name}.log").read_text())

    # Both shards at once, for real: no waiting, and together the whole cache.
    both = [start(command(cache, corpus, "--regenerate_full_cache", "--shard", s), tmp_path / f"s{i}.log")
            for i, s in enumerate(("0/2", "1/2"))]
    assert [finish(p) for p in both] == [0, 0]
    assert not any("waiting" in (tmp_path / f"s{i}.log").read_text() for i in range(2))
    cached = snapshot(cache)
    for name, data in snapshot(reference).items():
        if name.startswith(AUDIO_CACHE_DIR):
            assert cached.pop(name) == data, name
    assert not [n for n in cached if n.startswith(AUDIO_CACHE_DIR)]
    assert leftovers(cache) == []


# --- disk full, read-only -------------------------------------------------------------------------

def _call(capsys, *argv) -> tuple[int, str, str]:
    code = preprocess.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _fail_writes(monkeypatch, error: OSError, suffix: str, after: int) -> list[Path]:
    """Make the (after+1)-th atomic write of a *suffix file fail midway with `error`."""
    real = io_utils.atomic_write
    written: list[Path] = []

    def atomic_write(path, write, durable=True):
        if Path(path).name.endswith(suffix):
            if len(written) >= after:
                def half_then_fail(handle):
                    handle.write(b"\x80\x05half a pickle")
                    raise error
                return real(path, half_then_fail, durable)
            written.append(Path(path))
        return real(path, write, durable)

    monkeypatch.setattr(io_utils, "atomic_write", atomic_write)
    return written


DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_in_the_audio_cache_stops_cleanly_and_resumes(tiny_librispeech, tmp_path, capsys, monkeypatch):
    cache, fresh = tmp_path / "cache", tmp_path / "fresh"
    written = _fail_writes(monkeypatch, DISK_FULL, ".pkl", after=4)

    regenerate = ["--regenerate_full_cache", "--audio_dir", tiny_librispeech]
    code, _, err = _call(capsys, *regenerate, "--cache_output_dir", cache)

    assert code == 2
    line = one_error_line(err)
    assert re.fullmatch(rf"error: {re.escape(str(cache / AUDIO_CACHE_DIR))}/[\w-]+\.pkl: cannot write the audio "
                        rf"cache \(No space left on device\)", line), line
    assert sorted(cache.glob(f"{AUDIO_CACHE_DIR}/*.pkl")) == sorted(written)  # the 4 written files stay...
    assert_present_pickles_load(cache)  # ...complete
    assert not list(cache.rglob("*.tmp")) and (cache / AUDIO_CACHE_DIR / REGENERATING_MARKER).exists()
    monkeypatch.undo()  # space freed: the same command resumes
    code, out, _ = _call(capsys, *regenerate, "--cache_output_dir", cache)
    assert code == 0 and "5 files cached, 4 skipped" in out
    assert _call(capsys, *regenerate, "--cache_output_dir", fresh)[0] == 0
    assert_same_as_reference(cache, fresh, "resumed after disk full")
    assert leftovers(cache) == []


def test_disk_full_in_training_inputs_keeps_the_previous_inputs(tiny_librispeech, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    regenerate = ["--regenerate_full_cache", "--audio_dir", tiny_librispeech, "--cache_output_dir", cache]
    assert _call(capsys, *regenerate, "--generate_training_inputs")[0] == 0
    before = snapshot(cache)
    assert _call(capsys, *regenerate)[0] == 0  # the cache again: new modification times
    _fail_writes(monkeypatch, DISK_FULL, ".pkl", after=1)  # new cache times: every speaker is rebuilt

    code, _, err = _call(capsys, "--generate_training_inputs", "--cache_output_dir", cache)

    assert code == 2
    assert re.fullmatch(r"error: .*: cannot write training inputs \(No space left on device\)", one_error_line(err))
    assert snapshot(cache) == before  # the inputs of the earlier run are intact
    assert not list(cache.rglob("*.tmp"))
    monkeypatch.undo()
    code, out, _ = _call(capsys, "--generate_training_inputs", "--cache_output_dir", cache)
    assert code == 0 and "up to date" in out and snapshot(cache) == before


def _read_only(monkeypatch, folder: Path) -> None:
    """What a read-only folder does to a non-root writer: renaming into it fails."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).startswith(str(folder)):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_read_only_cache_is_one_line_and_changes_nothing(tiny_librispeech, samples_dir, tmp_path, capsys,
                                                         monkeypatch):
    cache = tmp_path / "cache"
    assert _call(capsys, "--regenerate_full_cache", "--generate_training_inputs", "--audio_dir", tiny_librispeech,
                 "--cache_output_dir", cache)[0] == 0
    before = snapshot(cache)
    files_before = sorted(p for p in cache.rglob("*") if p.is_file())
    _read_only(monkeypatch, cache)

    code, _, err = _call(capsys, "--update_cache", "--audio_dir", samples_dir,
                         "--cache_output_dir", cache)
    assert code == 2
    assert re.fullmatch(r"error: .*PhilippeRemy_001\.pkl: cannot write the audio cache \(Permission denied\)",
                        one_error_line(err))

    (cache / "inputs" / "19.pkl.sig").write_text("stale\n")  # force a rebuild of speaker 19
    code, _, err = _call(capsys, "--generate_training_inputs", "--cache_output_dir", cache)
    assert code == 2 and "cannot write training inputs (Permission denied)" in one_error_line(err)

    assert snapshot(cache) == before
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == files_before  # no temp or index files left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into 0o555 folders; covered by the patched os.replace")
def test_really_read_only_cache_folder(tiny_librispeech, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert _call(capsys, "--regenerate_full_cache", "--audio_dir", tiny_librispeech,
                 "--cache_output_dir", cache)[0] == 0
    before = snapshot(cache)
    for folder in (cache, *[p for p in cache.rglob("*") if p.is_dir()]):
        folder.chmod(0o555)
    try:
        code, _, err = _call(capsys, "--regenerate_full_cache", "--audio_dir", tiny_librispeech,
                             "--cache_output_dir", cache)
    finally:
        for folder in (cache, *[p for p in cache.rglob("*") if p.is_dir()]):
            folder.chmod(0o755)
    assert code == 2 and "Permission denied" in one_error_line(err)
    assert snapshot(cache) == before
