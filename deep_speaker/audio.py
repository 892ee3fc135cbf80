"""Decode, resample and trim audio: the first half of stage 1.

Everything works on whole utterances as numpy arrays (float32, mono).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from deep_speaker.config import Config
from deep_speaker.errors import InputError

MIN_INPUT_RATE_HZ = 8000
MAX_INPUT_RATE_HZ = 192000


class AudioError(InputError):
    """An audio file that cannot become a usable utterance; the message names the reason."""


@dataclass
class TrimmedAudio:
    audio: np.ndarray  # whole utterance, float32 at the target rate
    voice_start: int  # first voiced sample
    voice_end: int  # one past the last voiced sample
    sample_rate_hz: int

    @property
    def audio_voice_only(self) -> np.ndarray:
        return self.audio[self.voice_start:self.voice_end]

    @property
    def left_blank_duration_ms(self) -> float:
        return 1000.0 * self.voice_start / self.sample_rate_hz

    @property
    def right_blank_duration_ms(self) -> float:
        return 1000.0 * (len(self.audio) - self.voice_end) / self.sample_rate_hz


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a file to mono float32 at its own sample rate.

    Raises AudioError for empty, truncated, non-audio or non-finite files.
    """
    path = Path(path)
    if path.is_dir():
        raise AudioError("is a directory, not an audio file")
    if not path.is_file():
        raise AudioError("file not found")
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        samples, rate = _read_with_librosa(path, error)
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)  # mix to mono
    truncated = _wav_truncation(path)
    if truncated:
        raise AudioError(truncated)
    if samples.size == 0:
        raise AudioError("no samples in file")
    if not np.all(np.isfinite(samples)):
        raise AudioError("audio holds NaN or infinite samples")
    if not MIN_INPUT_RATE_HZ <= rate <= MAX_INPUT_RATE_HZ:
        raise AudioError(f"sample rate {rate} Hz outside {MIN_INPUT_RATE_HZ}-{MAX_INPUT_RATE_HZ} Hz")
    return np.ascontiguousarray(samples, dtype=np.float32), int(rate)


def _wav_truncation(path: Path) -> str | None:
    """The reason a RIFF/WAVE file is cut short, or None.

    libsndfile decodes whatever part of a truncated WAV is present without
    complaint, so an interrupted copy would silently become a shorter
    utterance; compare the data chunk's declared size with the bytes present.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(12)
        if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        position = 12
        while position + 8 <= size:
            handle.seek(position)
            chunk_id, chunk_size = handle.read(4), int.from_bytes(handle.read(4), "little")
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):  # streamed WAV: size left unknown
                    return None
                present = size - position - 8
                if chunk_size > present:
                    return (f"truncated file: header declares {chunk_size} bytes of audio data, "
                            f"only {present} present")
                return None
            position += 8 + chunk_size + (chunk_size & 1)
    return None


def _read_with_librosa(path: Path, first_error: Exception) -> tuple[np.ndarray, int]:
    """Fallback decoder (audioread/ffmpeg) for formats libsndfile cannot open, e.g. some mp3."""
    if path.suffix.lower() not in {".mp3", ".m4a", ".aac"}:
        raise AudioError(f"not decodable audio ({_first_line(first_error)})")
    try:
        import librosa
    except ImportError:
        from deep_speaker.extras import install_hint

        raise AudioError(f"not decodable by libsndfile ({_first_line(first_error)}); librosa's decoders may read it: "
                         f"{install_hint('audio')}") from None
    try:
        samples, rate = librosa.load(str(path), sr=None, mono=True, dtype=np.float32)
    except Exception as error:  # audioread raises many unrelated types
        raise AudioError(f"not decodable audio ({_first_line(error)})") from None
    return samples, int(rate)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def resample(samples: np.ndarray, rate_hz: int, target_rate_hz: int) -> np.ndarray:
    """Resample with soxr's high-quality filter (no hand-written resampler)."""
    if rate_hz == target_rate_hz:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, rate_hz, target_rate_hz, quality="HQ").astype(np.float32, copy=False)


def change_speed(audio: np.ndarray, sample_rate_hz: int, factor: float) -> np.ndarray:
    """Play `audio` `factor` times faster (tempo and pitch, like sox `speed`).

    >>> change_speed(np.zeros(8000, np.float32), 8000, 1.25).shape
    (6400,)
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    return resample(audio, int(round(sample_rate_hz * factor)), sample_rate_hz)


def voice_bounds_percentile(audio: np.ndarray, percentile: float) -> tuple[int, int]:
    """The seed's trim: voice spans the first to the last sample louder than
    the given percentile of |x|.

    >>> voice_bounds_percentile(np.array([0, 0, 1, 5, 1, 0], dtype=np.float32), 50)
    (2, 5)
    """
    magnitude = np.abs(audio)
    threshold = np.percentile(magnitude, percentile)
    loud = np.flatnonzero(magnitude > threshold)
    if loud.size == 0:
        return 0, 0
    return int(loud[0]), int(loud[-1]) + 1


def voice_bounds_energy(audio: np.ndarray, sample_rate_hz: int, top_db: float,
                        frame_ms: float = 25.0, hop_ms: float = 10.0) -> tuple[int, int]:
    """Frame-energy trim like `librosa.effects.trim`: voice = frames whose RMS is
    within `top_db` of the loudest frame; bounds are refined to 1 ms.

    >>> tone = np.sin(np.arange(800) * 0.3).astype(np.float32)
    >>> voice_bounds_energy(np.concatenate([np.zeros(1000), tone, np.zeros(1000)]), 8000, 40.0)
    (1000, 1800)
    """
    frame = max(1, int(sample_rate_hz * frame_ms / 1000))
    hop = max(1, int(sample_rate_hz * hop_ms / 1000))
    if len(audio) < frame:
        padded = np.pad(audio, (0, frame - len(audio)))
    else:
        padded = audio
    windows = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop]
    rms = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1))
    peak = rms.max()
    if peak <= 0:
        return 0, 0
    level_db = 20 * np.log10(np.maximum(rms, 1e-12) / peak)
    voiced = np.flatnonzero(level_db > -top_db)
    # A few loud samples lift a whole 25 ms frame above the threshold, so frame
    # positions alone put each edge up to a frame too wide. Refine each edge
    # inside its outermost voiced frame with 1 ms windows judged against the
    # same absolute level: edges land within 1 ms of where the sound starts/stops.
    threshold = float(peak * 10.0 ** (-top_db / 20.0)) ** 2  # mean square
    step = max(1, int(sample_rate_hz / 1000))
    first, last = int(voiced[0] * hop), int(voiced[-1] * hop)
    loud_first = _loud_windows(padded[first:first + frame], step, threshold)
    # The last frame also covers the tail shorter than a hop that no frame starts in.
    last_span = padded[last:] if voiced[-1] == len(rms) - 1 else padded[last:last + frame]
    loud_last = _loud_windows(last_span, step, threshold)
    start = first + (int(loud_first[0]) * step if loud_first.size else 0)
    end = last + ((int(loud_last[-1]) + 1) * step if loud_last.size else frame)
    end = min(len(audio), end)
    return max(0, start), max(end, start)


def _loud_windows(segment: np.ndarray, step: int, threshold: float) -> np.ndarray:
    """Indices of the consecutive `step`-sample windows of `segment` whose mean
    square exceeds `threshold` (a short last window is zero-padded)."""
    padded = np.pad(segment.astype(np.float64), (0, -len(segment) % step))
    mean_square = np.mean(padded.reshape(-1, step) ** 2, axis=1)
    return np.flatnonzero(mean_square > threshold)


def trim_silence(audio: np.ndarray, config: Config) -> tuple[int, int]:
    """Bounds (start, end) of the voiced part, by the configured rule."""
    if config.trim == "percentile":
        return voice_bounds_percentile(audio, config.trim_percentile)
    if config.trim == "energy":
        return voice_bounds_energy(audio, config.sample_rate_hz, config.trim_top_db)
    raise ValueError(f"unknown trim rule {config.trim!r} (choose percentile or energy)")


def load_utterance(path: str | Path, config: Config) -> TrimmedAudio:
    """Decode, resample to the target rate and locate the voice of one file.

    Raises AudioError when the file has no usable speech.
    """
    samples, rate = read_audio(path)
    return trim_utterance(resample(samples, rate, config.sample_rate_hz), config)


def trim_utterance(audio: np.ndarray, config: Config) -> TrimmedAudio:
    """Locate the voice of mono audio already at the target rate (the part of
    `load_utterance` after decoding); AudioError when there is no usable voice.

    >>> trim_utterance(np.zeros(8000, np.float32), Config())
    Traceback (most recent call last):
    ...
    deep_speaker.audio.AudioError: audio is all silent (every sample is zero)
    """
    if not np.any(audio):
        raise AudioError("audio is all silent (every sample is zero)")
    start, end = trim_silence(audio, config)
    voice_ms = 1000.0 * (end - start) / config.sample_rate_hz
    if voice_ms < config.min_voice_ms:
        raise AudioError(f"too little speech: {voice_ms:.0f} ms of voice, at least "
                         f"{config.min_voice_ms:.0f} ms needed")
    return TrimmedAudio(audio=audio, voice_start=start, voice_end=end, sample_rate_hz=config.sample_rate_hz)
