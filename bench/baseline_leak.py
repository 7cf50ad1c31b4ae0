"""How many of the plain baseline's test images have a copy (duplicate group, `kdbus.data.fold_groups`) in its
training part, and its Dice on them vs the rest. The baseline (../shared/baselines/plain_smp.py) splits at random.

usage: python bench/baseline_leak.py DATA_DIR FOLD_JSON...     (the JSONs its --out wrote, fold 0, 1, 2 in order)
"""
import glob, json, sys
from pathlib import Path

import numpy as np

from kdbus.experiment import duplicate_id_groups

root, outs = sys.argv[1], sys.argv[2:]
files = sorted(glob.glob(f"{root}/*/*).png"))  # the baseline's own order and split
ids = [Path(f).stem for f in files]
folds = np.array_split(np.random.RandomState(0).permutation(len(files)), 3)
mate = {i: set(g) - {i} for g in duplicate_id_groups(f"busi:{root}") for i in g}
rows = []
for k, out in enumerate(outs):
    res = json.loads(Path(out).read_text())
    train = {ids[i] for j, f in enumerate(folds) if j != k for i in f}
    for n, i in enumerate(folds[k]):
        rows.append(dict(leak=bool(mate.get(ids[i], set()) & train), **{m: 100 * res[m][n] for m in ('teacher', 'student', 'L_KLD')}))
leak = [r for r in rows if r['leak']]; rest = [r for r in rows if not r['leak']]
print(f"{len(leak)} of {len(rows)} test images have a copy in their fold's training part")
for m in ('teacher', 'student', 'L_KLD'):
    print(f"  {m}: {np.mean([r[m] for r in leak]):.1f} on them, {np.mean([r[m] for r in rest]):.1f} on the others, "
          f"{np.mean([r[m] for r in rows]):.2f} on all")
