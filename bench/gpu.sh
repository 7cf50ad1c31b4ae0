#!/usr/bin/env bash
# The device check of the paper profile (see bench/gpu.py): one run, at most about 8 minutes on one GPU.
#   bash bench/gpu.sh             # on a CUDA machine: writes results/bench/gpu.md and gpu.csv
#   bash bench/gpu.sh --dry-run   # anywhere, on the CPU: everything but CUDA, into a temporary folder
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" bench/gpu.py "$@"
