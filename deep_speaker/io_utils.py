"""Atomic writes and the one restricted unpickler every cache read goes through.

The seed's cache files stay pickles for faithfulness, but they may only hold
plain dicts, lists, strings, numbers and numpy arrays: `load_pickle` refuses
anything else, so a planted pickle can never run code.
"""
from __future__ import annotations

import functools
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from deep_speaker.errors import InputError


class UnsafePickleError(InputError):
    """A pickle asked for a global that deep-speaker never writes."""


# (module, name) pairs that numpy arrays and scalars need when unpickled: numpy 2.x
# writes numpy._core.*, numpy 1.x (the 2018 code's caches) numpy.core.*; numpy 2.x
# still resolves the old path, so both load.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("builtins", "complex"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or (module == "numpy" and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafePickleError(f"refused global {module}.{name}")


def load_pickle(path: str | Path) -> Any:
    """Load a cache pickle, allowing only plain data and numpy arrays.

    Raises InputError, a ValueError (UnsafePickleError for refused globals),
    naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a pickle file")
    try:
        data = path.read_bytes()
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{path}: unsafe pickle refused ({error})") from None
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError,
            TypeError, ValueError) as error:
        raise InputError(f"{path}: unreadable pickle ({type(error).__name__}: {error})") from None


@functools.lru_cache(maxsize=None)
def _file_mode() -> int:
    """The mode open() would give a new file (0o666 less the umask): mkstemp makes
    0o600 files, which would leave a shared cache unreadable to the group."""
    try:  # Linux reports the umask without changing it
        status = Path("/proc/self/status").read_text()
        mask = next(int(line.split()[1], 8) for line in status.splitlines() if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write, durable: bool = True) -> None:
    """Call write(handle) on a temp file beside `path`, then rename it over `path`.

    The rename alone makes the write atomic for readers and against a killed
    process; durable=True also fsyncs, so the file survives a power cut.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def atomic_write_pickle(path: str | Path, obj: Any, durable: bool = True) -> None:
    """Write `obj` to `path` through a temp file and a rename: never half a file."""
    atomic_write(Path(path), lambda handle: pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL), durable)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(Path(path), lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    atomic_write(Path(path), lambda handle: np.savez(handle, **arrays))


def remove_stale_temp_files(folder: str | Path) -> int:
    """Delete temp files a killed run left behind; returns how many."""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            tmp.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed
