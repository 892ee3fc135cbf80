#!/usr/bin/env bash
# The main job in one command, on a fresh clone with only Python 3:
#   bash scripts/run_pipeline.sh [--download] [--quick] [--output_dir DIR]
# Makes .venv without the system's packages (DEEP_SPEAKER_SYSTEM_SITE_PACKAGES=1 reuses them;
# scripts/venv.sh), installs deep-speaker[train] into it unless it already imports every requirement,
# then runs the seed's workflow end to end (see deep_speaker/pipeline.py). Rerunning skips
# every stage whose output is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv train
exec "$PY" scripts/pipeline.py "$@"
