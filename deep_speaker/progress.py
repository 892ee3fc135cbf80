"""Progress bars on stderr."""
from __future__ import annotations

import sys

from tqdm import tqdm


INTERACTIVE_REDRAW_S = 0.1  # a terminal: smooth
LOG_REDRAW_S = 30.0  # a log file: a line every 30 s at most, so logs stay short


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, *, initial: int = 0,
                 scale_bytes: bool = False) -> tqdm:
    """A tqdm bar on stderr (the one every stage and the downloader use); when
    stderr is a log file rather than a terminal it redraws only every 30 s.
    scale_bytes: show KiB/MiB/... (unit "B"); initial: a resumed count."""
    interactive = sys.stderr.isatty()
    scaling = {"unit_scale": True, "unit_divisor": 1024} if scale_bytes else {}
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=interactive,
                mininterval=INTERACTIVE_REDRAW_S if interactive else LOG_REDRAW_S, disable=not enabled, **scaling)
