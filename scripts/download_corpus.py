#!/usr/bin/env python
"""Download and extract corpus archives (see deep_speaker/commands/download_corpus.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from deep_speaker.commands.download_corpus import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
