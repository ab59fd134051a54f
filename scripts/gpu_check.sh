#!/usr/bin/env bash
# Thin wrapper for scripts/gpu_check.py: runs it with the repo's venv if there is one.
#   scripts/gpu_check.sh            # CUDA check (exits 0 with a message when there is no CUDA)
#   scripts/gpu_check.sh --cpu      # tiny CPU smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
# bigdeep's models from this checkout's src/, whether or not the project is installed
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" scripts/gpu_check.py "$@"
