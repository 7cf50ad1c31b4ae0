"""Table 4 with views of one lesion kept in one fold against the committed partition, read on the seed-to-seed scale.

Usage (from the repository root, once both folders are complete):
    python bench/views_compare.py results/quick-busi163-views results/quick-busi163 [--pair "benign (433)" "benign (435)"]

Prints Markdown: for each Table 4 row, the 3-fold mean test Dice (image-weighted, as Table 4) and each KD row's
lift over the Student, with the views partition, on the committed partition (seed 0), their difference, and
that difference in units of the pooled seed SD (the SD over seeds 0-2 of a row's mean, pooled over the rows
that have all three seeds: results/quick-busi163-views/PLAN.md's scale); then the view pair's own test Dice.
"""
import argparse, warnings
from pathlib import Path

import numpy as np
import pandas as pd

from kdbus.config import ALL_RUNS
from kdbus.results import collect


def row_means(df: pd.DataFrame) -> pd.DataFrame:
    "Mean test Dice (%) per (row, seed): all test images of the folds, as Table 4 weighs them."
    return df.groupby(['base', 'seed']).dice.mean().mul(100).unstack('seed')


def lifts(means: pd.DataFrame) -> pd.DataFrame:
    "Each row's mean minus the Student's mean of the same seed (the Student's own lift is 0)."
    return means - means.loc['Student']


def pooled_sd(per_seed: pd.DataFrame) -> float:
    "sqrt of the mean over rows of the variance over seeds (rows with every seed only)."
    full = per_seed.dropna()
    return float(np.sqrt(full.var(axis=1, ddof=1).mean()))


def main(views: Path, base: Path, pair: list[str]):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        v, b = collect(views), collect(base)
    v, b = v[v.seed == 0], b[b.student.isna() | (b.student == 's')]  # base: the Table 4 runs of every seed
    b = b[b.label.isin([l if s == 0 else f"{l}+seed={s}" for l in ALL_RUNS for s in (0, 1, 2)])]
    mb, mv = row_means(b), row_means(v)[0]
    lb, lv = lifts(mb), mv - mv['Student']
    sd_mean, sd_lift = pooled_sd(mb), pooled_sd(lb.drop('Student'))
    rows = []
    for r in [l for l in ALL_RUNS if l in mv.index]:
        d, dl = mv[r] - mb.loc[r, 0], lv[r] - lb.loc[r, 0]
        rows.append({'row': r, 'DSC :views': f"{mv[r]:.2f}", 'DSC seed 0': f"{mb.loc[r, 0]:.2f}", 'diff': f"{d:+.2f}",
                     'diff / seed SD': f"{d / sd_mean:+.2f}",
                     'lift :views': '' if r in ('Teacher', 'Student') else f"{lv[r]:+.2f}",
                     'lift seed 0': '' if r in ('Teacher', 'Student') else f"{lb.loc[r, 0]:+.2f}",
                     'lift diff / lift seed SD': '' if r in ('Teacher', 'Student') else f"{dl / sd_lift:+.2f}",
                     'moves (> 2 SD)': 'yes' if abs(d) > 2 * sd_mean else 'no'})
    t = pd.DataFrame(rows)
    collapsed = set(b[b.collapsed.astype(bool)].base)
    calm = pooled_sd(mb.drop(index=[r for r in collapsed if r in mb.index]))
    print(f"Pooled seed SD of a row's mean: {sd_mean:.2f} points (rows with seeds 0, 1, 2 in {base}); "
          f"of a KD row's lift: {sd_lift:.2f} points. Without the rows that have a collapsed run "
          f"({', '.join(sorted(collapsed)) or 'none'}; not the plan's scale, for context): {calm:.2f} points.\n")
    print(t.to_markdown(index=False))
    moved = t[t['moves (> 2 SD)'] == 'yes'].row.tolist()
    print(f"\nRows whose mean moves by more than 2 pooled seed SDs: {', '.join(moved) or 'none'}; "
          f"by more than 2 x {calm:.2f}: {', '.join(t.row[[abs(float(x)) > 2 * calm for x in t['diff']]]) or 'none'}.")
    mean_abs = float(np.mean([abs(float(x)) for x in t['diff']]))
    print(f"Mean |diff| over the {len(t)} rows: {mean_abs:.2f} points.\n")
    p = []
    for name, df in ((':views', v), ('seed 0, committed folds', b[b.seed == 0])):
        for r in ALL_RUNS:
            g = df[(df.base == r) & df.id.isin(pair)]
            for _, x in g.iterrows(): p.append(dict(partition=name, row=r, id=x.id, fold=int(x.fold), dice=round(100 * x.dice, 1)))
    pt = pd.DataFrame(p)
    if pt.empty: print(f"The pair {pair} is in no test part."); return
    wide = pt.pivot_table(index=['partition', 'id', 'fold'], columns='row', values='dice')[[r for r in ALL_RUNS if r in set(pt.row)]]
    print("The view pair's test Dice (%) where it is a test image:\n")
    print(wide.reset_index().to_markdown(index=False))


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('views', type=Path); ap.add_argument('base', type=Path)
    ap.add_argument('--pair', nargs='+', default=['benign (433)', 'benign (435)'])
    a = ap.parse_args()
    main(a.views, a.base, a.pair)
