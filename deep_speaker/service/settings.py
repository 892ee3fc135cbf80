"""The service's limits: one dataclass with safe defaults, each a command-line flag.

>>> ServiceSettings().capacity == ServiceSettings().workers + ServiceSettings().queue_size
True
>>> ServiceSettings(max_upload_bytes=0)
Traceback (most recent call last):
...
ValueError: max_upload_bytes must be at least 1, got 0
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

# A request body (all its files together) of at most 16 MiB: 8 minutes of 16 kHz 16-bit mono WAV,
# a minute and a half of 48 kHz stereo; compressed formats are held to the duration limit instead.
DEFAULT_MAX_UPLOAD_BYTES = 16 * 1024 * 1024
# Seconds of audio per recording: two minutes embed in 0.5-1 s on one core (six 30 s segments);
# an enrolment or a verification needs far less (a few seconds of speech each).
DEFAULT_MAX_AUDIO_SECONDS = 120.0
DEFAULT_MAX_FILES = 20  # recordings in one enrol request
DEFAULT_REQUESTS_PER_MINUTE = 120  # per API key, in this server process
DEFAULT_QUEUE_SIZE = 8  # requests that wait for a worker beyond the ones running; more get 503
DEFAULT_MAX_TOP_K = 100  # most matches identify returns
DEFAULT_MAX_STREAMS = 2  # live diarization streams at once (each takes about a hundredth of a core)
DEFAULT_MAX_STREAM_SECONDS = 4 * 3600.0  # audio per live stream


def default_model_workers() -> int:
    """Model worker processes by default: one per CPU this process may run on, at most 4
    (each embeds on one core and holds the model once, about 100 MB)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus))


@dataclass(frozen=True)
class ServiceSettings:
    """Limits of one server process.

    max_upload_bytes: the largest request body (every file of the request together), 413 above.
    max_audio_seconds: the longest recording (from its header, or once decoded), 413 above.
    max_files: the most recordings one enrol request may carry, 413 above.
    requests_per_minute: calls per API key and minute (a token bucket refilled evenly), 429 above.
    workers: model worker processes; each loads the model once and embeds one request at a time.
    queue_size: requests admitted beyond those the workers run; a request that finds the
      workers busy and the queue full gets 503 with Retry-After before its upload is read.
    max_top_k: the most matches `identify` returns.
    keep_audio: store each enrolment's uploaded recording in the database (off: only embeddings).
    max_streams: live diarization streams (/v1/diarize/stream) at once; more are refused as busy.
    max_stream_seconds: the most audio one live stream may send.
    """

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS
    max_files: int = DEFAULT_MAX_FILES
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE
    workers: int = 0  # 0: default_model_workers()
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_top_k: int = DEFAULT_MAX_TOP_K
    keep_audio: bool = False
    max_streams: int = DEFAULT_MAX_STREAMS
    max_stream_seconds: float = DEFAULT_MAX_STREAM_SECONDS

    def __post_init__(self):
        if self.workers == 0:
            object.__setattr__(self, "workers", default_model_workers())
        for name, low in (("max_upload_bytes", 1), ("max_files", 1), ("requests_per_minute", 1), ("workers", 1),
                          ("queue_size", 0), ("max_top_k", 1), ("max_streams", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be at least {low}, got {value!r}")
        for name in ("max_audio_seconds", "max_stream_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be greater than 0, got {getattr(self, name)!r}")

    @property
    def capacity(self) -> int:
        """Model requests admitted at once: those running plus those queued."""
        return self.workers + self.queue_size

    def describe(self) -> dict:
        """The settings as plain values (for /readyz and the start-up line)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}
