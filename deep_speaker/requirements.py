"""What deep-speaker needs installed, declared once.

`setup.py` reads `REQUIREMENTS` and `EXTRAS` from this file (by path, without
importing the package), the set-up scripts check a virtual environment with it
(``python -m deep_speaker.requirements --check test``: one import per
requirement), and `tests/test_requirements.py` checks that every third-party
module the code imports is provided by one of them. Standard library only.

Each entry is a pip requirement with the lowest version the code needs; the
exact versions the suite was last run with are pinned in constraints.txt.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import re
import sys

# The plain install: everything that embeds, compares, identifies and prepares data (the audio
# cache, the training inputs), with ONNX Runtime as the model's runtime and no deep-learning framework.
REQUIREMENTS = (
    "numpy>=1.26",  # pickles of numpy 1.x (numpy.core) and 2.x (numpy._core) both load (io_utils.py)
    "scipy>=1.11",
    "python_speech_features>=0.6",
    "soundfile>=0.12",  # soundfile.LibsndfileError
    "soxr>=0.3.7",
    "tqdm>=4.60",
    "onnxruntime>=1.19",  # the first built for numpy 2 as well as 1.x; runs the shipped opset-17 model
)

# Optional parts (deep_speaker.extras names the one to install when a command needs it).
AUDIO = (
    "librosa>=0.10",  # only to decode formats libsndfile cannot (some mp3, m4a, aac)
)
EVAL = (
    "scikit-learn>=1.3",  # ROC and DET points of evaluate.py, t-SNE/PCA of its embedding plot
    "matplotlib>=3.7",  # evaluate.py's and training's plots
    # evaluate.py --diarization: DER (missed, false alarm, confusion, with and without overlap) and JER with a
    # collar; 3.2 is the oldest checked against deep_speaker/diarization_metrics.py (same figures as 4.2)
    "pyannote.metrics>=3.2",
)
TRAIN = (
    "tensorflow>=2.16",  # the first TensorFlow built on Keras 3
    "tensorboard>=2.16",  # tf.summary's writers (training's tensorboard/ logs): TensorFlow 2.21 no longer installs it
    "keras>=3.8",  # Model.export(..., input_signature=...) (export.py) first shipped in Keras 3.8
    "onnx>=1.16",  # export_model.py --format onnx: Keras's ONNX export writes through it
    "tf2onnx>=1.17",  # the converter Keras's ONNX export calls; 1.16 pins a protobuf TensorFlow 2.21 refuses
) + AUDIO + EVAL
SERVE = (  # the speaker service (deep-speaker-serve, deep_speaker.service): runs on the plain install plus these
    "fastapi>=0.100",  # the first FastAPI on Pydantic 2; the OpenAPI document is generated from the routes
    "starlette>=0.27",  # FastAPI's ASGI toolkit, imported for its HTTPException (what FastAPI 0.100 runs on)
    "uvicorn>=0.22",  # the ASGI server; 0.22 added timeout_graceful_shutdown, which bounds SIGTERM's wait
    "wsproto>=1.2",  # uvicorn's WebSocket protocol (live diarization, /v1/diarize/stream); without one it refuses them
    "python-multipart>=0.0.13",  # multipart uploads (file, files); 0.0.13 installs the python_multipart module
    "sqlalchemy>=2.0",  # the enrolment store; 2.0 brought the postgresql+psycopg (psycopg 3) dialect
    "psycopg[binary]>=3.1",  # PostgreSQL URLs through SQLAlchemy's psycopg dialect; [binary] ships libpq
)
EXTRAS = {
    "audio": AUDIO,
    "eval": EVAL,
    "train": TRAIN,  # training, export, --runtime keras, and everything the other extras add
    "serve": SERVE,
    # httpx: the client of FastAPI's TestClient, which the service's tests drive it with
    # pytest-xdist: the test processes of scripts/run_tests.sh (-n auto)
    # selenium: drives Debian's headless Chromium in the service page's test; 4.6.0 is the oldest that test
    # passes with (4.0 breaks on urllib3 2), and with the driver's path given it runs no Selenium Manager
    "test": TRAIN + SERVE + ("pytest>=7", "hypothesis>=6", "httpx>=0.24", "pytest-xdist>=3.5", "selenium>=4.6"),
}

# The module a distribution is imported as, where the two names differ.
IMPORT_NAMES = {"scikit-learn": "sklearn", "pytest-xdist": "xdist", "pyannote.metrics": "pyannote"}  # a namespace package


def distribution_name(requirement: str) -> str:
    """The distribution a requirement names.

    >>> distribution_name("scikit-learn>=1.3")
    'scikit-learn'
    """
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip()


def import_name(requirement: str) -> str:
    """The top-level module a requirement's distribution is imported as.

    >>> import_name("scikit-learn>=1.3"), import_name("python_speech_features>=0.6")
    ('sklearn', 'python_speech_features')
    """
    name = distribution_name(requirement)
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def requirements_of(extras: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The core requirements plus those of the named extras (and the extras they include)."""
    wanted = list(REQUIREMENTS)
    for extra in extras:
        if extra not in EXTRAS:
            raise ValueError(f"unknown extra {extra!r}; known: {', '.join(sorted(EXTRAS))}")
        for requirement in EXTRAS[extra]:
            if requirement not in wanted:
                wanted.append(requirement)
    return wanted


def missing_requirements(extras: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Each requirement (of the core and `extras`) that this interpreter cannot
    import, with the reason: one import per requirement."""
    missing = []
    for requirement in requirements_of(extras):
        module = import_name(requirement)
        try:
            importlib.import_module(module)
        except Exception as error:  # ImportError, or a broken install failing inside its import
            missing.append(f"{requirement} (import {module}: {type(error).__name__}: {error})")
    return missing


def _without_stderr(function, *args):
    """function(*args) with file descriptor 2 sent to /dev/null: TensorFlow's C++ start-up lines
    come before any setting can silence them, and a failed import's reason is in the result anyway."""
    import os

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        return function(*args)
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Check that this Python can import every requirement of deep-speaker "
                                            "(the core and the named extras); exit 1 naming what is missing.")
    p.add_argument("--check", nargs="*", default=[], metavar="EXTRA", help="extras to check besides the core")
    args = p.parse_args(argv)
    missing = _without_stderr(missing_requirements, args.check)
    for line in missing:
        print(f"missing: {line}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
