# Sourced by run_pipeline.sh and run_tests.sh: the virtual environment both set-up commands run in.
#
# ensure_venv [EXTRA ...] makes $VENV (default .venv) when it is missing, WITHOUT the packages
# installed system-wide (a new user's machine has none of them, so neither may the project's
# own runs: they hid a missing requirement once). DEEP_SPEAKER_SYSTEM_SITE_PACKAGES=1 reuses
# them on purpose. Then, unless the venv already imports every requirement of deep-speaker and
# of EXTRA (`python -m deep_speaker.requirements --check`: one import per requirement) and
# nothing was declared since it was last installed, it installs the checkout into it
# (`pip install -e ".[EXTRA,...]"`) and checks again. Sets PY to the venv's interpreter.
ensure_venv() {
  VENV=${VENV:-.venv}
  local python=${PYTHON:-python3} system=${DEEP_SPEAKER_SYSTEM_SITE_PACKAGES:-0}
  local extras target=.
  extras=$(IFS=,; echo "$*")
  [ -n "$extras" ] && target=".[$extras]"
  if [ -f "$VENV/pyvenv.cfg" ] && [ "$system" != 1 ] \
     && grep -qi '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"; then
    echo "$VENV was made with the system's packages; making it anew without them" \
         "(DEEP_SPEAKER_SYSTEM_SITE_PACKAGES=1 keeps them)" >&2
    "$python" -m venv --clear "$VENV"
  elif [ ! -x "$VENV/bin/python" ]; then
    if [ "$system" = 1 ]; then "$python" -m venv --system-site-packages "$VENV"; else "$python" -m venv "$VENV"; fi
  fi
  PY="$VENV/bin/python"
  local stamp="$VENV/.deep-speaker-installed${extras:+-$extras}"
  if [ setup.py -nt "$stamp" ] || [ deep_speaker/requirements.py -nt "$stamp" ] \
     || ! "$PY" -m deep_speaker.requirements --check "$@" >/dev/null 2>&1; then
    echo "installing deep-speaker${extras:+[$extras]} into $VENV ..." >&2
    "$PY" -m pip install --quiet --disable-pip-version-check -e "$target"
    if ! "$PY" -m deep_speaker.requirements --check "$@" 2>/dev/null; then
      echo "error: $VENV still lacks the requirements above after pip install" >&2
      return 1
    fi
    touch "$stamp"
  fi
}
