"""Benchmark: what a quick-profile run costs, before and after the "students that learn" recipe (issue 16), or with
everything contiguous against everything channels-last on the CPU (`--compare layout`, issue 27; `quick_cost_layout.md`
was made when `channels_last='auto'` meant channels-last for every run but the Teacher's, before the CPU's channels-last
batch norm was found to train imprecisely: see nbs/07_train.ipynb).

before = the quick profile as it was (ResNet-18 U-Net teacher from scratch with a slim decoder,
         50 epochs, patience 15, constant lr, checkpoint at the lowest validation loss);
after  = the quick profile now (ImageNet EfficientNet-Lite0 U-Net teacher with smp's default decoder,
         60 epochs, patience 20, warm-up + cosine, checkpoint at the best validation Dice).
The student, the image size (128 px) and the batch size (8) are the same in both.

For one run of each kind (Teacher, Student, and one KD run per path: L_KLD_WAug, H_KLD, HReg_KLD),
both recipes are timed in interleaved rounds (`kdbus.bench.time_interleaved`): each call is one
epoch of kdbus's own training loop (`kdbus.train.fit` with epochs=1: training, validation and the
checkpoint writes) on the training and validation images of one fold. Medians per epoch, then

  minutes per run = seconds per epoch x epochs, with two epoch counts: the budget (50 before,
                    60 after; what a run costs at most) and the mean epochs actually run by the
                    committed grid of that recipe (runs.csv: early stopping included);
  minutes per fold = the 14 runs of a fold (Teacher, Student, 4 runs of the L path, 4 of the H
                    path, 4 of HReg, each costed as its path's representative).

    OMP_NUM_THREADS=1 python bench/quick_cost.py --data busi:../shared/data/busi-163
    OMP_NUM_THREADS=1 python bench/quick_cost.py --data busi:../shared/data/busi-163 --compare layout --out bench/quick_cost_layout.md
    python bench/quick_cost.py --rounds 1 --warmup 0 --data synth:n=30   # a dry run (seconds)
Ratios (after / before) are measured in one run, on one machine: compare them, not the seconds,
with other machines.
"""
import argparse, statistics, tempfile, warnings
from pathlib import Path

import pandas as pd, torch
from kdbus.bench import time_interleaved
from kdbus.config import LEGACY_FIELDS, label_params, resolve_config
from kdbus.experiment import run_data
from kdbus.train import build_step, fit

# what is compared: overrides of the quick profile for 'before' and 'after' (per-epoch cost depends only on the models,
# size, batch and runtime settings), the profile's maximum epochs and the committed grid whose epochs run each stands for
COMPARISONS = {
    'recipe': dict(  # issue 16: the "students that learn" recipe
        title='before / after issue 16',
        recipes={'before': dict(LEGACY_FIELDS, model_preset='quick'),  # the rules of runs made before the recipe fields
                 'after': dict(warmup_epochs=0)},  # warm-up changes the learning rate, not the cost (epoch-1 runs need <= 1)
        budget={'before': 50, 'after': 60},
        grids={'before': 'results/earlier-recipe-synth/runs.csv', 'after': 'results/quick-busi163/runs.csv'}),
    'layout': dict(  # issue 27: channels-last on the CPU against everything contiguous ('auto' is contiguous there)
        title="channels_last='off' / 'on' (issue 27)",
        recipes={'before': dict(warmup_epochs=0, channels_last='off'), 'after': dict(warmup_epochs=0, channels_last='on')},
        budget={'before': 60, 'after': 60},
        grids={'before': 'results/quick-busi163/runs.csv', 'after': 'results/quick-busi163/runs.csv'}),
}
KINDS = {'Teacher': 'Teacher', 'Student': 'Student', 'L_KLD_WAug': 'L', 'H_KLD': 'H', 'HReg_KLD': 'HReg'}  # timed run -> path
PER_FOLD = {'Teacher': 1, 'Student': 1, 'L': 4, 'H': 4, 'HReg': 4}  # runs of each kind in one fold of the grid

def path_of(label: str) -> str:
    "Teacher, Student, or the KD path (L, H, HReg) of a Table 4 row."
    return label if label in ('Teacher', 'Student') else label.split('_')[0]

def epoch_call(label, overrides, data, fold, tmp, name):
    "A call that trains one epoch of run `label` with `overrides` of the quick profile in kdbus's loop, in a fresh folder each time."
    cfg = resolve_config('quick', **label_params(label), data=data, fold=fold, epochs=1, **overrides)
    d, f = run_data(cfg)
    train, val = d.subset(f.train), d.subset(f.val)
    teacher = build_step(cfg.teacher_config()).student.eval() if cfg.is_kd else None  # untrained: costs as a trained one
    step, calls = build_step(cfg, teacher), iter(range(10**6))
    return lambda: fit(step, cfg, train, val, Path(tmp)/f"{label}-{name}-{next(calls)}", progress=False)

def mean_epochs(csv: str) -> dict:
    "Mean epochs run per kind (Teacher, Student, L, H, HReg) in a committed grid's runs.csv."
    df = pd.read_csv(csv)
    return df.assign(kind=df.label.map(path_of)).groupby('kind').epochs_run.mean().to_dict()

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="synth"); p.add_argument("--fold", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3); p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", help="also write the Markdown table here")
    p.add_argument("--compare", choices=sorted(COMPARISONS), default='recipe',
                   help="recipe: before/after issue 16 (default); layout: channels_last 'off' against 'on' (issue 27)")
    a = p.parse_args(argv)
    cmp = COMPARISONS[a.compare]
    recipes, budget, grids = cmp['recipes'], cmp['budget'], cmp['grids']
    for k, csv in grids.items():
        if not Path(csv).is_file(): raise SystemExit(f"{csv} (the committed {k} grid) is missing: run from the repository root")
    runs = {r: mean_epochs(grids[r]) for r in recipes}
    warnings.simplefilter('ignore')
    with tempfile.TemporaryDirectory() as tmp:
        fns = {(lab, r): epoch_call(lab, recipes[r], a.data, a.fold, tmp, r) for lab in KINDS for r in recipes}
        t = time_interleaved(fns, warmup=a.warmup, repeats=a.rounds)
    sec = {k: statistics.median(v) for k, v in t.items()}
    rows = []
    for lab, kind in KINDS.items():
        b, f = sec[lab, 'before'], sec[lab, 'after']
        rows.append(dict(kind=kind, run=lab, s_before=b, s_after=f, min_budget_before=b * budget['before'] / 60,
                         min_budget_after=f * budget['after'] / 60, min_run_before=b * runs['before'][kind] / 60,
                         min_run_after=f * runs['after'][kind] / 60))
    df = pd.DataFrame(rows)
    fold = {c: float((df[c] * df.kind.map(PER_FOLD)).sum()) for c in df.columns if c.startswith('min_')}
    head = (f"quick-profile cost, {cmp['title']}: data {a.data}, fold {a.fold}, {torch.get_num_threads()} thread(s), "
            f"median of {a.rounds} interleaved round(s) of one epoch each after {a.warmup} warm-up, torch {torch.__version__}; "
            f"epochs run: mean per kind of {grids['before']} (before) and {grids['after']} (after)")
    lines = [head, "",
             "| run | s/epoch before | s/epoch after | ratio | min/run at budget before | after | ratio | min/run as run before | after | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['s_before']:.1f} | {r['s_after']:.1f} | {r['s_after'] / r['s_before']:.2f} "
                     f"| {r['min_budget_before']:.1f} | {r['min_budget_after']:.1f} | {r['min_budget_after'] / r['min_budget_before']:.2f} "
                     f"| {r['min_run_before']:.1f} | {r['min_run_after']:.1f} | {r['min_run_after'] / r['min_run_before']:.2f} |")
    lines.append(f"| **one fold (14 runs)** | | | | {fold['min_budget_before']:.0f} | {fold['min_budget_after']:.0f} "
                 f"| {fold['min_budget_after'] / fold['min_budget_before']:.2f} | {fold['min_run_before']:.0f} | {fold['min_run_after']:.0f} "
                 f"| {fold['min_run_after'] / fold['min_run_before']:.2f} |")
    lines.append(f"\nepochs/s per run kind (after): " + ", ".join(f"{r['run']} {1 / r['s_after']:.2f}" for r in rows))
    text = "\n".join(lines)
    print(text)
    if a.out: Path(a.out).write_text(text + "\n")
    return df

if __name__ == "__main__": main()
