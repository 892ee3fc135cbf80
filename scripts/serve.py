#!/usr/bin/env python
"""The speaker service and its keys (see deep_speaker/commands/serve.py, docs/service.md)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from deep_speaker.commands.serve import cli  # noqa: E402

if __name__ == "__main__":
    cli()
