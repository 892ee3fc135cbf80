"""Advisory locks on a cache folder, so two preprocess runs never write it at once.

Two lock files live in the cache folder (never in a folder that a run wipes):

- ``<cache>/.lock``: taken EXCLUSIVE by a whole-cache stage-1 run
  (``--regenerate_full_cache`` / ``--update_cache`` without ``--shard``) and by
  stage 2 (``--generate_training_inputs``); taken SHARED by a ``--shard I/N`` run.
- ``<cache>/.lock.shard-I-of-N``: taken EXCLUSIVE by shard I of N.

Why shards share the folder lock: the N jobs of a cluster job array run
concurrently on one shared cache by design, and each only ever wipes, writes
and cleans up its own shard's files, so they must not wait for each other.
The same shard started twice would wipe and rewrite the same files, hence its
own exclusive lock. A run without ``--shard`` wipes or writes the whole cache,
and stage 2 reads all of it, so each needs the folder to itself: it waits until
every shard has finished, and shards started meanwhile wait for it. A
``preprocess.py`` run doing both stages holds the folder lock across them, so no
other run slips in between (a process's nested requests for a lock it already
holds pass through).

A run that finds a lock taken logs one warning line saying it waits for the
other run, then waits (``timeout=None``, the default) or gives up after ``timeout``
seconds with `LockTimeout` (one clear line from the commands). The locks are
``flock(2)`` locks, which the kernel drops when their process dies, even by
SIGKILL: a killed run never leaves a stale lock behind. The lock files stay
(removing a lock file another process holds would silently break the lock).
On NFS, Linux implements flock with POSIX byte-range locks, which work across
machines (NFSv4, or v3 with lockd); where a file system has no locks at all
the run goes on unlocked after a warning.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_POLL_SECONDS = 0.1
# Locks this process holds, by path: (shared, depth). flock is per open file, so
# a nested request for a lock the process already holds must not lock again
# (it would wait for itself): preprocess holds the folder lock across both stages.
_held: dict[str, list] = {}


class LockTimeout(TimeoutError):
    """Another run held the lock longer than the caller agreed to wait."""


def shard_lock_name(shard: tuple[int, int]) -> str:
    return f"{LOCK_NAME}.shard-{shard[0]}-of-{shard[1]}"


@contextlib.contextmanager
def folder_lock(folder: str | Path, *, name: str = LOCK_NAME, shared: bool = False,
                timeout: float | None = None, purpose: str = "preprocess"):
    """Hold ``flock`` on ``<folder>/<name>`` (shared or exclusive) for the block.

    timeout=None waits as long as it takes, 0 fails at once when the lock is
    taken; waiting is announced by one warning log line.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    key = str(path.resolve())
    if key in _held and (shared or not _held[key][0]):  # already held, strongly enough
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    if key in _held:
        raise RuntimeError(f"{path}: held shared by this process, cannot be taken exclusive inside")
    try:
        fd, writable = os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError:  # another user's lock file in a shared cache: flock needs no write access
        fd, writable = os.open(path, os.O_RDONLY), False
    try:
        if not _acquire(fd, path, shared, timeout):
            yield path  # no locking on this file system
            return
        if writable and not shared:  # say who holds it, for the log line of a run that waits
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({purpose}, "
                          f"started {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        _held[key] = [shared, 1]
        try:
            yield path
        finally:
            del _held[key]
            if writable and not shared:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, shared: bool, timeout: float | None) -> bool:
    """Take the lock; False when the file system cannot lock at all."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    started = time.monotonic()
    announced = False
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            if announced:
                log.info("lock %s acquired after waiting %.1f s", path, time.monotonic() - started)
            return True
        except BlockingIOError:
            pass
        except OSError as error:
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                log.warning("%s: this file system cannot lock (%s); going on without a lock, so do not "
                            "start two runs on this cache at once", path, error.strerror)
                return False
            raise
        waited = time.monotonic() - started
        if not announced:
            limit = "" if timeout is None else f" (at most {timeout:g} s, --lock_timeout)"
            message = (f"waiting for another run on {path.parent} to finish: {_holder(path)} holds "
                       f"{path.name}{limit}")
            log.warning("%s", message)  # a warning: seen even where logging is not set up
            announced = True
        if timeout is not None and waited >= timeout:
            raise LockTimeout(f"{path.parent}: another run is still working on this cache ({_holder(path)} "
                              f"holds {path}); gave up after {timeout:g} s. Wait for it to finish, or rerun "
                              f"with a longer --lock_timeout")
        time.sleep(_POLL_SECONDS if timeout is None else min(_POLL_SECONDS, max(0.0, timeout - waited)))


def _holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "another process (a --shard run, or one whose details are unknown)"


@contextlib.contextmanager
def cache_lock(cache_dir: str | Path, shard: tuple[int, int] | None = None, *, timeout: float | None = None,
               purpose: str = "preprocess"):
    """The locks a run on `cache_dir` needs: the folder lock exclusive without a
    shard; with one, the folder lock shared plus the shard's own lock exclusive."""
    if shard is None:
        with folder_lock(cache_dir, timeout=timeout, purpose=purpose) as path:
            yield path
        return
    started = time.monotonic()
    with folder_lock(cache_dir, shared=True, timeout=timeout, purpose=purpose):
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        with folder_lock(cache_dir, name=shard_lock_name(shard), timeout=left, purpose=purpose) as path:
            yield path
