"""Model work in a bounded pool of worker processes.

Each worker is a process of its own (spawned, not forked) that loads the model
once, in ONNX Runtime for a model with its export (`SpeakerEncoder(runtime="auto")`),
and then embeds one request at a time: decode, duration check, speech check,
features, model, and for `verify` the score (for `diarize`: who spoke when). The
event loop only hands paths to the pool and awaits the answer, so it never blocks
on model work, and a decoder that crashes takes a worker down, not the server (the
pool is started again and that request gets 503).

Admission is bounded: at most `workers + queue_size` requests hold a ticket at once
(those running and those waiting). A request that finds none left is refused at
once with `PoolFull`, which the API answers with 503 and a Retry-After estimated
from the recent job times, before its upload is read: under overload latency
stays bounded instead of growing with an unbounded queue.

Workers ignore SIGINT and SIGTERM: the server shuts them down itself once the
requests in flight have finished (graceful shutdown, see `app.py`).
"""
from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class PoolFull(Exception):
    """Every worker is busy and the queue is full."""

    def __init__(self, retry_after: int):
        super().__init__(retry_after)
        self.retry_after = retry_after


class WorkerLost(Exception):
    """A worker process died during the job (it was restarted)."""


class JobError(Exception):
    """An expected failure of a job, with the HTTP status and error code it answers.
    Raised in a worker and pickled back (hence plain args)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(status, code, message)

    @property
    def status(self) -> int:
        return self.args[0]

    @property
    def code(self) -> str:
        return self.args[1]

    @property
    def message(self) -> str:
        return self.args[2]

    def __str__(self) -> str:
        return self.message


# --- in the worker processes ------------------------------------------------------------------------

_ENCODER = None
_INIT_ERROR: str | None = None


def _init_worker(model_path: str, runtime: str) -> None:
    """Load the model once, when the worker starts; remember a failure as one line."""
    global _ENCODER, _INIT_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM reach the server, which stops us cleanly
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        from deep_speaker.encoder import SpeakerEncoder

        _ENCODER = SpeakerEncoder(model_path, runtime=runtime, workers=1)
    except Exception as error:  # reported by every job, and by the server's start-up as one line
        _INIT_ERROR = " ".join(str(error).split()) or type(error).__name__


def _encoder():
    if _ENCODER is None:
        raise JobError(503, "model_unavailable", f"the model could not be loaded: {_INIT_ERROR}")
    return _ENCODER


def describe_job() -> dict[str, Any]:
    """What the workers run: the model's identity and settings, runtime, thresholds."""
    from deep_speaker.identification import enrolment_settings

    encoder = _encoder()
    return {"sha256": encoder.model_identity["sha256"], "path": encoder.model_identity["path"],
            "settings": enrolment_settings(encoder.config), "runtime": encoder.runtime,
            "embedding_dim": encoder.embedding_dim, "score_kind": encoder.score_kind,
            "score_threshold": encoder.score_threshold, "threshold": encoder.threshold,
            "line": encoder.resolved.line(encoder.runtime)}


def _read_upload(path: str, label: str, max_seconds: float) -> tuple[np.ndarray, int]:
    """One upload's samples and rate: 413 over the duration limit, 400 when it cannot be
    decoded (with the reason the commands give)."""
    from deep_speaker.audio import AudioError, read_audio
    from deep_speaker.long_audio import recording_seconds

    def too_long(seconds: float) -> JobError:
        return JobError(413, "audio_too_long", f"{label}: {seconds:.1f} s of audio; at most {max_seconds:g} s per "
                                               f"recording")

    seconds = recording_seconds(path)  # from the header, before decoding anything
    if seconds is not None and seconds > max_seconds:
        raise too_long(seconds)
    try:
        samples, rate = read_audio(path)
    except (AudioError, OSError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise JobError(400, "undecodable_audio", f"{label}: {reason.replace(path, 'the upload')}") from None
    if len(samples) > max_seconds * rate:  # formats whose header gives no length (decoded by librosa)
        raise too_long(len(samples) / rate)
    return samples, rate


def _embed_upload(encoder, path: str, label: str, max_seconds: float) -> np.ndarray:
    """One upload's embedding: 413 over the duration limit, 400 when it cannot be
    decoded (the reason the commands give), 422 when it holds no usable speech."""
    from deep_speaker.audio import AudioError
    from deep_speaker.encoder import NoSpeechError
    from deep_speaker.scoring import ScoringError

    samples, rate = _read_upload(path, label, max_seconds)
    try:
        return encoder.embed_waveform(samples, rate)
    except NoSpeechError as error:
        raise JobError(422, "no_speech", f"{label}: {_without_prefix(str(error))}") from None
    except (AudioError, ScoringError) as error:  # decoded, but too little voice to embed
        raise JobError(422, "too_little_speech", f"{label}: {_without_prefix(str(error))}") from None


def _without_prefix(message: str) -> str:
    return message[len("waveform: "):] if message.startswith("waveform: ") else message


def embed_job(uploads: list[tuple[str, str]], max_seconds: float) -> np.ndarray:
    """Embeddings (len(uploads), dim) of uploads given as (temp file, label); all or an error."""
    encoder = _encoder()
    return np.stack([_embed_upload(encoder, path, label, max_seconds) for path, label in uploads])


def verify_job(first: tuple[str, str], second: tuple[str, str] | np.ndarray, max_seconds: float,
               threshold: float | None) -> dict[str, Any]:
    """Verification of an upload against another upload or an enrolled speaker's mean
    (`SpeakerEncoder.verify`: AS-norm where the model ships a cohort)."""
    encoder = _encoder()
    a = _embed_upload(encoder, *first, max_seconds)
    b = second if isinstance(second, np.ndarray) else _embed_upload(encoder, *second, max_seconds)
    if threshold is None and encoder.score_threshold is None:
        raise JobError(400, "no_threshold", f"the model stores no {encoder.score_kind} threshold; send threshold=<score>")
    decision = encoder.verify(a, b, threshold)
    return {"score": float(decision.score if decision.score is not None else decision.similarity),
            "score_kind": decision.score_kind, "threshold": decision.threshold,
            "same_speaker": bool(decision.same_speaker), "similarity": float(decision.similarity)}


# The enrolled speakers a worker names diarized speakers with, built once per database generation:
# (generation, Enrolment). The server sends the means only when a worker lacks that generation.
_NAMING: tuple[int, Any] | None = None
NEEDS_MEANS = "needs-means"  # diarize_job's answer when it lacks the generation asked for: send the means


def diarize_job(upload: tuple[str, str], max_seconds: float, counts: dict[str, int | None],
                generation: int | None, means: tuple[list[str], np.ndarray] | None = None) -> dict[str, Any] | str:
    """Who spoke when in one upload (`SpeakerEncoder.diarize`), as a dict (`Diarization.to_dict`).
    generation: name the clusters that match an enrolled speaker of the database at that
    generation (None: number them all); the worker keeps the enrolment it built for the last
    generation, and answers NEEDS_MEANS when it has another one and `means` (ids, unit means)
    is not sent. No speech is not an error: empty segments, and the reason."""
    global _NAMING
    from deep_speaker.audio import AudioError
    from deep_speaker.errors import InputError
    from deep_speaker.identification import Enrolment, enrolment_settings

    encoder = _encoder()
    enrolment = None
    if generation is not None:
        if means is not None:
            ids, matrix = means
            _NAMING = (generation, Enrolment(list(ids), np.asarray(matrix, np.float32), [0] * len(ids),
                                             dict(encoder.model_identity), enrolment_settings(encoder.config)))
        if _NAMING is None or _NAMING[0] != generation:
            return NEEDS_MEANS
        enrolment = _NAMING[1]
    samples, rate = _read_upload(*upload, max_seconds)
    try:
        diarization = encoder.diarize(samples, sample_rate=rate, enrolment=enrolment, **counts)
    except AudioError as error:  # decoded, but not usable (a sample rate out of range)
        raise JobError(400, "undecodable_audio", f"{upload[1]}: {_without_prefix(str(error))}") from None
    except InputError as error:  # speaker counts that cannot be met
        raise JobError(400, "bad_request", str(error)) from None
    return diarization.to_dict()


def sleep_job(seconds: float) -> float:
    """Occupies a worker (tests, and measuring the queue)."""
    time.sleep(seconds)
    return seconds


# --- in the server ----------------------------------------------------------------------------------

class Ticket:
    """A place in the pool, held from admission until the response is ready."""

    def __init__(self, pool: "ModelPool"):
        self._pool = pool
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._pool._release()

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class ModelPool:
    """`workers` model processes and room for `queue_size` more waiting requests."""

    def __init__(self, model_path: str, runtime: str = "auto", workers: int = 1, queue_size: int = 8):
        self.model_path, self.runtime = str(model_path), runtime
        self.workers, self.capacity = int(workers), int(workers) + int(queue_size)
        self._lock = threading.Lock()
        self._admitted = 0
        self._mean_job_s = 1.0  # moving average of job times, for Retry-After
        self._executor = self._new_executor()
        self.description: dict[str, Any] | None = None

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.model_path, self.runtime))

    def start(self, timeout: float = 300.0) -> dict[str, Any]:
        """Start every worker (each loads the model) and return what they run; a model
        that cannot be loaded raises JobError with the reason, on one line."""
        futures = [self._executor.submit(describe_job) for _ in range(self.workers)]
        try:
            descriptions = [future.result(timeout) for future in futures]
        except BrokenProcessPool:
            raise JobError(503, "model_unavailable", "a model worker died while loading the model") from None
        self.description = descriptions[0]
        return self.description

    # --- admission --------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet answered (running or waiting)."""
        return self._admitted

    def retry_after(self) -> int:
        """Seconds after which a refused request may find room: the waiting work spread
        over the workers, at the recent mean job time (1 to 60)."""
        waiting = max(0, self._admitted - self.workers) + 1
        return int(min(60, max(1, math.ceil(waiting * self._mean_job_s / self.workers))))

    def admit(self) -> Ticket:
        """A ticket for one request, or PoolFull when `capacity` requests already hold one."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise PoolFull(self.retry_after())
            self._admitted += 1
        return Ticket(self)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    # --- running jobs -----------------------------------------------------------------------------

    def submit(self, function, *args) -> Future:
        """Run a module-level function in a worker (admission is the caller's: `admit`)."""
        return self._executor.submit(function, *args)

    async def run(self, function, *args) -> Any:
        """Await a job without blocking the event loop; WorkerLost when a worker died under it."""
        started = time.monotonic()
        executor = self._executor
        try:
            result = await asyncio.wrap_future(executor.submit(function, *args))
        except BrokenProcessPool:
            self._restart(executor)
            raise WorkerLost("a model worker stopped during this request and was restarted; send it again") from None
        self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * (time.monotonic() - started)
        return result

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                log.error("a model worker died; starting the pool again")
                self._executor = self._new_executor()
                broken.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers, once the jobs they hold have finished (wait=True)."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
