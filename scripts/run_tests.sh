#!/usr/bin/env bash
# The tests in one command, on a fresh clone with only Python 3:
#   bash scripts/run_tests.sh [PYTEST ARGS ...]
# Makes or reuses the virtual environment $VENV (default .venv, the main job's; no system
# site-packages, see scripts/venv.sh), installs deep-speaker with its test extras into it,
# checks the installed packages' requirements (pip check), then runs the suite with that
# environment's interpreter. Works where the system Python refuses pip install (PEP 668).
# .ci/run runs exactly this, with a brand-new $VENV each time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv test
"$PY" -m pip check --disable-pip-version-check
exec "$PY" -m pytest -q --doctest-modules deep_speaker tests "$@"
