"""Recordings of any length in bounded memory: streamed decoding and segments.

A recording up to `LONG_RECORDING_S` (60 s) is embedded whole, exactly as
before. A longer one is embedded in segments: the file is decoded in blocks
(libsndfile), mixed to mono and resampled block by block (a soxr stream, the
same HQ filter as for whole files), and cut into `SEGMENT_S` (30 s) segments
starting every `SEGMENT_HOP_S` (20 s), so consecutive segments overlap by 10 s
and the last one ends at the end of the recording (it is 10-30 s long). Each
segment is trimmed, featurised (per-segment CMVN), checked for speech and
embedded like a short file; the recording's embedding is the mean of the
segment embeddings weighted by their frame counts, renormalised to unit length.
Segments without speech (or with too little voice) are left out of the mean.
Only one segment and one decoded block are held at a time, so peak memory does
not grow with the recording's length (`bench/long_file.py`).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile
import soxr

from deep_speaker.audio import MAX_INPUT_RATE_HZ, MIN_INPUT_RATE_HZ, AudioError, _wav_truncation

LONG_RECORDING_S = 60.0  # longer recordings are embedded in segments
SEGMENT_S = 30.0
SEGMENT_HOP_S = 20.0  # consecutive segments overlap by SEGMENT_S - SEGMENT_HOP_S
_BLOCK_S = 5.0  # seconds decoded at a time


def recording_seconds(path: str | Path) -> float | None:
    """Duration from the file's header, without decoding; None when libsndfile
    cannot read the header (then the file is decoded whole, as before)."""
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OSError):
        return None
    if info.samplerate <= 0 or info.frames <= 0:
        return None
    return info.frames / info.samplerate


def is_long_recording(path: str | Path) -> bool:
    """Whether `path` is embedded in segments (longer than LONG_RECORDING_S)."""
    seconds = recording_seconds(path)
    return seconds is not None and seconds > LONG_RECORDING_S


def stream_audio(path: str | Path, target_rate_hz: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of a file at `target_rate_hz`, decoded and resampled
    block by block; AudioError for the same faults `audio.read_audio` reports."""
    path = Path(path)
    if not path.is_file():
        raise AudioError("file not found")
    truncated = _wav_truncation(path)
    if truncated:
        raise AudioError(truncated)
    try:
        handle = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise AudioError(f"not decodable audio ({str(error).strip().splitlines()[0]})") from None
    with handle:
        rate = int(handle.samplerate)
        if not MIN_INPUT_RATE_HZ <= rate <= MAX_INPUT_RATE_HZ:
            raise AudioError(f"sample rate {rate} Hz outside {MIN_INPUT_RATE_HZ}-{MAX_INPUT_RATE_HZ} Hz")
        stream = None if rate == target_rate_hz else soxr.ResampleStream(rate, target_rate_hz, 1, dtype="float32",
                                                                           quality="HQ")
        block_frames = max(1, int(_BLOCK_S * rate))
        for block in _decoded_blocks(handle, block_frames):
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            if not np.all(np.isfinite(mono)):
                raise AudioError("audio holds NaN or infinite samples")
            out = mono if stream is None else stream.resample_chunk(mono)
            if len(out):
                yield np.ascontiguousarray(out, dtype=np.float32)
        if stream is not None:
            tail = stream.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                yield np.ascontiguousarray(tail, dtype=np.float32)


def _decoded_blocks(handle: soundfile.SoundFile, block_frames: int) -> Iterator[np.ndarray]:
    """(frames, channels) float32 blocks; a stream damaged part-way is an AudioError."""
    blocks = handle.blocks(blocksize=block_frames, dtype="float32", always_2d=True)
    while True:
        try:
            block = next(blocks)
        except StopIteration:
            return
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
            raise AudioError(f"not decodable audio after {handle.tell() / handle.samplerate:.1f} s "
                             f"({str(error).strip().splitlines()[0] if str(error).strip() else 'damaged stream'})"
                             ) from None
        yield block


def segments(blocks: Iterable[np.ndarray], sample_rate_hz: int, segment_s: float = SEGMENT_S,
             hop_s: float = SEGMENT_HOP_S) -> Iterator[np.ndarray]:
    """Cut a stream of blocks into overlapping segments (see the module's docstring).

    >>> rate, blocks = 10, [np.arange(25.0), np.arange(25.0, 70.0)]  # 7 s at 10 Hz
    >>> [(int(s[0]), len(s)) for s in segments(blocks, rate, segment_s=3, hop_s=2)]
    [(0, 30), (20, 30), (40, 30)]
    """
    length = int(round(segment_s * sample_rate_hz))
    hop = int(round(hop_s * sample_rate_hz))
    if not 0 < hop <= length:
        raise ValueError(f"segment hop {hop_s} s must lie in (0, {segment_s}] s")
    buffer = np.zeros(0, np.float32)
    emitted = False
    for block in blocks:
        buffer = np.concatenate([buffer, block]) if len(buffer) else block
        while len(buffer) >= length:
            yield buffer[:length]
            emitted = True
            buffer = buffer[hop:]
    # What the last full segment did not cover yet, if anything: the recording's last `length` samples.
    if len(buffer) and (not emitted or len(buffer) > length - hop):
        yield buffer


def waveform_segments(audio: np.ndarray, sample_rate_hz: int) -> Iterator[np.ndarray]:
    """The segments of audio already in memory (views, no copies)."""
    step = int(round(_BLOCK_S * sample_rate_hz))
    return segments((audio[i:i + step] for i in range(0, len(audio), step)), sample_rate_hz)
