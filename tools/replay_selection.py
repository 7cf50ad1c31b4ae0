"""Replay committed training histories through today's `Selector`: which runs would keep another epoch, stop elsewhere or count as collapsed.

Usage: python tools/replay_selection.py [RESULTS_DIR ...]   (default: every folder under results/)
A run is replayed when its history has `val_nonempty` and its data can be loaded here (busi:... needs the folder).
"""
import sys
from pathlib import Path
import pandas as pd
from kdbus.data import parse_spec
from kdbus.config import RunConfig
from kdbus.experiment import run_data
from kdbus.runfolder import HISTORY, METRICS, read_config, read_json
from kdbus.train import Selector, full_mask_dice

def replay(run_dir: Path) -> dict|None:
    "The kept epoch, stop epoch and collapsed flag of `run_dir` under the current rule, beside the recorded ones; None if it cannot be replayed."
    cfg, hist = RunConfig.from_dict(read_config(run_dir)['config']), pd.read_csv(run_dir/HISTORY)
    if 'val_nonempty' not in hist or (parse_spec(cfg.data).kind != 'synth' and not Path(parse_spec(cfg.data).root).exists()): return None
    data, fold = run_data(cfg)
    masks = data.masks[fold.val]
    sel, stop = Selector(cfg.select, cfg.patience, cfg.warmup_epochs, bool(masks.any()), full_mask_dice(masks)), None
    for row in hist.to_dict('records'):
        sel.update(row)
        if sel.stop: stop = int(row['epoch']); break
    m = read_json(run_dir/METRICS)
    old_stop = m['epochs_run'] if m['stopped'] == 'early' else None
    return dict(run=str(run_dir), full_mask_dice=round(full_mask_dice(masks), 3), best=m['best_epoch'], best_now=sel.best['epoch'],
                stop=old_stop, stop_now=stop, collapsed=m['collapsed'], collapsed_now=sel.collapsed)

if __name__ == '__main__':
    roots = [Path(a) for a in sys.argv[1:]] or [Path('results')]
    rows = [r for root in roots for d in sorted(root.glob('**/fold*/')) if (d/'metrics.json').exists() and (r := replay(d))]
    df = pd.DataFrame(rows)
    if df.empty: sys.exit("no run could be replayed (histories without val_nonempty, or data not found)")
    changed = df[(df.best != df.best_now) | (df.stop.fillna(-1) != df.stop_now.fillna(-1)) | (df.collapsed != df.collapsed_now)]
    print(f"{len(df)} runs replayed; full-mask validation Dice {df.full_mask_dice.min():.3f}-{df.full_mask_dice.max():.3f}; {len(changed)} changed:")
    print(changed.to_string(index=False) if len(changed) else "(none)")
