"""Study (issue 27): how far a student's float32 gradients of one training step are from float64's, contiguous and
channels-last on the CPU. The relative error ||g32 - g64|| / ||g64|| per parameter tensor (those with ||g64|| > 1e-6),
its median, 90th percentile and maximum, for one batch of 8 random images with a random mask, cross-entropy loss.

    OMP_NUM_THREADS=1 python bench/layout_precision.py --student s      # about 10 s
    python bench/layout_precision.py --student s --device cuda           # the same on a GPU (not run here: none lent)

Float32's own rounding puts the contiguous step near 1e-6; a layout that adds error shows above it.
"""
import argparse, copy

import torch

from kdbus.models import STUDENT_SIZES, build_model, student_size
from kdbus.train import pick_device

def step_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    "The parameters' gradients (float64 copies) of one cross-entropy step of `model` in training mode."
    model.train(); model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return {n: p.grad.detach().double().clone() for n, p in model.named_parameters()}

def errors(student: str = 's', size: int = 128, batch: int = 8, seed: int = 0,
           device: str = 'cpu') -> dict[str, tuple[float, float, float]]:
    "Per layout: (median, p90, max) relative gradient error against the same step in float64."
    torch.manual_seed(seed)
    m = build_model(student_size(student, 'quick-pretrained'), device)
    x = torch.randn(batch, 3, size, size).to(device)
    y = (torch.rand(batch, size, size) > 0.7).long().to(device)
    ref = step_grads(copy.deepcopy(m).double(), x.double(), y)
    out = {}
    for name, fmt in (('contiguous', torch.contiguous_format), ('channels_last', torch.channels_last)):
        g = step_grads(copy.deepcopy(m).to(memory_format=fmt), x.contiguous(memory_format=fmt), y)
        rel = sorted(((g[n] - ref[n]).norm() / ref[n].norm()).item() for n in ref if ref[n].norm() > 1e-6)
        out[name] = (rel[len(rel) // 2], rel[int(0.9 * len(rel))], rel[-1])
    return out

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--student', default='s', help=f"a student size: {', '.join(STUDENT_SIZES)}")
    p.add_argument('--size', type=int, default=128); p.add_argument('--batch', type=int, default=8)
    p.add_argument('--device', default='cpu', help="'cpu' or a CUDA device (TF32 turned off there)")
    a = p.parse_args(argv)
    if a.student not in STUDENT_SIZES: p.error(f"--student {a.student}: expected one of {', '.join(STUDENT_SIZES)}")
    try: device = pick_device(a.device)
    except ValueError as e: p.error(f"--device: {e}")
    if device.type == 'cuda': torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # this process only
    res = errors(a.student, a.size, a.batch, device=str(device))
    where = torch.cuda.get_device_name(a.device) if a.device != 'cpu' else torch.backends.cpu.get_cpu_capability()
    print(f"student {a.student}, batch {a.batch} at {a.size} px, torch {torch.__version__}, {where}: "
          "relative gradient error against float64")
    for name, (med, p90, mx) in res.items(): print(f"{name:14s} median {med:.1e}  p90 {p90:.1e}  max {mx:.1e}")
    return res

if __name__ == '__main__': main()
