# Sourced by the other scripts: make a virtual environment with the pinned dev versions.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RASEREC_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
stamp="$VENV/.installed-$(cat "$ROOT/constraints-dev.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[raserec-adapter] setting up $VENV (one time)" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints-dev.txt" -e "$ROOT[test,docs]"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
