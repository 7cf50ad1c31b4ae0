"""Measure: how well the weak-to-strong affine carries a teacher's target into the student's frame.

For `teacher_aug='weak'` the teacher sees a weak view and the student a strong view made from it;
`carry_to_student` warps the teacher's output by the affine between them. For logits (full
resolution) that is exact up to interpolation; for the stride-32 encoder output of the H and HR
paths it can only be approximate. This script compares, for the draws where the affine was
applied (p = 0.5: shift, scale and rotation up to 45 degrees), on a trained teacher and real images,
the carried target with the teacher's own output on the student's view (what a perfect carry
would give): Pearson correlation over valid positions, per draw, median and quartiles, for

  logits  = the teacher's lesion-minus-background logit, full resolution;
  hidden  = its encoder output (stage -1), all channels;
and, as the reference, `none` = the same hidden features without the carry (weak view as is).

    python bench/hidden_alignment.py results/quick-busi163 --fold 0 --draws 5
"""
import argparse
from pathlib import Path

import numpy as np, torch
from kdbus.augment import AlignedViews, carry_to_student
from teacher_range import fold_teacher

def corr(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> float:
    "Pearson correlation of a and b (C x h x w) over the positions where valid (1 x h x w) is 1."
    m = valid[0] > 0.5
    x, y = a[:, m].flatten().double(), b[:, m].flatten().double()
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1]) if m.sum() > 1 else float('nan')

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results"); p.add_argument("--fold", type=int, default=0); p.add_argument("--draws", type=int, default=5)
    a = p.parse_args(argv)
    tdir = Path(a.results) / "Teacher" / f"fold{a.fold}"
    t, cfg, data, fold = fold_teacher(a.results, a.fold)  # bench/teacher_range.py, beside this script
    views = AlignedViews(cfg.size, 'weak', seed=0)
    out = {'logits': [], 'hidden': [], 'none': []}
    with torch.no_grad():
        for _ in range(a.draws):
            for i in fold.val:
                v = views(data.images[i], data.masks[i])
                th = torch.from_numpy(v['theta'])[None]
                if np.allclose(v['theta'], np.eye(2, 3), atol=1e-6): continue  # the affine was not applied: nothing to carry
                xt, xs = torch.from_numpy(v['teacher'])[None], torch.from_numpy(v['student'])[None]
                lt, ls = (lambda z: (z[:, 1:] - z[:, :1]))(t(xt)), (lambda z: (z[:, 1:] - z[:, :1]))(t(xs))
                lc, lv = carry_to_student(lt, th)
                out['logits'].append(corr(lc[0], ls[0], lv[0]))
                ht, hs = t.encoder(xt)[-1], t.encoder(xs)[-1]
                hc, hv = carry_to_student(ht, th)
                out['hidden'].append(corr(hc[0], hs[0], hv[0]))
                out['none'].append(corr(ht[0], hs[0], torch.ones_like(hs[:1, 0])))
    print(f"{tdir}: {len(out['none'])} draws with an affine, of {len(fold.val)} validation images x {a.draws} ({cfg.data}, {cfg.size} px)")
    for k, v in out.items():
        q = np.nanpercentile(v, [25, 50, 75])
        print(f"  {k:7s} correlation with the teacher on the student's view: median {q[1]:.2f} (quartiles {q[0]:.2f}-{q[2]:.2f})")

if __name__ == "__main__": main()
