"""Compare the same runs in two results folders image by image: mean Dice of each on the (fold, image) pairs both
tested, and the two-sided Wilcoxon signed-rank p of the paired differences (e.g. a recipe change, the rest equal).
A comma-separated group of runs (e.g. a run's seeds) is averaged per image first.

    python bench/paired_runs.py results/recipe-busi163/hreg-final-relu results/quick-busi163 HReg_MSE HReg_MSE_WAug HReg_KLD HReg_KLD_WAug
    python bench/paired_runs.py results/dice-ce-busi163 results/quick-busi163 Student Student,Student+seed=1,Student+seed=2
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

def group_dice(results: str, group: str) -> pd.Series:
    "Per-image Dice of one run, or of a comma-separated group of runs averaged on the images all of them tested."
    return pd.concat([dice(results, l) for l in group.split(',')], axis=1, join='inner').mean(axis=1)

def compare(a: str, b: str, group: str) -> dict:
    "Mean Dice (%) of `group` in `a` and in `b` on the images both tested, their number, folds and the Wilcoxon p."
    both = pd.concat([group_dice(a, group).rename('a'), group_dice(b, group).rename('b')], axis=1, join='inner')
    return dict(a=100 * both.a.mean(), b=100 * both.b.mean(), n=len(both), folds=','.join(sorted({f[4:] for f, _ in both.index})),
                p=stats.wilcoxon(both.a, both.b).pvalue)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a"); p.add_argument("b"); p.add_argument("labels", nargs="+", help="runs, or comma-separated groups averaged per image")
    args = p.parse_args(argv)
    for group in args.labels:
        r = compare(args.a, args.b, group)
        name = group if ',' not in group else f"{group} (averaged per image)"
        print(f"{name}: {r['a']:.1f} in {args.a}, {r['b']:.1f} in {args.b} on the same {r['n']} images "
              f"(folds {r['folds']}); Wilcoxon p = {r['p']:.2f}")

if __name__ == "__main__":
    main()
