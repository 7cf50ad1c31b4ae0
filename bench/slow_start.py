"""A quick-profile Student on one fold of a BUSI folder: its validation Dice per epoch, and at the last epoch the share of each
decoder block's channels that are zero on every validation pixel (dead ReLUs would keep a student on the empty mask).

    python bench/slow_start.py ../shared/data/busi-163 --seed 1 --fold 2 --epochs 25            # dead channels? (README: none)
    python bench/slow_start.py ../shared/data/busi-163 --seed 1 --fold 2 --epochs 60 --lr 1e-3  # the plain baseline's lr
    python bench/slow_start.py ../shared/data/busi-163 --seed 2 --fold 2 --epochs 30 --student m --sup-loss dice_ce
It trains into a temporary folder (about 1 min per 25 epochs on one thread) and keeps nothing.
"""
import argparse, tempfile, warnings
from pathlib import Path
import torch
from kdbus.augment import KDDataset
from kdbus.config import resolve_config
from kdbus.experiment import run_data
from kdbus.train import build_step, fit

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('busi', type=Path, help='a BUSI folder (benign/, malignant/)')
    p.add_argument('--seed', type=int, default=1); p.add_argument('--fold', type=int, default=2)
    p.add_argument('--epochs', type=int, default=25); p.add_argument('--lr', type=float, default=None, help="None: the quick profile's 3e-3")
    p.add_argument('--student', default=None, help="a student size (xs, s, m, l); None: the quick profile's (s)")
    p.add_argument('--sup-loss', default='ce', help="the supervised loss: ce (the paper's) or dice_ce")
    a = p.parse_args()
    if not a.busi.is_dir(): p.error(f"{a.busi}: no such folder; expected a BUSI folder such as ../shared/data/busi-163")
    warnings.simplefilter('ignore')
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config('quick', path='none', data=f"busi:{a.busi.resolve()}", fold=a.fold, seed=a.seed, split_seed=0,
                             epochs=a.epochs, out_dir=tmp, student=a.student, sup_loss=a.sup_loss,
                             **({} if a.lr is None else dict(lr=a.lr)))
        data, fold = run_data(cfg)
        step = build_step(cfg)
        r = fit(step, cfg, data.subset(fold.train), data.subset(fold.val), progress=False)
        print("validation Dice by epoch:", ' '.join(f"{v:.3f}" for v in r.history.val_dice))
        print(f"kept epoch {r.best_epoch}, collapsed {r.collapsed}")
        step.load_state_dict(torch.load(cfg.run_dir/'last.pt', weights_only=True)['model'])  # the last epoch, not the kept one
    model, acts = step.student.eval(), {}
    for i, b in enumerate(model.decoder.blocks): b.register_forward_hook(lambda m, x, out, i=i: acts.__setitem__(i, out))
    val = data.subset(fold.val)
    ds = KDDataset(val.images, val.masks, train=False)
    with torch.no_grad(): pred = model(torch.stack([ds[i]['student'] for i in range(len(ds))])).argmax(1)
    print(f"last epoch: lesion pixels predicted {100 * (pred == 1).float().mean():.2f} %")
    for i, o in acts.items():
        print(f"decoder block {i}: {o.shape[1]} channels, {100 * (o.amax(dim=(0, 2, 3)) <= 0).float().mean():.0f} % zero on every validation pixel")

if __name__ == '__main__':
    main()
