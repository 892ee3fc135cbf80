"""Progress bars on stderr."""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr; when stderr is a log file rather than a terminal
    it redraws only every 30 s, so logs stay short."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=interactive,
                mininterval=0.1 if interactive else 30.0, disable=not enabled)
