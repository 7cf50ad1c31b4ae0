"""Does the synthetic set need more than 60 quick epochs? Rerun runs that were still improving at epoch 60 with a longer budget.

    OMP_NUM_THREADS=1 python bench/epochs_probe.py [--epochs 90] [--out /tmp/epochs-probe] [--teachers results/quick60-synth]

Trains the student alone of fold 2 and H_KLD of fold 0 (both had their best validation Dice in the
last 6 of 60 epochs in `results/quick60-synth`) with `--epochs` epochs, distilling from the 60-epoch
teacher of that grid (its checkpoint is linked when present, else trained again: about 15 minutes),
and prints where each run's best epoch lands. Used for `kdbus.config.DATA_EPOCHS` (06_config).
"""
import argparse, os
from pathlib import Path

import pandas as pd

from kdbus.config import RunConfig, resolve_config
from kdbus.experiment import run_experiment

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--epochs', type=int, default=90)
    ap.add_argument('--out', default='/tmp/epochs-probe')
    ap.add_argument('--teachers', default='results/quick60-synth', help='a 60-epoch quick synth grid whose Teacher folders to reuse')
    a = ap.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    src = Path(a.teachers).absolute() / 'Teacher'
    if src.is_dir() and not (out / 'Teacher').exists(): os.symlink(src, out / 'Teacher')
    teacher_config = RunConfig.teacher_config
    RunConfig.teacher_config = lambda self: teacher_config(self).replace(epochs=60)  # the measured question: the students' budget, same teacher
    rows = []
    for path, loss, aug, fold in (('none', None, None, 2), ('hidden', 'kld', 'strong', 0)):
        cfg = resolve_config('quick', path=path, loss=loss, teacher_aug=aug, fold=fold, data='synth', epochs=a.epochs, out_dir=str(out))
        m = run_experiment(cfg)
        h = pd.read_csv(cfg.run_dir / 'history.csv')
        rows.append(dict(run=f"{cfg.label}/fold{fold}", epochs=a.epochs, best_epoch=m['best_epoch'], best_val_dice=round(m['best_val_dice'], 4),
                         in_last_10pct=m['best_epoch'] > 0.9 * a.epochs, test_dice=round(100 * m['dice_mean'], 2), minutes=round(h.seconds.sum() / 60, 1)))
    print(pd.DataFrame(rows).to_markdown(index=False))

if __name__ == '__main__': main()
