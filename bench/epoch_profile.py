"""Benchmark: where one quick epoch's seconds go, for the Teacher, the Student and one KD run of each path (issue 27).

Each run trains epochs with kdbus's own loop (`kdbus.train.fit`, the quick profile, one fold of the data) while
timers wrap the parts of an epoch, without changing what it computes:

  data       building the samples: `KDDataset.__getitem__` (augmentation of both views; the collation is in step);
  teacher    the teacher's forward pass inside a KD step (`Distiller.teacher_target`: its logits or encoder features);
  validate   `kdbus.train.validate` (the validation pass and its Dice);
  save       the checkpoint and history writes (`atomic_save`, `atomic_write`);
  step       the rest of the epoch: the student's forward, the losses, backward and the optimiser step.

The teacher of a KD run has random weights (an untrained teacher costs as a trained one). The first epoch is a
warm-up and not counted; the table gives the mean of the next `--epochs` epochs, seconds and shares.

    OMP_NUM_THREADS=1 python bench/epoch_profile.py --data busi:../shared/data/busi-163 --out bench/epoch_profile.md
    python bench/epoch_profile.py --data synth:n=30 --epochs 1 --runs Student   # a dry run (seconds)

Shares are what to read: seconds depend on the machine and on its load (say which when quoting them).
"""
import argparse, tempfile, time, warnings
from contextlib import contextmanager
from pathlib import Path

import pandas as pd, torch
import kdbus.train as kt
from kdbus.augment import KDDataset
from kdbus.config import label_params, resolve_config
from kdbus.distill import Distiller
from kdbus.experiment import run_data

RUNS = ('Teacher', 'Student', 'L_KLD_WAug', 'H_KLD', 'HReg_KLD')  # one run of each kind
PARTS = ('data', 'teacher', 'validate', 'save', 'step')


class Timers:
    "Seconds per part, accumulated by the wrappers `install` puts around kdbus's functions."
    def __init__(self): self.s = dict.fromkeys(PARTS[:-1], 0.0)

    def wrap(self, part, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            try: return fn(*a, **k)
            finally: self.s[part] += time.perf_counter() - t
        return timed


@contextmanager
def install(timers: Timers):
    "Wrap the dataset, validation and writes of `kdbus.train` with `timers`; undone on exit."
    saved = dict(getitem=KDDataset.__getitem__, validate=kt.validate, save=kt.atomic_save, write=kt.atomic_write, target=Distiller.teacher_target)
    KDDataset.__getitem__ = timers.wrap('data', saved['getitem'])
    Distiller.teacher_target = timers.wrap('teacher', saved['target'])
    kt.validate, kt.atomic_save, kt.atomic_write = (timers.wrap(p, saved[k]) for p, k in (('validate', 'validate'), ('save', 'save'), ('save', 'write')))
    try: yield
    finally:
        KDDataset.__getitem__, kt.validate, kt.atomic_save, kt.atomic_write = saved['getitem'], saved['validate'], saved['save'], saved['write']
        Distiller.teacher_target = saved['target']


def profile_run(label: str, data: str, fold: int, epochs: int, tmp: Path) -> dict:
    "Seconds per part of one epoch of run `label` (the mean of `epochs` epochs after one warm-up epoch)."
    cfg = resolve_config('quick', **label_params(label), data=data, fold=fold, epochs=epochs + 1, warmup_epochs=0, patience=10**6)
    d, f = run_data(cfg)
    train, val = d.subset(f.train), d.subset(f.val)
    teacher = kt.build_step(cfg.teacher_config()).student.eval() if cfg.is_kd else None
    step = kt.build_step(cfg, teacher)
    timers, marks = Timers(), []
    real_update = kt.Selector.update
    def update(self, row):  # the end of each epoch's training and validation: snapshot the timers
        marks.append((time.perf_counter(), dict(timers.s))); return real_update(self, row)
    kt.Selector.update = update
    try:
        with install(timers):
            kt.fit(step, cfg, train, val, tmp/label, progress=False)
    finally: kt.Selector.update = real_update
    # epoch e runs from marks[e-1] (the previous epoch's selection) to marks[e]; its saves come after its mark:
    # count an epoch as the span between consecutive marks, which holds one epoch's training, validation and the previous saves
    (a, sa), (b, sb) = marks[0], marks[-1]
    n = len(marks) - 1
    wall = (b - a) / n
    parts = {p: (sb[p] - sa[p]) / n for p in timers.s}
    parts['step'] = wall - sum(parts.values())
    return dict(run=label, seconds=wall, **parts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="synth"); p.add_argument("--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2, help="epochs measured after one warm-up epoch")
    p.add_argument("--runs", default=','.join(RUNS), help="comma-separated runs")
    p.add_argument("--out", help="also write the Markdown table here")
    a = p.parse_args(argv)
    if a.epochs < 1: raise SystemExit(f"--epochs {a.epochs}: expected at least 1")
    warnings.simplefilter('ignore')
    with tempfile.TemporaryDirectory() as tmp:
        rows = [profile_run(r, a.data, a.fold, a.epochs, Path(tmp)) for r in a.runs.split(',')]
    df = pd.DataFrame(rows)
    head = (f"one quick epoch, where the seconds go: data {a.data}, fold {a.fold}, {torch.get_num_threads()} thread(s), "
            f"mean of {a.epochs} epoch(s) after 1 warm-up, torch {torch.__version__}")
    lines = [head, "", "| run | s/epoch | " + " | ".join(PARTS) + " |", "|---|---|" + "---|" * len(PARTS)]
    for r in rows:
        lines.append(f"| {r['run']} | {r['seconds']:.1f} | " + " | ".join(f"{r[q]:.1f} ({100 * r[q] / r['seconds']:.0f} %)" for q in PARTS) + " |")
    text = "\n".join(lines)
    print(text)
    if a.out: Path(a.out).write_text(text + "\n")
    return df


if __name__ == "__main__": main()
