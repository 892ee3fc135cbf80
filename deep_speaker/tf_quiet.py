"""TensorFlow imported without its C++ start-up noise, for the API and the commands alike.

On a CPU machine TensorFlow's first import (and first use) writes lines such as
``cudart_stub.cc:31] Could not find cuda drivers on your machine``, ``failed call to
cuInit`` and "All log messages before absl::InitializeLog()" to stderr, some of them
before it reads TF_CPP_MIN_LOG_LEVEL. `import_tensorflow` (the model loading path of
`SpeakerEncoder` and the commands) and `quiet_tensorflow_import` (the commands'
`setup_logging`) keep them off stderr:

- TF_CPP_MIN_LOG_LEVEL=3 unless the user set it (a value the user set wins);
- file descriptor 2 pointed at a temp file while TensorFlow is imported; if the
  import fails, what it wrote is replayed on stderr before the error is raised,
  so a broken install still says why;
- TensorFlow's absl Python logger down to errors.

DEEP_SPEAKER_VERBOSE (any value but empty or 0), or the commands' --verbose, lets
everything through. Only the standard library is imported here.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile

VERBOSE_ENV = "DEEP_SPEAKER_VERBOSE"
_verbose = False  # the commands' --verbose, as setup_logging last said


def verbose_requested() -> bool:
    """True when TensorFlow's messages should reach stderr: a command's --verbose,
    or DEEP_SPEAKER_VERBOSE set to anything but '' or '0'."""
    return _verbose or os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")


def quiet_tensorflow_import(verbose: bool = False) -> None:
    """Make TensorFlow's first import quiet, whoever imports it next (Keras, the
    model, a tf.data pipeline): TF_CPP_MIN_LOG_LEVEL=3 unless set, and a finder
    that captures stderr during the import (none once TensorFlow is imported).
    verbose=True (a command's --verbose) lets the messages through instead, here
    and in later `import_tensorflow` calls."""
    global _verbose
    _verbose = bool(verbose)
    if verbose_requested():
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowImport)]
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def import_tensorflow():
    """The `tensorflow` module, imported quietly the first time (see the module
    docstring) unless `verbose_requested()`. Call it before anything that imports
    TensorFlow or Keras (loading a model)."""
    if "tensorflow" not in sys.modules:
        quiet_tensorflow_import(_verbose)
    import tensorflow

    return tensorflow


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds TensorFlow, the first time anything imports it, by the other finders,
    and has it executed with stderr captured (`_QuietLoader`); then leaves sys.meta_path."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        if verbose_requested():  # DEEP_SPEAKER_VERBOSE exported after the finder was installed
            return None
        spec = importlib.util.find_spec(name)  # the finders after this one; imports nothing
        if spec is None or spec.loader is None:
            return None  # not installed: the import system says so as usual
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader once, with file descriptor 2 pointed at a temp
    file: its C++ start-up messages are written there before TF_CPP_MIN_LOG_LEVEL
    is read. If the import fails, what it wrote is replayed on stderr, so a broken
    install still says why. The module keeps its own loader and spec."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader
        with _stderr_captured():
            self.loader.exec_module(module)
        try:  # TensorFlow's own Python warnings (absl) down to errors as well
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.ERROR)
        except ImportError:
            pass


def _flush_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no sys.stderr, or a closed one
        pass


@contextlib.contextmanager
def _stderr_captured():
    """File descriptor 2 into a temp file for the block; replayed on stderr if it raises."""
    _flush_stderr()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to quiet (a daemon): run as usual
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            _flush_stderr()
            os.dup2(saved, 2)
            captured.seek(0)
            if sys.stderr is not None:
                sys.stderr.write(captured.read().decode("utf-8", "replace"))
                _flush_stderr()
            raise
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
