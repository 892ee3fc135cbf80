"""What one server process holds: the store, the model pool, the key checker, the
rate limits, and the in-memory copy of the enrolled means that `identify` searches.

Identification is an exact search: one float32 matrix product of the query with
every enrolled mean, then the best candidates re-scored in float64 (the arithmetic
of `Enrolment.rank`, so the ranking is identify.py's). Measured on the 2-core
development machine (`python -m deep_speaker.service.server --measure 100000`): with
100,000 enrolled 512-d means, one search takes 24 ms (it reads the whole 195 MiB
matrix: memory-bound) and every query found its own speaker first; reloading the
matrix from SQLite after a change takes 2.0 s. Exact search is the right tool up to
about that size; beyond it, an index (faiss) would be the next step. The copy is reloaded only when
the database's generation counter moved (any enrol, import or delete, by this
server or another process), which costs one indexed read per identify.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deep_speaker.service.keys import KeyChecker, KeyRecord, parse_key
from deep_speaker.service.live import LiveStreams
from deep_speaker.service.pool import ModelPool
from deep_speaker.service.settings import ServiceSettings
from deep_speaker.service.store import UNKNOWN, DatabaseError, MeansSnapshot, ModelStamp, Store

log = logging.getLogger("deep_speaker.service")

_RESCORED = 16  # candidates beyond top_k re-scored in float64, against float32 rounding near ties


class RateLimiter:
    """A token bucket per name: `per_minute` tokens, refilled evenly; in memory.

    >>> limiter = RateLimiter(2)
    >>> limiter.take("k", now=0.0), limiter.take("k", now=0.0), limiter.take("k", now=0.0)
    (0.0, 0.0, 30.0)
    >>> limiter.take("k", now=30.0)
    0.0
    """

    def __init__(self, per_minute: int, names: int = 100_000):
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        self._names = names
        self._lock = threading.Lock()

    def _level(self, name: str, now: float) -> float:
        tokens, then = self._buckets.get(name, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - then) * self.per_minute / 60.0)

    def take(self, name: str, now: float | None = None) -> float:
        """Take a token: 0.0 when allowed, else the seconds until one is there."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens = self._level(name, now)
            if tokens < 1.0:
                self._buckets[name] = (tokens, now)
                return (1.0 - tokens) * 60.0 / self.per_minute
            if len(self._buckets) >= self._names and name not in self._buckets:
                self._buckets.clear()  # bounded memory: forgetting full buckets only ever allows more
            self._buckets[name] = (tokens - 1.0, now)
            return 0.0

    def has_token(self, name: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            return self._level(name, now) >= 1.0


@dataclass(frozen=True)
class Match:
    speaker: str
    score: float


def rank(snapshot: MeansSnapshot, query: np.ndarray, top_k: int) -> list[Match]:
    """The top_k enrolled speakers of one unit query embedding, best first, by cosine
    similarity (ties in enrolment order, as `Enrolment.rank`)."""
    count = len(snapshot.ids)
    if count == 0:
        return []
    k = max(1, min(top_k, count))
    approximate = snapshot.matrix @ np.asarray(query, np.float32)
    wanted = min(count, k + _RESCORED)
    candidates = np.argpartition(-approximate, wanted - 1)[:wanted] if wanted < count else np.arange(count)
    candidates.sort()
    exact = snapshot.matrix[candidates].astype(np.float64) @ np.asarray(query, np.float64)
    order = candidates[np.argsort(-exact, kind="stable")][:k]
    exact_of = dict(zip(candidates.tolist(), exact.tolist()))
    return [Match(snapshot.ids[i], float(exact_of[i])) for i in order.tolist()]


def identification(matches: list[Match], threshold: float | None) -> str:
    """The answer of identify: the best match, or "unknown" below the threshold (or with no speaker)."""
    if not matches or (threshold is not None and matches[0].score < threshold):
        return UNKNOWN
    return matches[0].speaker


class KeyRefused(Exception):
    """A key that may not pass: the HTTP status, error code, one-line message and headers to answer with."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class Service:
    """The store, the pool and the limits of one server process."""

    def __init__(self, store: Store, pool: ModelPool, settings: ServiceSettings, model: dict[str, Any]):
        self.store, self.pool, self.settings, self.model = store, pool, settings, model
        self.stamp = ModelStamp(model["sha256"], model["path"], model["settings"])
        self.keys = KeyChecker(store)
        self.rate = RateLimiter(settings.requests_per_minute)
        self.failed_keys = RateLimiter(10)  # wrong secrets for a key id: past 10 a minute, no scrypt is run
        self._means = MeansSnapshot(-1)
        self._means_lock = threading.Lock()
        self.live = LiveStreams(self, settings.max_streams, settings.max_stream_seconds)

    @classmethod
    def start(cls, database, settings: ServiceSettings | None = None, model: str | Path | None = None,
              checkpoint_dir: str | Path | None = None, runtime: str = "auto") -> "Service":
        """Open the database, start the workers (each loads the model) and check that the
        enrolled speakers were made with this model. Raises DeepSpeakerError (one line)
        or pool.JobError when the model cannot be loaded."""
        from deep_speaker.checkpoints import resolve_model

        settings = settings or ServiceSettings()
        resolved = resolve_model(model, checkpoint_dir)
        store = Store(database)
        pool = ModelPool(str(resolved.path), runtime, settings.workers, settings.queue_size)
        try:
            description = pool.start()
            description["line"] = resolved.line(description["runtime"])
            service = cls(store, pool, settings, description)
            store.check_compatible(service.stamp)
        except BaseException:
            pool.shutdown(wait=False)
            store.close()
            raise
        return service

    def authenticate(self, key: str) -> KeyRecord:
        """The key's record, for a key that is valid and within its rate; else KeyRefused (401, 429, or 503 when
        the database does not answer). Past 10 wrong secrets a minute for a key id, no scrypt is run for it
        (guessing is throttled). Blocking (scrypt, the database): call it in a thread. Every way in (the HTTP
        gate and the live streams' WebSocket) passes here."""
        from sqlalchemy.exc import SQLAlchemyError

        parsed = parse_key(key)
        if parsed is not None and not self.failed_keys.has_token(parsed[0]):
            record = None  # too many wrong secrets for this key id lately
        else:
            try:
                record = self.keys.check(key)
            except (SQLAlchemyError, DatabaseError) as error:
                log.error("database error while checking a key: %s", type(error).__name__)
                raise KeyRefused(503, "database_unavailable", "the database did not answer; retry later",
                                 {"Retry-After": "5"}) from None
            if record is None and parsed is not None:
                self.failed_keys.take(parsed[0])
        if record is None:
            raise KeyRefused(401, "invalid_key", "the API key is not valid (unknown, revoked or mistyped)",
                             {"WWW-Authenticate": "Bearer"})
        wait = self.rate.take(record.id)
        if wait > 0:
            raise KeyRefused(429, "rate_limited", f"over {self.settings.requests_per_minute} requests per minute "
                                                  f"for this key; retry in {math.ceil(wait)} s",
                             {"Retry-After": str(math.ceil(wait))})
        return record

    def close(self) -> None:
        """Stop the workers once their jobs are done, then close the database."""
        self.pool.shutdown(wait=True)
        self.store.close()

    def means(self) -> MeansSnapshot:
        """The enrolled means, reloaded when the database changed since the last call."""
        current = self.store.generation()
        if self._means.generation == current:
            return self._means
        with self._means_lock:
            if self._means.generation != current:
                self._means = self.store.means(self.stamp)
            return self._means

    def identify(self, query: np.ndarray, top_k: int, threshold: float | None) -> dict[str, Any]:
        matches = rank(self.means(), query, top_k)
        return {"speaker": identification(matches, threshold),
                "matches": [{"speaker": m.speaker, "score": round(m.score, 6)} for m in matches],
                "threshold": threshold, "score_kind": "cosine"}


def _measure(count: int = 100_000, dim: int = 512, queries: int = 50) -> None:
    """Time the exact search and the means' reload at `count` speakers (SQLite in a temp folder)."""
    import resource
    import tempfile

    from deep_speaker.identification import Enrolment

    rng = np.random.default_rng(0)
    means = rng.standard_normal((count, dim)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    stamp = ModelStamp("0" * 64, "/model.keras", {"setting": 1})
    with tempfile.TemporaryDirectory() as folder:
        store = Store(f"sqlite:///{folder}/measure.db")
        started = time.perf_counter()
        store.import_enrolment(Enrolment([f"s{i:06d}" for i in range(count)], means, [3] * count,
                                         stamp.identity, stamp.settings), stamp)
        imported = time.perf_counter() - started
        started = time.perf_counter()
        snapshot = store.means(stamp)
        loaded = time.perf_counter() - started
        picks = rng.integers(0, count, queries)
        started = time.perf_counter()
        hits = sum(rank(snapshot, means[i], 5)[0].speaker == snapshot.ids[i] for i in picks)
        search = (time.perf_counter() - started) / queries
        store.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{count} speakers x {dim}: import {imported:.1f} s, load {loaded:.2f} s, search {1000 * search:.1f} ms "
          f"per query ({hits}/{queries} found themselves), matrix {snapshot.matrix.nbytes / 2 ** 20:.0f} MiB, "
          f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Measure identify's exact search over many enrolled speakers.")
    parser.add_argument("--measure", type=int, default=100_000, metavar="SPEAKERS")
    _measure(parser.parse_args().measure)
