"""kdbus's rows against the plain loop (../shared/baselines/plain_smp.py) run with `--split` on kdbus's own folds.

Each plain JSON holds one run per fold (the loop has one fixed seed); each kdbus row has a run per (fold, seed).
The plain run of a fold is paired with every kdbus seed of that fold, image by image, and the lift is
`kdbus.stats.run_lift`'s: its CI includes kdbus's run-to-run variance, not the plain loop's (one run per fold).

usage: python bench/plain_split.py RESULTS PLAIN_JSON... [--rows ROW...] [--out FILE.md]
       (the plain JSONs of folds 0, 1, 2 in any order: each names its test ids; its fold is read from --split's)
"""
import argparse, json
from pathlib import Path

import pandas as pd

from kdbus.results import settings_of
from kdbus.stats import run_lift

PLAIN = {'teacher': 'Teacher', 'student': 'Student', 'L_KLD': 'L_KLD'}  # the plain JSON's keys -> its rows


def plain_rows(path: Path, folds: dict[tuple, int]) -> pd.DataFrame:
    "One plain JSON's per-image Dice (0-1) with its fold, found from its test ids (`folds`: sorted ids -> fold)."
    res = json.loads(Path(path).read_text())
    if 'test_ids' not in res: raise SystemExit(f"{path}: no test_ids; run plain_smp.py with --split RUN/config.json")
    fold = folds.get(tuple(sorted(res['test_ids'])))
    if fold is None: raise SystemExit(f"{path}: its test ids are no fold's test part in the kdbus results")
    return pd.concat([pd.DataFrame(dict(row=row, fold=fold, id=res['test_ids'], dice=res[key]))
                      for key, row in PLAIN.items()], ignore_index=True)


def kdbus_rows(results: Path) -> pd.DataFrame:
    "Every finished run's per-image Dice under `results`: row (the folder name without its seed), fold, seed, id, dice."
    frames = []
    for f in sorted(Path(results).glob("*/fold*/per_image.csv")):
        name, cfg = f.parent.parent.name, f.parent / "config.json"
        # the run's own seed (a folder without +seed= has the results folder's, not always 0)
        seed = json.loads(cfg.read_text())["config"]["seed"] if cfg.exists() else (settings_of(name)[2] or 0)
        frames.append(pd.read_csv(f, dtype={'id': str})[['id', 'dice']].assign(
            row='+'.join(p for p in name.split('+') if not p.startswith('seed=')), fold=int(f.parent.name[4:]),
            seed=seed))
    if not frames: raise SystemExit(f"{results}: no run folder with a per_image.csv")
    return pd.concat(frames, ignore_index=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results"); p.add_argument("plain", nargs="+")
    p.add_argument("--rows", nargs="+", default=['Teacher', 'Student', 'Student+student=m', 'L_KLD_WAug+student=m',
                                                 'H_MSE_WAug+student=m', 'Student+student=l'],
                   help="kdbus rows (run labels without +seed=) to pair with the plain Student (the Teacher with its Teacher)")
    p.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    p.add_argument("--per-seed", action="store_true", help="also a line per kdbus seed of each row")
    a = p.parse_args(argv)
    df = kdbus_rows(a.results)
    folds = {tuple(sorted(g.id)): int(f) for (f, _, _), g in df.groupby(['fold', 'seed', 'row'])}
    plain = [plain_rows(Path(j), folds) for j in a.plain]
    seen = {}
    for j, rows in zip(a.plain, plain):
        f = int(rows.fold.iloc[0])
        if f in seen: raise SystemExit(f"{j} and {seen[f]} both test fold {f}: expected one plain JSON per fold")
        seen[f] = j
    plain = pd.concat(plain, ignore_index=True)
    lines = [f"# kdbus against the plain loop on kdbus's folds ({a.results})", "",
             "| kdbus row | runs | kdbus DSC (%) | plain row | plain runs | plain DSC (%) | kdbus - plain [95 % CI] | p |",
             "|---|---|---|---|---|---|---|---|"]
    cells = []  # (kdbus row, its label in the table, its runs)
    for row in a.rows:
        ours = df[df.row == row][['fold', 'seed', 'id', 'dice']]
        if ours.empty: raise SystemExit(f"--rows: no runs labelled {row!r} in {a.results}")
        cells.append((row, row, ours))
        if a.per_seed: cells += [(row, f"{row}, seed {s}", g) for s, g in ours.groupby('seed')]
    for row, name, ours in cells:
        ref_row = 'Teacher' if row == 'Teacher' else 'Student'
        ref = plain[(plain.row == ref_row) & plain.fold.isin(ours.fold.unique())]
        # the plain run of a fold stands beside each kdbus seed of it
        ref = pd.concat([ref.assign(seed=s) for s in sorted(ours.seed.unique())], ignore_index=True)
        r = run_lift(ours, ref[['fold', 'seed', 'id', 'dice']])
        mine = ours.merge(ref[['fold', 'seed', 'id']], on=['fold', 'seed', 'id'])
        theirs = ref.merge(ours[['fold', 'seed', 'id']], on=['fold', 'seed', 'id']).drop_duplicates(['fold', 'id'])
        lines.append(f"| {name} | {r['runs']} | {100 * mine.dice.mean():.2f} | {ref_row} | {theirs.fold.nunique()} | "
                     f"{100 * theirs.dice.mean():.2f} | {r['lift']:+.2f} "
                     + (f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {r['p']:.3g} |" if r['ci_low'] == r['ci_low']
                        else "(no CI: one run per fold) | - |"))
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out: a.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
