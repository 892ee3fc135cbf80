#!/usr/bin/env python
"""Speaker identification (see deep_speaker/commands/identify.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from deep_speaker.commands.identify import cli  # noqa: E402

if __name__ == "__main__":
    cli()
