#!/usr/bin/env bash
# The main job in one command, on a fresh clone with only Python 3:
#   bash scripts/run_pipeline.sh [--download] [--quick] [--output_dir DIR]
# Creates .venv (reusing packages already installed system-wide), installs deep-speaker into it,
# then runs the seed's workflow end to end (see deep_speaker/pipeline.py). Rerunning skips
# every stage whose output is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c "import deep_speaker, tensorflow, soxr, python_speech_features" 2>/dev/null \
   || [ setup.py -nt .venv/.installed ] || [ requirements.txt -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e .
  touch .venv/.installed
fi
exec .venv/bin/python scripts/pipeline.py "$@"
