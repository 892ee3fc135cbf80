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
# One test process per core, up to 4 (pytest-xdist): on 2 cores the suite (713 tests then) took 7 min
# 36 s against 10 min 10 s in one process, since many tests wait on subprocesses and files. "-n 0" runs
# it serially.
exec "$PY" -m pytest -q -n auto --maxprocesses 4 --doctest-modules deep_speaker tests "$@"
