"""Compare the same runs in two results folders image by image: mean Dice of each on the (fold, image) pairs both
tested, and the two-sided Wilcoxon signed-rank p of the paired differences (e.g. a recipe change, the rest equal).

    python bench/paired_runs.py results/recipe-busi163/hreg-final-relu results/quick-busi163 HReg_MSE HReg_MSE_WAug HReg_KLD HReg_KLD_WAug
"""
import argparse
from pathlib import Path

import pandas as pd
from scipy import stats

from kdbus.evaluate import read_per_image

def dice(results: str, label: str) -> pd.Series:
    "Per-image Dice of run `label` over all its folds in `results`, indexed by (fold, id)."
    files = sorted(Path(results, label).glob("fold*/per_image.csv"))
    if not files: raise SystemExit(f"{Path(results, label)}: no fold*/per_image.csv")
    return pd.concat([read_per_image(f).assign(fold=f.parent.name) for f in files]).set_index(['fold', 'id']).dice

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("a"); p.add_argument("b"); p.add_argument("labels", nargs="+")
args = p.parse_args()
for label in args.labels:
    both = pd.concat([dice(args.a, label).rename('a'), dice(args.b, label).rename('b')], axis=1, join='inner')
    folds = ','.join(sorted({f[4:] for f, _ in both.index}))
    print(f"{label}: {100 * both.a.mean():.1f} in {args.a}, {100 * both.b.mean():.1f} in {args.b} on the same {len(both)} images "
          f"(folds {folds}); Wilcoxon p = {stats.wilcoxon(both.a, both.b).pvalue:.2f}")
