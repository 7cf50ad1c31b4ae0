"""Measure: the range of a trained teacher's hidden features, which the H and HR students must match.

Loads OUT/Teacher/fold<k>/best.pt, runs it on that fold's validation images (un-augmented) and
reports, at the distilled stage, the share of negative entries, the share below -0.375 (the
minimum of hardswish, the activation of the MobileNetV3 student's encoder output), and the range.
A regressor ending in a ReLU (the paper's R) can reach none of the negative entries; that is why
`kdbus.models.regressor_for(final_relu='auto')` drops the ReLU for a signed teacher.

    python bench/teacher_range.py results/quick-busi163 --fold 0      # needs that fold's best.pt
"""
import argparse, json, warnings
from pathlib import Path

import numpy as np, torch
from kdbus.augment import normalize
from kdbus.config import RunConfig
from kdbus.experiment import run_data
from kdbus.models import tap_features
from kdbus.train import load_model

HARDSWISH_MIN = -0.375  # min over x of x * relu6(x + 3) / 6, at x = -1.5

def fold_teacher(results: str, fold: int):
    "The trained Teacher of `fold` in a results folder, with its config, data and fold: (teacher, cfg, data, fold)."
    tdir = Path(results) / "Teacher" / f"fold{fold}"
    for f in ("best.pt", "config.json"):
        if not (tdir / f).is_file(): raise SystemExit(f"{tdir / f} is missing: train that teacher first (kdbus grid ... --folds {fold})")
    warnings.simplefilter("ignore")
    cfg = RunConfig.from_dict({**json.loads((tdir / "config.json").read_text())["config"], "out_dir": results})
    data, f = run_data(cfg)
    return load_model(tdir / "best.pt").eval(), cfg, data, f

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results"); p.add_argument("--fold", type=int, default=0)
    a = p.parse_args(argv)
    tdir = Path(a.results) / "Teacher" / f"fold{a.fold}"
    teacher, cfg, data, fold = fold_teacher(a.results, a.fold)
    x = torch.from_numpy(np.stack([normalize(im) for im in data.images[fold.val]]))
    with torch.no_grad(), tap_features(teacher, cfg.stage) as tap: teacher(x)
    z = tap.features[0]
    print(f"{tdir} ({teacher.kdbus_spec.encoder}), stage {cfg.stage}, {len(x)} validation images of {cfg.data}: "
          f"features {tuple(z.shape[1:])}; negative {float((z < 0).float().mean()):.1%}, below {HARDSWISH_MIN} "
          f"{float((z < HARDSWISH_MIN).float().mean()):.1%}; min {float(z.min()):.2f}, max {float(z.max()):.2f}")

if __name__ == "__main__": main()
