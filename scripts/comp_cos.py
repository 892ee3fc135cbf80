#!/usr/bin/env python
"""Deep Speaker scoring (see deep_speaker/commands/comp_cos.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from deep_speaker.commands.comp_cos import cli  # noqa: E402

if __name__ == "__main__":
    cli()
