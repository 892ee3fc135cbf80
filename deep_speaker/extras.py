"""What an optional part of deep-speaker needs, asked for where it is needed.

A plain install (`pip install deep-speaker`) embeds, compares, identifies and
builds the audio cache and training inputs with ONNX Runtime and no deep-learning
framework. Training, export and `--runtime keras` need the `train` extra
(TensorFlow, Keras, TensorBoard, the ONNX converter); `evaluate.py` needs `eval`
(scikit-learn, matplotlib); decoding the formats libsndfile cannot open needs
`audio` (librosa). The extras are declared in `deep_speaker.requirements`.

`require_extra("train", "training")` raises `MissingExtraError`, one line that
names the extra to install, before any work starts; commands print it and exit 2.
"""
from __future__ import annotations

import importlib.util

from deep_speaker.errors import InputError
from deep_speaker.requirements import EXTRAS, import_name


class MissingExtraError(InputError):
    """An optional part of deep-speaker whose packages are not installed."""


def install_hint(extra: str) -> str:
    """The command that installs `extra`.

    >>> install_hint("train")
    'pip install "deep-speaker[train]"'
    """
    return f'pip install "deep-speaker[{extra}]"'


def missing_modules(extra: str, modules: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """The top-level modules of `extra` (or just `modules`) that this Python cannot find.
    Looks, does not import: asking costs no TensorFlow start-up."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(sorted(EXTRAS))}")
    wanted = modules if modules is not None else [import_name(r) for r in EXTRAS[extra]]
    return [module for module in wanted if not _findable(module)]


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it; a half-imported module without a spec
        return False


def require_extra(extra: str, purpose: str, modules: tuple[str, ...] | list[str] | None = None) -> None:
    """Raise MissingExtraError unless the packages `purpose` needs from `extra` are installed.

    modules: the import names `purpose` needs (default: every package of the extra)."""
    missing = missing_modules(extra, modules)
    if missing:
        raise MissingExtraError(f"{purpose} needs {', '.join(missing)}, which this install lacks (a plain install "
                                f"embeds and scores with ONNX Runtime only): {install_hint(extra)}")
