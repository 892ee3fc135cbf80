"""Hostile audio through the whole scoring path, property-tested with hypothesis.

Generated files go decode -> resample -> trim -> features -> embedding
(`scoring.Embedder.embed_file`, with a tiny width-0.125 model built once):
lengths from 0 samples to several minutes, silence, DC, clipping and huge
values, NaN/inf samples, 1-8 channels, 8-192 kHz, 8/16/24/32-bit integer and
float WAV/FLAC, truncated headers and data, zero-byte files and non-audio files
named .wav. Each must give a finite unit-length embedding or one clear error
(AudioError/ValueError naming the file and the reason; for the commands one
`error:` line and exit code 2): never a crash, a hang, a NaN or a traceback.
"""
from __future__ import annotations

import contextlib
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY_CONFIG
from deep_speaker import scoring
from deep_speaker.audio import AudioError
from deep_speaker.commands import comp_cos, get_emb

TINY = TINY_CONFIG  # tiny_model's config
SUBTYPES = {"WAV": ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"],
            "FLAC": ["PCM_S8", "PCM_16", "PCM_24"]}
FLOAT_SUBTYPES = {"FLOAT", "DOUBLE"}
COMMON_RATES = [8000, 11025, 16000, 22050, 44100, 48000, 96000, 192000]
MAX_SAMPLES = 1_500_000  # frames x channels of one generated file: keeps each example well under a second
EXAMPLE_SECONDS = 60  # an example running longer than this is a hang


@pytest.fixture(scope="module")
def embedder(tiny_model):
    from deep_speaker.checkpoints import resolve_model

    return scoring.Embedder(resolve_model(checkpoint=tiny_model))


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail (instead of hanging the suite) when the block runs too long."""
    def expire(signum, frame):
        raise TimeoutError(f"hung for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def signal_for(kind: str, frames: int, channels: int, rate: int, amplitude: float, seed: int) -> np.ndarray:
    """(frames, channels) float64 samples of one kind of content."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None] / rate
    if kind == "noise":
        audio = amplitude * rng.standard_normal((frames, channels))
    elif kind == "tone":
        audio = amplitude * np.sin(2 * np.pi * rng.uniform(50, rate / 2) * t + rng.uniform(0, 6, channels))
    elif kind == "periodic":  # 100 Hz at 8 kHz repeats every 10 ms hop: every frame is the same
        audio = amplitude * np.sin(2 * np.pi * 100.0 * t) * np.ones(channels)
    elif kind == "impulses":  # a 100 Hz click train: at 8 kHz every 10 ms frame is identical
        audio = np.zeros((frames, channels))
        audio[40::rate // 100] = amplitude
    elif kind == "zeros":
        audio = np.zeros((frames, channels))
    elif kind == "dc":
        audio = np.full((frames, channels), amplitude * rng.choice([-1.0, 1.0]))
    elif kind == "clipping":  # far beyond full scale, then hard-clipped for the integer formats
        audio = np.clip(20 * amplitude * rng.standard_normal((frames, channels)), -1.0, 1.0)
    elif kind == "huge":  # float formats only keep these: up to 1e30 (and beyond float32 in DOUBLE)
        audio = amplitude * 1e30 * rng.standard_normal((frames, channels))
    elif kind in ("nan", "inf"):
        audio = amplitude * rng.standard_normal((frames, channels))
        if frames:
            spots = rng.integers(0, frames, size=max(1, frames // 1000))
            audio[spots, rng.integers(0, channels)] = np.nan if kind == "nan" else rng.choice([np.inf, -np.inf])
    elif kind == "speechlike":  # noise bursts in silence: passes the trim, and varies frame to frame
        envelope = (np.sin(2 * np.pi * 3 * t) > 0).astype(float)
        audio = amplitude * envelope * rng.standard_normal((frames, channels))
    else:
        raise ValueError(kind)
    return audio


CONTENT = ["noise", "tone", "periodic", "impulses", "zeros", "dc", "clipping", "huge", "nan", "inf", "speechlike"]
DAMAGE = ["none"] * 6 + ["cut_header", "cut_data", "zero_bytes", "garbage", "text", "flip_header"]


@st.composite
def hostile_files(draw):
    container = draw(st.sampled_from(["WAV", "FLAC"]))
    subtype = draw(st.sampled_from(SUBTYPES[container]))
    channels = draw(st.integers(1, 8))
    rate = draw(st.one_of(st.sampled_from(COMMON_RATES), st.integers(8000, 192000)))
    if container == "FLAC" and rate > 65535:
        rate -= rate % 10  # FLAC stores rates above 65535 Hz in units of 10 Hz
    limit = MAX_SAMPLES // channels
    frames = draw(st.one_of(st.just(0), st.integers(1, 2000), st.integers(2000, min(limit, 4 * rate))))
    kind = draw(st.sampled_from(CONTENT))
    amplitude = draw(st.sampled_from([1e-30, 1e-6, 1e-3, 0.1, 0.5, 1.0]))
    damage = draw(st.sampled_from(DAMAGE))
    return dict(container=container, subtype=subtype, channels=channels, rate=rate, frames=frames, kind=kind,
                amplitude=amplitude, damage=damage, seed=draw(st.integers(0, 2 ** 32 - 1)),
                cut=draw(st.floats(0.0, 1.0)))


def write_hostile(folder: Path, spec: dict) -> Path:
    suffix = ".wav" if spec["container"] == "WAV" or spec["damage"] in ("garbage", "text") else ".flac"
    path = folder / f"hostile{suffix}"
    audio = signal_for(spec["kind"], spec["frames"], spec["channels"], spec["rate"], spec["amplitude"],
                       spec["seed"])
    if spec["subtype"] not in FLOAT_SUBTYPES:
        audio = np.nan_to_num(np.clip(audio, -1.0, 1.0))  # what a recorder would store in integers
    soundfile.write(str(path), audio, spec["rate"], subtype=spec["subtype"], format=spec["container"])
    data = path.read_bytes()
    rng = np.random.default_rng(spec["seed"])
    damage = spec["damage"]
    if damage == "cut_header":
        path.write_bytes(data[: int(spec["cut"] * min(len(data), 64))])
    elif damage == "cut_data":
        path.write_bytes(data[: 64 + int(spec["cut"] * max(0, len(data) - 64))])
    elif damage == "zero_bytes":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(rng.integers(0, 256, size=int(spec["cut"] * 5000), dtype=np.uint8).tobytes())
    elif damage == "text":
        path.write_bytes(b"this is a shopping list, not audio\n" * int(1 + spec["cut"] * 100))
    elif damage == "flip_header" and data:
        corrupted = bytearray(data)
        for position in rng.integers(0, min(len(data), 64), size=3):
            corrupted[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(corrupted))
    return path


def embed_or_clear_error(embedder, path: Path) -> str:
    """'ok' for a finite unit embedding, else the clear error message (asserted clear)."""
    try:
        with time_limit(EXAMPLE_SECONDS):
            vector = embedder.embed_file(path)
    except (AudioError, ValueError) as error:  # ScoringError is a ValueError
        message = str(error)
        assert message.startswith(f"{path}: "), message  # names the file...
        reason = message[len(f"{path}: "):]
        assert reason.strip() and "\n" not in message, message  # ...and one line of reason
        assert "nan" not in reason.lower() or "NaN or infinite" in reason, message
        return message
    assert vector.shape == (embedder.embedding_dim,) and vector.dtype == np.float32
    assert np.all(np.isfinite(vector))
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3
    return "ok"


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=hostile_files())
def test_generated_files_embed_or_fail_clearly(embedder, spec):
    with tempfile.TemporaryDirectory() as folder:
        path = write_hostile(Path(folder), spec)
        outcome = embed_or_clear_error(embedder, path)
    if spec["damage"] in ("zero_bytes", "text") or spec["frames"] == 0 or spec["kind"] == "zeros":
        assert outcome != "ok", spec  # nothing to embed in these


# --- named edge cases, so each is checked on every run --------------------------------------------

def _spec(**changes) -> dict:
    base = dict(container="WAV", subtype="PCM_16", channels=1, rate=16000, frames=16000, kind="speechlike",
                amplitude=0.5, damage="none", seed=7, cut=0.5)
    return {**base, **changes}


@pytest.mark.parametrize("spec, expected", [
    (_spec(), "ok"),
    (_spec(frames=0), "no samples in file"),
    (_spec(damage="zero_bytes"), "empty file (0 bytes)"),
    (_spec(damage="text"), "not decodable audio"),
    (_spec(damage="garbage", cut=0.3), "not decodable audio"),
    (_spec(damage="cut_header", cut=0.5), "not decodable audio"),
    (_spec(damage="cut_data", cut=0.5), "truncated file: header declares"),
    (_spec(kind="zeros"), "all silent"),
    (_spec(kind="nan", subtype="FLOAT"), "NaN or infinite"),
    (_spec(kind="inf", subtype="DOUBLE"), "NaN or infinite"),
    (_spec(kind="huge", subtype="DOUBLE", amplitude=1e10), "NaN or infinite"),  # 1e40 overflows float32
    (_spec(kind="huge", subtype="FLOAT", amplitude=1e-3), "ok"),  # 1e27, finite in float32
    (_spec(kind="dc", frames=40000), None),
    (_spec(kind="clipping", subtype="PCM_U8", channels=8, rate=192000, frames=96000), "ok"),
    (_spec(kind="periodic", rate=8000), None),
    (_spec(kind="impulses", rate=8000), None),  # every frame identical: features are rounding noise
    (_spec(frames=40, rate=8000), "too little speech"),
    (_spec(container="FLAC", subtype="PCM_24", channels=6, rate=11025, frames=30000), "ok"),
    (_spec(subtype="PCM_32", channels=3, rate=96000, frames=192000), "ok"),
])
def test_edge_cases(embedder, tmp_path, spec, expected):
    outcome = embed_or_clear_error(embedder, write_hostile(tmp_path, spec))
    if expected == "ok":
        assert outcome == "ok"
    elif expected is not None:
        assert expected in outcome


def test_features_without_signal_are_an_error_not_a_zero_vector(embedder):
    """All-zero normalised features (every frame identical) make an untrained
    model output a zero vector: refused rather than returned as an embedding."""
    with pytest.raises(scoring.ScoringError, match=r"no usable embedding \(norm 0 instead of 1\)"):
        embedder.embed_features([np.zeros((100, TINY.num_fbanks), np.float32)])


def test_minutes_long_files(embedder, tmp_path):
    """Several minutes, mono and multichannel: embedded in bounded time."""
    long_mono = write_hostile(tmp_path, _spec(container="FLAC", frames=4 * 60 * 8000, rate=8000, seed=1))
    assert embed_or_clear_error(embedder, long_mono) == "ok"
    stereo = tmp_path / "stereo"
    stereo.mkdir()
    long_stereo = write_hostile(stereo, _spec(frames=3 * 60 * 16000, rate=16000, channels=2, seed=2))
    assert embed_or_clear_error(embedder, long_stereo) == "ok"


# --- the commands: one line and exit 2 --------------------------------------------------------------

@pytest.mark.parametrize("spec, reason", [
    (_spec(damage="zero_bytes"), "empty file (0 bytes)"),
    (_spec(damage="cut_data", cut=0.2), "truncated file"),
    (_spec(kind="nan", subtype="FLOAT"), "NaN or infinite"),
    (_spec(kind="zeros", channels=4), "all silent"),
    (_spec(damage="text"), "not decodable audio"),
])
def test_comp_cos_on_a_hostile_file_is_one_line(embedder, tmp_path, capsys, spec, reason):
    hostile = write_hostile(tmp_path, spec)
    good_folder = tmp_path / "good"
    good_folder.mkdir()
    good = write_hostile(good_folder, _spec())

    # The "good" file is noise bursts, which the speech check refuses: embedded anyway here.
    code = comp_cos.main(["--checkpoint", str(embedder.resolved.path), "--files", str(good), str(hostile),
                          "--allow_no_speech"])

    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {hostile}: ") and reason in lines[0], err


def test_get_emb_skips_hostile_files_and_embeds_the_rest(embedder, tmp_path, capsys):
    paths = []
    for i, spec in enumerate([_spec(), _spec(damage="garbage"), _spec(frames=0), _spec(kind="inf", subtype="FLOAT"),
                              _spec(container="FLAC", channels=2, rate=48000, frames=48000)]):
        folder = tmp_path / str(i)
        folder.mkdir()
        paths.append(str(write_hostile(folder, spec)))
    output = tmp_path / "emb.npy"

    code = get_emb.main(["--checkpoint", str(embedder.resolved.path), "--get_embeddings", *paths,
                         "--output", str(output), "--allow_no_speech"])  # noise bursts have no speech

    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped ")]
    assert [line.split(":")[0] for line in skipped] == [f"skipped {p}" for p in paths[1:4]]
    embeddings = np.load(output)
    assert embeddings.shape == (2, embedder.embedding_dim) and np.all(np.isfinite(embeddings))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-3)
