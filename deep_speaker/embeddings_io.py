"""Writing embedding tables: .npy (+ .files.txt), .csv or .json."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from deep_speaker.errors import InputError
from deep_speaker.io_utils import atomic_write, atomic_write_text


def write_embeddings(output: str | Path, embeddings: np.ndarray, names: list[str],
                     skipped: list[tuple[str, str]] = ()) -> list[Path]:
    """Write (n, dim) embeddings with their file/speaker names; returns the files written.

    npy: the array, plus <stem>.files.txt (one name per row; skipped files as
    '# skipped <path>: <reason>' lines at the end). csv: a `file` column then
    e0..e{dim-1}. json: {"files", "embeddings", "skipped"}.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix == ".npy":
        atomic_write(output, lambda handle: np.save(handle, embeddings.astype(np.float32)))
        listing = output.with_suffix(".files.txt")
        lines = list(names) + [f"# skipped {path}: {reason}" for path, reason in skipped]
        atomic_write_text(listing, "\n".join(lines) + "\n")
        return [output, listing]
    if suffix == ".csv":
        buffer = io.StringIO()
        table = csv.writer(buffer)
        table.writerow(["file"] + [f"e{i}" for i in range(embeddings.shape[1])])
        for name, row in zip(names, embeddings):
            table.writerow([name] + [f"{v:.8g}" for v in row])
        atomic_write_text(output, buffer.getvalue())
        return [output]
    if suffix == ".json":
        document = {"files": list(names), "embeddings": embeddings.astype(float).round(8).tolist(),
                    "skipped": [{"file": p, "reason": r} for p, r in skipped]}
        atomic_write_text(output, json.dumps(document))
        return [output]
    raise InputError(f"{output}: output must end in .npy, .csv or .json")
