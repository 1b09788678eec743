#!/usr/bin/env bash
# Install snnprune with its test extras into a fresh temporary venv, run the whole test suite,
# and remove the venv on exit. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
LOG="$(mktemp)"
VENV="$(mktemp -d "${TMPDIR:-/tmp}/snnprune-venv.XXXXXX")"
trap 'rm -rf "$VENV"' EXIT
python3 -m venv "$VENV"
# torch/torchvision first, pinned to a matching pair (PyPI's torchvision needs its own torch build).
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 >"$LOG" 2>&1 || { cat "$LOG"; exit 1; }
"$VENV/bin/pip" install -q -e ".[test]" >"$LOG" 2>&1 || { cat "$LOG"; exit 1; }
"$VENV/bin/python" -c "import snnprune, torch, torchvision, snntorch, numba; print('snnprune', snnprune.__version__, '| torch', torch.__version__)"
"$VENV/bin/ruff" check snnprune criteria tests experiments
"$VENV/bin/pytest" -q "$@"
