"""How soon the students of a results folder learned: for each run folder (Teachers left out), the first epoch whose
validation Dice is above a threshold (default 20 %, above the full-mask Dice of busi-163's validation parts, 12-16 %),
then the distribution over runs.

    python bench/first_segmenting.py results/quick-busi163                    # cross-entropy students (the paper's L_sup)
    python bench/first_segmenting.py results/dice-ce-busi163 --runs Student   # sup_loss='dice_ce'
    python bench/first_segmenting.py results/quick-synth --runs Student --each  # and each run's own epoch
    python bench/first_segmenting.py results/quick-busi163 --runs Student L_KLD_WAug H_MSE_WAug --student xs  # one size
"""
import argparse
from pathlib import Path

import pandas as pd
from kdbus.results import settings_of


def first_epochs(results: Path, runs: list[str] | None = None, above: float = 0.2, student: str | None = None) -> pd.DataFrame:
    """One row per run folder and fold: `first` is the first epoch with validation Dice > `above` (NaN: never), `epochs` the
    run's length. `student`: only the folders of that student size and no other setting ('s': no named setting at all)."""
    rows = []
    for h in sorted(Path(results).glob("*/fold*/history.csv")):
        name, fold = h.parent.parent.name, h.parent.name
        label = name.split("+")[0]
        if label == "Teacher" or (runs and label not in runs): continue
        if student and settings_of(name)[1] != (() if student == "s" else (("student", student),)): continue
        d = pd.read_csv(h)
        hit = d.epoch[d.val_dice > above]
        rows.append(dict(run=name, fold=fold, first=hit.iloc[0] if len(hit) else float("nan"), epochs=int(d.epoch.max())))
    if not rows: raise SystemExit(f"{results}: no student run folders with a history.csv" + (f" among {runs}" if runs else ""))
    return pd.DataFrame(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", type=Path); p.add_argument("--runs", nargs="*", help="labels to keep (seeds and sweeps included), e.g. Student")
    p.add_argument("--above", type=float, default=0.2, help="validation Dice threshold (0..1)")
    p.add_argument("--each", action="store_true", help="also print each run folder's first epoch")
    p.add_argument("--student", default=None, help="only this student size's folders (xs, s, m, l; s: no named setting)")
    a = p.parse_args(argv)
    if not a.results.is_dir(): p.error(f"{a.results}: no such results folder")
    df = first_epochs(a.results, a.runs, a.above, a.student)
    never = df[df["first"].isna()]
    q = df["first"].dropna().quantile([0, 0.25, 0.5, 0.75, 1]).tolist()
    print(f"{a.results}: {len(df)} student runs; first epoch with validation Dice > {100 * a.above:.0f} %: "
          f"min {q[0]:.0f}, quartiles {q[1]:.0f} / {q[2]:.0f} / {q[3]:.0f}, max {q[4]:.0f}; never: {len(never)}"
          + (f" ({', '.join(never.run + '/' + never.fold)})" if len(never) else ""))
    if a.each: print(df.to_string(index=False))
    return df


if __name__ == "__main__":
    main()
