"""Study: do a run's results move when its models run channels-last on the CPU (issue 27)? The same runs of one fold,
trained with `channels_last='off'` (everything contiguous, what every committed CPU run used) and `'on'` (channels-last;
`'auto'` at commits e22fee1..f213dd7: the student and a KD run's frozen teacher channels-last; `'auto'` is contiguous on
the CPU since), distilling from one Teacher checkpoint, compared with the spread of the same run over seeds 0-2 in a
committed results folder. The Student alone needs no --teacher-from.

    OMP_NUM_THREADS=1 python bench/layout_results.py --data busi:/work/shared/data/busi-163 --teacher-from RESULTS \\
        --out /tmp/layouts --layouts off            # and, beside it, the same with --layouts on
    python bench/layout_results.py --data busi:/work/shared/data/busi-163 --teacher-from RESULTS --out /tmp/layouts \\
        --seeds-from results/quick-busi163 --md bench/layout_results.md   # both done: the table
RESULTS is a results folder whose Teacher/fold<F> holds a complete Teacher run with its best.pt (checkpoints are not
committed: a grid's worktree has them). Each run trains into OUT/<layout>/ (a killed run resumes); about 2.5 min for
the Student and 7 min for L_KLD_WAug on busi-163 with one thread.
"""
import argparse, shutil, statistics, warnings
from pathlib import Path
import pandas as pd
import torch
from kdbus.config import label_params, resolve_config
from kdbus.experiment import run_experiment
from kdbus.runfolder import BEST, METRICS, read_json

def config(label, seed, fold, data, out, **kw):
    "The quick run `label` of `seed` on `fold` in results folder `out` (a replicate keeps seed 0's folds, as the grid's)."
    return resolve_config('quick', **label_params(label), data=data, fold=fold, seed=seed,
                          split_seed=None if seed == 0 else 0, out_dir=str(out), **kw)

def run_dir(root: Path, label: str, seed: int, fold: int, data: str = 'synth') -> Path:
    "That run's folder under `root`, named by kdbus's own rule (`RunConfig.name`: 'Student', 'Student+seed=1')."
    return config(label, seed, fold, data, root).run_dir

def train(label, layout, seed, a):
    "Train (or read back) `label` of `seed` on fold `a.fold` with `channels_last=layout` in OUT/<layout>/; its metrics."
    return run_experiment(config(label, seed, a.fold, a.data, a.out/layout, channels_last=layout), progress=False)

def seed_spread(results: Path, label: str, fold: int) -> float|None:
    "SD over seeds 0-2 of `label`'s test DSC (%) on `fold` in a results folder; None if a seed is missing."
    runs = [run_dir(results, label, s, fold)/METRICS for s in (0, 1, 2)]
    if not all(p.is_file() for p in runs): return None
    return statistics.stdev(100 * read_json(p)['dice_mean'] for p in runs)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', required=True); p.add_argument('--fold', type=int, default=0)
    p.add_argument('--teacher-from', type=Path, default=None,
                   help='a results folder with Teacher/fold<F>/best.pt (needed for KD labels only)')
    p.add_argument('--out', type=Path, required=True)
    p.add_argument('--layouts', default='off,on', help='the layouts to train (OUT/<layout>/), one or two')
    p.add_argument('--compare', default='off,on', help="the two layouts of the table (off,auto for runs made at "
                   "e22fee1..f213dd7, when 'auto' on the CPU meant channels-last for all but the Teacher's training)")
    p.add_argument('--labels', default='Student,L_KLD_WAug')
    p.add_argument('--seeds', default='0', help='comma-separated seeds (each KD seed distils from its own seed\'s Teacher)')
    p.add_argument('--seeds-from', type=Path, default=None, help='a results folder with seeds 0-2 of the labels')
    p.add_argument('--md', type=Path, default=None, help='also write the table here')
    a = p.parse_args(argv)
    layouts, labels, seeds = a.layouts.split(','), a.labels.split(','), [int(x) for x in a.seeds.split(',')]
    pair = a.compare.split(',')
    for name, v in (('--layouts', layouts), ('--compare', pair)):
        if not set(v) <= {'off', 'on', 'auto'} or len(v) != len(set(v)) or (name == '--compare' and len(v) != 2):
            p.error(f"{name} {','.join(v)}: expected {'two' if name == '--compare' else 'one or two'} of off, on, auto")
    x, y = pair
    if 'auto' in layouts and not torch.cuda.is_available():
        p.error("--layouts auto: on the CPU 'auto' is contiguous since d220f0c (it would train 'off' into OUT/auto, beside "
                "runs made when it meant channels-last); train 'on' instead")
    kd = [l for l in labels if l not in ('Teacher', 'Student')]
    if kd and a.teacher_from is None: p.error(f"--teacher-from is needed for the KD label(s) {', '.join(kd)}")
    for seed in seeds if kd else ():
        teacher = run_dir(a.teacher_from, 'Teacher', seed, a.fold)
        if not (teacher/BEST).is_file() or not (teacher/METRICS).is_file():
            p.error(f"--teacher-from {a.teacher_from}: {teacher} holds no complete Teacher run with its {BEST}")
    warnings.simplefilter('ignore')
    for layout in layouts:
        for seed in seeds:
            dst = run_dir(a.out/layout, 'Teacher', seed, a.fold)
            if kd and not dst.exists(): shutil.copytree(run_dir(a.teacher_from, 'Teacher', seed, a.fold), dst)
            for label in labels:
                print(label, layout, seed, f"{100 * train(label, layout, seed, a)['dice_mean']:.2f}", flush=True)
    done = lambda lab, s: all((run_dir(a.out/lay, lab, s, a.fold)/METRICS).is_file() for lay in pair)
    rows = []
    for label in labels:
        both = [s for s in (0, 1, 2) if done(label, s)]
        if not both: continue
        dsc = {lay: [100 * read_json(run_dir(a.out/lay, label, s, a.fold)/METRICS)['dice_mean'] for s in both]
               for lay in pair}
        sd = {lay: statistics.stdev(v) if len(v) > 1 else None for lay, v in dsc.items()}
        ref = seed_spread(a.seeds_from, label, a.fold) if a.seeds_from else None
        rows.append({'run': label, 'seeds': ','.join(map(str, both)),
                     f"DSC (%), '{x}', per seed": ' / '.join(f"{v:.2f}" for v in dsc[x]),
                     f"'{y}', per seed": ' / '.join(f"{v:.2f}" for v in dsc[y]),
                     f'{y} - {x}, mean': round(statistics.mean(dsc[y]) - statistics.mean(dsc[x]), 2),
                     f"seed SD '{x}' / '{y}'": ' / '.join('-' if v is None else f"{v:.2f}" for v in sd.values()),
                     'seed SD, committed runs': None if ref is None else round(ref, 2)})
    table = pd.DataFrame(rows).to_markdown(index=False)
    head = (f"channels_last '{x}' against '{y}' on the CPU: data {a.data}, fold {a.fold}; "
            + (f"each seed's KD run distils from that seed's Teacher checkpoint (from {a.teacher_from}) in both layouts; "
               if a.teacher_from else '') + f"committed seed SD from {a.seeds_from}\n\n")
    print(head + table)
    if a.md: a.md.write_text(head + table + "\n")

if __name__ == '__main__':
    main()
