#!/usr/bin/env bash
# A virtual environment of its own for RecBole 1.2.1, which needs numpy<2 (the dev environment
# has numpy 2): every package of constraints-recbole.txt, installed with --no-deps, plus this
# repository (editable, --no-deps). Made once and reused while constraints-recbole.txt, this
# script and the library's dependencies stay the same. Prints the environment's python.
#   RASEREC_RECBOLE_VENV  where it lives (default: .venv-recbole/ in the repository root)
#   PYTHON                the interpreter to make it with (default: python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RASEREC_RECBOLE_VENV:-$ROOT/.venv-recbole}"
PY="${PYTHON:-python3}"
LOCK="$ROOT/constraints-recbole.txt"
deps="$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"])' \
  "$ROOT/pyproject.toml" 2>/dev/null || cat "$ROOT/pyproject.toml")"
key="$({ cat "$LOCK" "${BASH_SOURCE[0]}"; echo "$deps"; } | sha256sum | cut -c1-16)"
stamp="$VENV/.installed-$key"
if [ ! -f "$stamp" ]; then
  if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ] && [ -n "$(ls -A "$VENV")" ]; then
    echo "[raserec-adapter] $VENV exists and is not a virtual environment; move it away or" \
      "set RASEREC_RECBOLE_VENV to another path" >&2
    exit 1
  fi
  echo "[raserec-adapter] setting up the RecBole environment $VENV (one time)" >&2
  start=$SECONDS
  "$PY" -m venv --clear "$VENV"
  "$VENV/bin/python" -m pip install --quiet --no-deps -r "$LOCK"
  "$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
  # the environment must import what RecBole's Trainer and this library use
  "$VENV/bin/python" -c "import faiss, numpy, raserec_adapter, recbole.trainer, recbole.model.sequential_recommender"
  touch "$stamp"
  echo "[raserec-adapter] RecBole environment ready in $((SECONDS - start)) s" >&2
fi
echo "$VENV/bin/python"
