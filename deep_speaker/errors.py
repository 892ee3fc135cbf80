"""The error types of expected failures, apart from the bugs.

A command prints an expected failure (bad input, a missing or unreadable file,
an unknown speaker, settings that do not match) as one line and exits with code
2. Anything else is a bug and is shown as one: `commands.common.run` writes its
traceback to a file and names it (`--verbose` prints it). Raising the types below
is how the package says "this is the user's situation, not our mistake"; a plain
ValueError raised deep inside numpy or Keras therefore no longer passes for a
clean user error.

Only the standard library is imported here, so every module (and a command's
`--help`) can use these types without loading numpy, soundfile or TensorFlow.
"""
from __future__ import annotations


class DeepSpeakerError(Exception):
    """An expected failure: its message, on one line, tells the user what is wrong
    and what to do."""


class InputError(DeepSpeakerError, ValueError):
    """Bad input: an argument, a file's content, a config, a cache record.

    Also a ValueError, so callers that caught ValueError before keep working."""


class SettingsMismatchError(InputError):
    """Two things that must have been made with the same settings were not: an
    audio cache and the training inputs made from it, a cache and a model, a
    resumed stage and its checkpoint."""
