"""How confident is a trained teacher on lesion pixels? Its logit margins (lesion - background) on a fold's
validation images, by the pixel's true class, and the share of lesion pixels whose decoder features are all 0.

usage: python bench/teacher_margins.py RESULTS_DIR FOLD      (RESULTS_DIR/Teacher/fold<FOLD>/best.pt must exist)
"""
import json, sys, warnings
from pathlib import Path

import torch

from kdbus.augment import normalize
from kdbus.config import RunConfig
from kdbus.experiment import run_data
from kdbus.train import load_model

warnings.simplefilter('ignore'); torch.set_num_threads(1)
run = Path(sys.argv[1])/'Teacher'/f"fold{int(sys.argv[2])}"
cfg = RunConfig.from_dict(json.loads((run/'config.json').read_text())['config'])
data, fold = run_data(cfg)
teacher = load_model(run/'best.pt')
x = torch.stack([torch.from_numpy(normalize(data.images[i])) for i in fold.val])
lesion = torch.from_numpy(data.masks[fold.val]).bool()
feats = {}
teacher.segmentation_head.register_forward_hook(lambda mod, inp, out: feats.__setitem__('head_input', inp[0]))
with torch.no_grad(): z = teacher(x)
margin = z[:, 1] - z[:, 0]
q = lambda v: ', '.join(f"{float(v.quantile(p)):+.2f}" for p in (0.05, 0.5, 0.95))
dead = feats['head_input'].amax(1) == 0
print(f"{run} ({len(fold.val)} validation images, decoder features into the head: {feats['head_input'].shape[1]})")
print(f"  margin on background pixels, 5/50/95 %: {q(margin[~lesion])}")
print(f"  margin on lesion pixels,     5/50/95 %: {q(margin[lesion])}")
print(f"  lesion pixels predicted lesion: {float((margin[lesion] > 0).float().mean()):.2f}; "
      f"with all decoder features 0: {float(dead[lesion].float().mean()):.2f} (background: {float(dead[~lesion].float().mean()):.3f})")
