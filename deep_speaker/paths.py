"""Default locations, in one place (commands and the downloader share them).

Standard library only: commands import this before parsing their arguments.
"""
from __future__ import annotations

from pathlib import Path

# The seed's data root, relative to where commands run (see deep-speaker-data/README.md).
DATA_ROOT = Path("deep-speaker-data")
