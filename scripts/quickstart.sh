#!/usr/bin/env bash
# Install snnprune into ./.venv and run the main job on the embedded digits data:
# train a small SNN, prune it with the probability criterion and with magnitude, compare.
set -euo pipefail
cd "$(dirname "$0")/.."
LOG="$(mktemp)"
python3 -m venv .venv
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 >"$LOG" 2>&1 || { cat "$LOG"; exit 1; }
.venv/bin/pip install -q -e . >"$LOG" 2>&1 || { cat "$LOG"; exit 1; }
.venv/bin/snnprune quickstart "$@"
