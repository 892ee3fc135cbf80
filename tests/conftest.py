"""Fixtures shared by the test suite.

- `repo_root`: the repository root.
- `shared_data`: the read-only real-speech folder ``../shared/data`` (tests skip when absent).
- `synth_audio`: synthetic signals (tone_in_silence, sine, silence, clicks, noise) as float32 arrays.
- `write_wav`: write an array or a named synthetic signal to .wav/.flac/.ogg with soundfile.
- `tiny_librispeech`: a LibriSpeech-layout copy of 3 real speakers x 3 short utterances.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Three short utterances (2-4 s, 16 kHz) of each of the LibriSpeech speakers
# with many utterances in ../shared/data/librispeech.
TINY_LIBRISPEECH_FILES = {
    "19": ("19/198/19-198-0000.flac", "19/198/19-198-0008.flac", "19/198/19-198-0037.flac"),
    "26": ("26/495/26-495-0019.flac", "26/495/26-495-0020.flac", "26/496/26-496-0026.flac"),
    "27": ("27/124992/27-124992-0026.flac", "27/124992/27-124992-0062.flac", "27/124992/27-124992-0073.flac"),
}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (read-only real speech); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real speech data not found at {SHARED_DATA}")
    return SHARED_DATA


def synthesize(kind: str, sample_rate: int = 16000, seconds: float = 1.0, *, frequency: float = 440.0,
               amplitude: float = 0.5, lead_s: float = 0.5, tail_s: float = 0.5, noise_db: float | None = None,
               clicks: int = 5, seed: int = 0) -> np.ndarray:
    """A float32 mono test signal.

    kind: "sine" (`seconds` of a tone), "tone_in_silence" (`lead_s` of silence,
    `seconds` of tone, `tail_s` of silence: the tone spans samples
    [round(lead_s*rate), round(lead_s*rate) + round(seconds*rate))), "silence"
    (all zeros), "clicks" (`clicks` single full-scale samples in silence),
    "noise" (white noise of RMS `amplitude`). `noise_db` adds white noise that
    many dB below `amplitude` under any kind.
    """
    rng = np.random.default_rng(seed)
    count = int(round(seconds * sample_rate))
    if kind == "sine":
        signal = amplitude * np.sin(2 * np.pi * frequency * np.arange(count) / sample_rate)
    elif kind == "tone_in_silence":
        lead, tail = int(round(lead_s * sample_rate)), int(round(tail_s * sample_rate))
        tone = amplitude * np.sin(2 * np.pi * frequency * np.arange(count) / sample_rate + 0.3)
        signal = np.concatenate([np.zeros(lead), tone, np.zeros(tail)])
    elif kind == "silence":
        signal = np.zeros(count)
    elif kind == "clicks":
        signal = np.zeros(count)
        signal[np.linspace(count // (clicks + 1), count - count // (clicks + 1), clicks).astype(int)] = 1.0
    elif kind == "noise":
        signal = amplitude * rng.standard_normal(count)
    else:
        raise ValueError(f"unknown synthetic signal {kind!r}")
    if noise_db is not None:
        signal = signal + amplitude * 10 ** (-noise_db / 20) * rng.standard_normal(len(signal))
    return signal.astype(np.float32)


def write_audio_file(path: str | Path, audio: np.ndarray | str = "tone_in_silence", sample_rate: int = 16000,
                     subtype: str | None = None, **synth_options) -> Path:
    """Write `audio` (an array, (n,) or (n, channels), or a `synthesize` kind)
    to `path`; the format follows the suffix (.wav, .flac, .ogg). Returns the path."""
    path = Path(path)
    if isinstance(audio, str):
        audio = synthesize(audio, sample_rate, **synth_options)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.asarray(audio), sample_rate, subtype=subtype)
    return path


@pytest.fixture
def synth_audio():
    """The `synthesize(kind, sample_rate, seconds, ...)` function (see its docstring)."""
    return synthesize


@pytest.fixture
def write_wav():
    """The `write_audio_file(path, audio_or_kind, sample_rate, subtype, **synth_options)` function."""
    return write_audio_file


@pytest.fixture
def tiny_librispeech(tmp_path, shared_data) -> Path:
    """``tmp_path/LibriSpeech`` holding ``train-clean-100/<spk>/<chapter>/*.flac``:
    3 real utterances of each of speakers 19, 26 and 27 (about 25 s of speech in
    all), copied so a test may add, break or delete files. Pass it as --audio_dir."""
    source = shared_data / "librispeech" / "train-clean-100"
    root = tmp_path / "LibriSpeech"
    for files in TINY_LIBRISPEECH_FILES.values():
        for relative in files:
            if not (source / relative).is_file():
                pytest.skip(f"{source / relative} not found")
            target = root / "train-clean-100" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, target)
    return root
