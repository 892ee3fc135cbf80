"""deep-speaker: speaker embeddings (Deep Speaker, Baidu 2017) in TensorFlow/Keras 3.

Start with ``from deep_speaker import SpeakerEncoder`` (README, "Python API"; docs/scoring.md). The API lives in `deep_speaker.encoder`; it is imported on first use, so that
`import deep_speaker` (and every command's --help) does not load TensorFlow.
"""
from __future__ import annotations

_LAZY = {"SpeakerEncoder": "deep_speaker.encoder", "NoSpeechError": "deep_speaker.encoder",
         "Enrolment": "deep_speaker.identification"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deep_speaker' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
