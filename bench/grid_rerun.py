"""Study (issue 27): the same grid run twice, before and after a runtime-only change (e.g. channels-last by role),
compared row by row: seconds per epoch and minutes per run, and the test Dice of each Table 4 row beside the
spread of that row over the seeds of the folder made before (the yardstick of float noise: one seed's run moves
by about that much between seeds). Float noise moves rows both ways: the summary counts the rows that went down
(a two-sided sign test over the rows) and places each rerun among the before folder's seeds, as one more seed.

    python bench/grid_rerun.py results/quick-busi163 results/grid-timing-busi163 --md results/grid-timing-busi163/rerun.md

BEFORE holds the earlier runs (seed 0 is compared; its seeds 0, 1, 2 give the spread); AFTER the rerun (seed 0).
Only runs at the paper's settings (no `+T=`, `+stage=`, `+student=` folder) are read.
"""
import argparse, statistics, warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from kdbus.data import same_data
from kdbus.results import collect, label_key, run_summary, settings_of, split_of

def runs(results: str) -> pd.DataFrame:
    "One row per complete run at the paper's settings: row, seed, fold, mean test Dice (%), epochs run, minutes."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # incomplete runs are left out, and said so here
        df = collect(results)
    if df.empty: raise SystemExit(f"{results}: no complete run")
    if df.attrs.get('incomplete'): print(f"{results}: {len(df.attrs['incomplete'])} incomplete run(s) left out")
    summary = run_summary(df).set_index(['label', 'fold'])
    rows = []
    for (label, fold), g in df.groupby(['label', 'fold']):
        base, named, seed = settings_of(label)
        if named: continue
        s = summary.loc[(label, fold)]
        rows.append(dict(row=base, seed=seed or 0, fold=int(fold), dice=100 * g.dice.mean(),
                         epochs=int(s.epochs_run), minutes=float(s.minutes), run_dir=g.run_dir.iloc[0]))
    return pd.DataFrame(rows)

def check_same_split(before: pd.DataFrame, after: pd.DataFrame):
    "Refuse two folders whose seed-0 runs test other images (their folds would be compared by number only)."
    for d, name in ((before, 'before'), (after, 'after')):
        if not (d.seed == 0).any(): raise SystemExit(f"{name}: no seed-0 run at the paper's settings")
    a, b = (split_of(d[d.seed == 0].run_dir.iloc[0]) for d in (before, after))
    diff = [k for k in a if not (a[k] == b.get(k) or (k == 'data' and same_data(a[k], b.get(k) or '')))]
    if diff:
        raise SystemExit("the two folders' runs do not share one split (" + '; '.join(
            f"{k}: {a[k]!r} before, {b.get(k)!r} after" for k in diff) + "): expected the same grid rerun")

def compare(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    "Per Table 4 row: seed 0's cost and Dice before and after (folds both hold), and the seed SD before."
    out = []
    for row in sorted(after.row.unique(), key=label_key):
        a = after[(after.row == row) & (after.seed == 0)]
        b = before[(before.row == row) & (before.seed == 0) & before.fold.isin(a.fold)]
        if b.empty: continue
        a = a[a.fold.isin(b.fold)]
        folds = sorted(a.fold)
        per_seed = [g.dice.mean() for _, g in before[(before.row == row) & before.fold.isin(folds)].groupby('seed')
                    if sorted(g.fold) == folds]
        spe = lambda d: 60 * d.minutes.sum() / d.epochs.sum()
        out.append(dict(row=row, folds=len(folds), fold_list=folds, s_epoch_before=spe(b), s_epoch_after=spe(a),
                        ratio=spe(a) / spe(b), min_run_before=b.minutes.mean(), min_run_after=a.minutes.mean(),
                        dsc_before=b.dice.mean(), dsc_after=a.dice.mean(), diff=a.dice.mean() - b.dice.mean(),
                        seed_sd=statistics.stdev(per_seed) if len(per_seed) > 1 else float('nan'),
                        seeds=len(per_seed), seed_min=min(per_seed), seed_max=max(per_seed)))
    if not out: raise SystemExit("no Table 4 row of seed 0 is in both folders on the same folds")
    return pd.DataFrame(out)

def markdown(t: pd.DataFrame, before: pd.DataFrame, after: pd.DataFrame, names: tuple[str, str]) -> str:
    "The comparison as Markdown, with the totals and how many rows moved by more than one seed SD."
    head = ("| row | folds | s/epoch before | after | ratio | min/run before | after | DSC (%) before | after | "
            "after - before | seed SD before (seeds) |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = ''.join(f"| {r.row} | {r.folds} | {r.s_epoch_before:.1f} | {r.s_epoch_after:.1f} | {r.ratio:.2f} | "
                   f"{r.min_run_before:.1f} | {r.min_run_after:.1f} | {r.dsc_before:.2f} | {r.dsc_after:.2f} | "
                   f"{r.diff:+.2f} | {'n/a' if r.seeds < 2 else f'{r.seed_sd:.2f}'} ({r.seeds}) |\n" for r in t.itertuples())
    pairs = {(r.row, f) for r in t.itertuples() for f in r.fold_list}  # the (row, fold) runs compared, in both folders
    only = lambda d: d[(d.seed == 0).to_numpy() & np.array([(r, f) in pairs for r, f in zip(d.row, d.fold)], dtype=bool)]
    b0, a0 = only(before), only(after)
    known = t[t.seed_sd.notna()]
    within = f"{(known['diff'].abs() <= known.seed_sd).sum()} of {len(known)}" + (
        f" ({len(t) - len(known)} row(s) with one seed before: no SD)" if len(known) < len(t) else '')
    lower, moved = int((t['diff'] < 0).sum()), int((t['diff'] != 0).sum())
    sign_p = binomtest(lower, moved).pvalue if moved else float('nan')
    several = t[t.seeds > 1]
    below, above = int((several.dsc_after < several.seed_min).sum()), int((several.dsc_after > several.seed_max).sum())
    return (f"Before: `{names[0]}`, after: `{names[1]}` (seed 0 of each; the seed SD is the SD over the before "
            f"folder's seeds of the row's mean Dice on the same folds).\n\n{head}{body}\n"
            f"Training summed over the compared seed-0 runs: before {b0.minutes.sum():.1f} min ({len(b0)} runs), after "
            f"{a0.minutes.sum():.1f} min ({len(a0)} runs); epochs run {b0.epochs.sum()} / {a0.epochs.sum()}. "
            f"Rows whose Dice moved by at most one seed SD: {within}; mean difference "
            f"{t['diff'].mean():+.2f} points. Lower after than before: {lower} of {moved} rows that moved (two-sided sign "
            f"test p = {sign_p:.3g}; under float noise alone rows go down and up equally often). As one more seed of the before folder: below "
            f"all its seeds in {below} of {len(several)} rows, above all in {above}, within their range in "
            f"{len(several) - below - above}.\n")

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('before', help='results folder of the earlier runs (seeds 0-2 give the spread)')
    p.add_argument('after', help='results folder of the rerun (seed 0)')
    p.add_argument('--md', help='also write the table to this Markdown file')
    a = p.parse_args(argv)
    for f in (a.before, a.after):
        if not Path(f).is_dir(): raise SystemExit(f"{f}: not a folder; expected a results folder of `kdbus grid`")
    before, after = runs(a.before), runs(a.after)
    check_same_split(before, after)
    md = markdown(compare(before, after), before, after, (a.before, a.after))
    print(md)
    if a.md: Path(a.md).write_text(md)

if __name__ == '__main__': main()
