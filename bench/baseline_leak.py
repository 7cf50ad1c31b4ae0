"""How many of the plain baseline's test images have a copy (duplicate group, `kdbus.duplicates.fold_groups`) in its
training part, and its Dice on them vs the rest. The baseline (../shared/baselines/plain_smp.py) splits at random.
With --kdbus RESULTS, also pairs each image the baseline tested without a leak with the same image in a kdbus
results folder (each image is tested once by each side, by a model that never trained on it or on a copy of it):
mean Dice of both on those images, and the two-sided Wilcoxon signed-rank p of the paired differences.

usage: python bench/baseline_leak.py DATA_DIR FOLD_JSON... [--kdbus RESULTS]   (the JSONs its --out wrote, fold 0, 1, 2 in order)
"""
import argparse, glob, json
from pathlib import Path

import numpy as np, pandas as pd
from scipy import stats

from kdbus.experiment import duplicate_id_groups

ROLES = {'teacher': 'Teacher', 'student': 'Student', 'L_KLD': 'L_KLD'}  # baseline key -> kdbus run

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("root"); p.add_argument("outs", nargs="+"); p.add_argument("--kdbus", help="a kdbus results folder on the same data")
a = p.parse_args()
files = sorted(glob.glob(f"{a.root}/*/*).png"))  # the baseline's own order and split
ids = [Path(f).stem for f in files]
folds = np.array_split(np.random.RandomState(0).permutation(len(files)), 3)
mate = {i: set(g) - {i} for g in duplicate_id_groups(f"busi:{a.root}") for i in g}
rows = []
for k, out in enumerate(a.outs):
    res = json.loads(Path(out).read_text())
    train = {ids[i] for j, f in enumerate(folds) if j != k for i in f}
    for n, i in enumerate(folds[k]):
        rows.append(dict(id=ids[i], leak=bool(mate.get(ids[i], set()) & train), **{m: 100 * res[m][n] for m in ROLES}))
df = pd.DataFrame(rows)
leak, rest = df[df.leak], df[~df.leak]
print(f"{len(leak)} of {len(df)} test images have a copy in their fold's training part")
for m in ROLES:
    print(f"  {m}: {leak[m].mean():.1f} on them, {rest[m].mean():.1f} on the others, {df[m].mean():.2f} on all")
if a.kdbus:
    print(f"paired with {a.kdbus} on the images the baseline tested without a leak:")
    for m, run in ROLES.items():
        ours = pd.concat([pd.read_csv(f, dtype={'id': str}) for f in sorted(Path(a.kdbus, run).glob("fold*/per_image.csv"))])
        both = rest.merge(ours[['id', 'dice']], on='id')
        d = 100 * both.dice - both[m]
        pv = stats.wilcoxon(100 * both.dice, both[m]).pvalue if (d != 0).sum() >= 6 else float('nan')
        print(f"  {run}: kdbus {100 * both.dice.mean():.1f}, baseline {both[m].mean():.1f} on the same {len(both)} images "
              f"(difference {d.mean():+.1f}, Wilcoxon p = {pv:.3g})")
