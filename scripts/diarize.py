#!/usr/bin/env python
"""Speaker diarization: who spoke when (see deep_speaker/commands/diarize.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from deep_speaker.commands.diarize import cli  # noqa: E402

if __name__ == "__main__":
    cli()
