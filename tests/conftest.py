"""Fixtures shared by the test suite.

- `repo_root`: the repository root.
- `shared_data`: the read-only real-speech folder ``../shared/data``: a test that needs it skips
  when it is absent, and fails instead with CI=true (so CI cannot pass by skipping).
- `vctk_corpus`: VCTK 0.80 layout of 14 real speakers (34 files): ``../shared/data/vctk-mini``, else
  the same recordings vendored in ``deep-speaker-data/demo/`` (FLAC), written out as the same WAVs.
- `samples_dir`: the seed's extra speaker ``samples/PhilippeRemy/``, from either place.
- `synth_audio`: synthetic signals (tone_in_silence, sine, silence, clicks, noise) as float32 arrays.
- `write_wav`: write an array or a named synthetic signal to .wav/.flac/.ogg with soundfile.
- `tiny_librispeech`: a LibriSpeech-layout copy of 3 real speakers x 3 short utterances.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from deep_speaker.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data; DEEP_SPEAKER_SHARED_DATA=<folder> points elsewhere (e.g. at a missing folder, to check
# what the suite does without it: demo fallbacks pass, the rest skip, or fail under CI=true).
SHARED_DATA = Path(os.environ.get("DEEP_SPEAKER_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
DEMO_DATA = REPO_ROOT / "deep-speaker-data" / "demo"  # vendored: always there


def running_in_ci() -> bool:
    """CI=true (or 1/yes): missing real speech is a failure, not a reason to skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def need_real_speech(reason: str) -> None:
    """Skip the current test for lack of real speech, or fail it under CI."""
    if running_in_ci():
        pytest.fail(f"{reason} (CI=true: real speech must be there, see tests/conftest.py)", pytrace=False)
    pytest.skip(reason)

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
    """``../shared/data`` (read-only real speech); skips the test when it is absent (fails under CI)."""
    if not SHARED_DATA.is_dir():
        need_real_speech(f"real speech data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def talkers(shared_data) -> dict[str, list[Path]]:
    """The utterances of held-out LibriSpeech speakers 19, 26 and 27, who have many
    (scripts/pretrained_heldout.txt): what the diarization tests build conversations of."""
    root = shared_data / "librispeech" / "train-clean-100"
    found = {s: sorted((root / s).rglob("*.flac")) for s in ("19", "26", "27")}
    if any(len(files) < 20 for files in found.values()):
        need_real_speech("the LibriSpeech speakers 19, 26, 27 are not all there")
    return found


@pytest.fixture(scope="session")
def vctk_corpus(tmp_path_factory) -> Path:
    """A VCTK-Corpus folder in the 0.80 layout (``wav48/pNNN/pNNN_MMM.wav``, ``txt/``,
    ``speaker-info.txt``): ../shared/data/vctk-mini when present, else the vendored
    demo's FLAC copies of the same 34 recordings written as 16-bit WAV once per
    session (bit-identical to vctk-mini's files). Read-only: copy before changing."""
    shared = SHARED_DATA / "vctk-mini" / "VCTK-Corpus"
    if shared.is_dir():
        return shared
    source = DEMO_DATA / "VCTK-Corpus"
    target = tmp_path_factory.mktemp("vctk-from-demo") / "VCTK-Corpus"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.flac"))
    for flac in sorted(source.rglob("*.flac")):
        audio, rate = soundfile.read(str(flac), dtype="int16")
        wav = target / flac.relative_to(source).with_suffix(".wav")
        wav.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(wav), audio, rate, subtype="PCM_16")
    return target


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The seed's extra speaker, ``samples/PhilippeRemy/*.wav``: ../shared/data/samples, else the demo's."""
    shared = SHARED_DATA / "samples"
    return shared if shared.is_dir() else DEMO_DATA / "samples"


# The config of `tiny_model`, the random model of tests that need a model's shape, not its quality.
TINY_CONFIG = Config(width=0.125)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """best.keras (+ config.json beside it) of a width-0.125 embedding model with
    random weights (seed 0): for tests of what scoring does with audio, not of
    what a trained model scores."""
    import keras

    from deep_speaker.model import build_embedding_model

    folder = tmp_path_factory.mktemp("tiny-model")
    keras.utils.set_random_seed(0)
    build_embedding_model(TINY_CONFIG).save(folder / "best.keras")
    TINY_CONFIG.save(folder / "config.json")
    return folder / "best.keras"


def free_ports(count: int) -> list[int]:
    """`count` free TCP ports on localhost (for TF_CONFIG clusters of local workers)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


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
                need_real_speech(f"{source / relative} not found")
            target = root / "train-clean-100" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, target)
    return root
