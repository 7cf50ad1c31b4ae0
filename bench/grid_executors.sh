#!/usr/bin/env bash
# The smoke grid's wall time with the local executor and with Ray (a local instance), one after the
# other in one run, on this machine; then checks that both give the same Table 4.
# Usage: bash bench/grid_executors.sh [OUT]   (from the repository root, after `make setup`)
set -u
export OMP_NUM_THREADS=1 PATH="$PWD/.venv/bin:$PATH"
OUT=${1:-/tmp/kdbus-grid-executors}; rm -rf "$OUT"; mkdir -p "$OUT"
echo "machine: $(getconf _NPROCESSORS_ONLN) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ex in local ray; do
  t0=$(date +%s.%N)
  kdbus grid --profile smoke --data synth:n=30 --folds 0 --out "$OUT/$ex" --executor $ex > "$OUT/$ex.log" 2>&1; rc=$?
  t1=$(date +%s.%N)
  echo "$ex: rc=$rc wall=$(python -c "print(round($t1-$t0,1))") s; $(grep '^grid:' "$OUT/$ex.log"); load after: $(cut -d' ' -f1-3 /proc/loadavg)"
done
python - "$OUT" <<'PY'
import sys, csv
out = sys.argv[1]
a, b = (list(csv.reader(open(f"{out}/{e}/table4.csv"))) for e in ("local", "ray"))
print("table4 same columns:", a[0] == b[0], "; same rows:", [r[0] for r in a] == [r[0] for r in b])
i = a[0].index("DSC (%)")
print("same DSC in every row:", [r[i] for r in a] == [r[i] for r in b])
for ra, rb in zip(a[1:], b[1:]): print(f"  {ra[0]:14s} local {ra[i]:16s} ray {rb[i]}")
PY
