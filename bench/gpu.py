"""Device check: what the paper profile costs on one GPU, and the paper grid's wall time extrapolated from it.

On a CUDA machine (one run of at most about 8 minutes), with random weights (the cost does not depend on them;
the device has no internet):
- images/s of a training step of the teacher alone, the student alone, and each KD path (logits, hidden,
  hidden + regressor; KLD, weak teacher view), at the paper's 224 px and batch 64, in float32 and with automatic
  mixed precision (bf16 where the GPU supports it, else fp16 with a gradient scaler), channels-last;
- images/s of the data pipeline (`kdbus.augment.KDDataset` in a DataLoader with the given workers, pinned memory,
  persistent workers), to see whether it can feed the GPU;
- peak GPU memory of each step;
- images/s of N students trained at once on N CUDA streams (a proxy for `--parallel N` runs sharing the GPU);
- the 42-run paper grid's wall time, extrapolated from those rates and a stated number of epochs per run.
It writes gpu.md and gpu.csv (default: results/bench/) with the machine's name.

    bash bench/gpu.sh                 # on the GPU machine
    bash bench/gpu.sh --dry-run       # anywhere: the CPU, 32 px, batch 2, one step, into a temporary folder
"""
import argparse, json, os, platform, statistics, sys, tempfile, time
from pathlib import Path

import numpy as np, pandas as pd, torch

from kdbus.augment import KDDataset
from kdbus.config import resolve_config
from kdbus.distill import Distiller, KD_PATHS, run_name
from kdbus.losses import sup_loss
from kdbus.models import build_models
from kdbus.train import amp_dtype as run_amp_dtype

ROOT = Path(__file__).resolve().parents[1]


PAPER = resolve_config('paper', path='logits')  # its amp='auto': bf16 on a CUDA GPU that has it, else fp16


def amp_dtype(device: torch.device):
    "The trainer's mixed precision (`kdbus.train.amp_dtype`) for the paper profile on `device`; the CPU dry run forces bf16."
    return run_amp_dtype(PAPER.replace(amp='auto' if device.type == 'cuda' else 'bf16'), device)


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def step_fn(kind: str, teacher, student, batch: dict, device, amp: bool):
    "One training step of `kind` ('teacher', 'student' or a KD path) on `batch`, as a closure; its parameters' optimizer inside."
    dt = amp_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and dt == torch.float16)
    if kind in ('teacher', 'student'):
        model = teacher if kind == 'teacher' else student
        model.train(); model.requires_grad_(True)  # a Distiller built before froze the teacher
        params = model.parameters()
        loss_of = lambda b: sup_loss(model(b['student']), b['mask'])
    else:
        d = Distiller(teacher, student, path=kind, loss='kld', teacher_aug='weak').to(device).train()
        params = d.parameters()
        loss_of = lambda b: d(b)[1].total
    opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dt, enabled=amp):
            loss = loss_of(batch)
        scaler.scale(loss.float()).backward(); scaler.step(opt); scaler.update()
    return step


def rate(fn, images: int, device, warmup: int, steps: int) -> tuple[float, float]:
    "(images/s over `steps` timed calls after `warmup`, peak GPU memory in MB or nan)."
    for _ in range(warmup): fn()
    sync(device)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps): fn()
    sync(device)
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == 'cuda' else float('nan')
    return images * steps / (time.perf_counter() - t), mem


def batch_of(n: int, size: int, device, channels_last: bool) -> dict:
    "A collated KD batch (weak teacher view) of random images, on `device`."
    rng = np.random.default_rng(0)
    images = rng.random((n, size, size, 3), dtype=np.float32)
    masks = (rng.random((n, size, size)) > 0.7).astype(np.uint8)
    b = torch.utils.data.default_collate([KDDataset(images, masks, teacher_aug='weak', seed=0)[i] for i in range(n)])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return {k: (v.to(device, non_blocking=True).contiguous(memory_format=fmt) if v.ndim == 4 else v.to(device)) for k, v in b.items()}


def data_rate(n_images: int, size: int, batch: int, workers: int, device, batches: int) -> float:
    "Images/s the augmentation pipeline delivers to `device` (DataLoader, pinned memory, persistent workers)."
    rng = np.random.default_rng(1)
    ds = KDDataset(rng.random((n_images, size, size, 3), dtype=np.float32), (rng.random((n_images, size, size)) > 0.7).astype(np.uint8),
                   teacher_aug='weak', seed=0)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=device.type == 'cuda',
                                     persistent_workers=workers > 0, drop_last=True)
    it, seen = iter(dl), 0
    next(it)  # workers started
    t = time.perf_counter()
    for _ in range(batches):
        b = next(it, None)
        if b is None: it = iter(dl); b = next(it)
        b['student'].to(device, non_blocking=True); seen += len(b['student'])
    sync(device)
    return seen / (time.perf_counter() - t)


def parallel_rate(n: int, preset: str, batch: dict, device, amp: bool, warmup: int, steps: int) -> float:
    "Images/s of `n` students trained at once, each on its own CUDA stream (sequential on the CPU)."
    fns = []
    for _ in range(n):
        _, s = build_models(preset, device=device)
        fns.append(step_fn('student', None, s.to(memory_format=torch.channels_last), batch, device, amp))
    streams = [torch.cuda.Stream() for _ in fns] if device.type == 'cuda' else [None] * n
    def all_at_once():
        for f, st in zip(fns, streams):
            if st is None: f()
            else:
                with torch.cuda.stream(st): f()
    return rate(all_at_once, n * len(batch['student']), device, warmup, steps)[0]


def grid_hours(ips: dict, data_ips: float, n_train: int, n_val: int, epochs: int, at_once: float) -> float:
    "Hours of the 42-run grid: per fold a Teacher, a Student and 12 KD runs, each `epochs` epochs of its step's rate (capped by the data pipeline)."
    per_fold = 0.0
    for kind, count in (('teacher', 1), ('student', 1), *((p, 4) for p in KD_PATHS)):  # 4 KD runs per path: MSE/KLD x strong/weak
        r = min(ips[kind], data_ips)
        per_fold += count * epochs * (n_train / r + n_val / (3 * r))  # validation: a forward pass, about a third of a step
    return 3 * per_fold / at_once / 3600


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--dry-run', action='store_true', help='CPU, 32 px, batch 2, 1 step, no warm-up, into a temporary folder: everything but CUDA')
    ap.add_argument('--out', type=Path, default=None, help='folder of gpu.md and gpu.csv (default: results/bench; dry run: a temp folder)')
    ap.add_argument('--size', type=int, default=224); ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--steps', type=int, default=20); ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1), help='DataLoader workers of the data-pipeline measurement')
    ap.add_argument('--parallel', default='1,2,4', help='N of the N-students-at-once measurement')
    ap.add_argument('--epochs', type=int, default=150,
                    help="epochs per run assumed for the extrapolation (default 150: the paper's patience of 50 after a best epoch near 100)")
    a = ap.parse_args(argv)
    if a.dry_run: a.size, a.batch, a.steps, a.warmup, a.workers, a.parallel = 32, 2, 1, 0, 1, '1,2'  # the code paths, not the speed
    device = torch.device('cuda' if torch.cuda.is_available() and not a.dry_run else 'cpu')
    if device.type != 'cuda' and not a.dry_run:
        print("bench/gpu.py: no CUDA device here; run it on the GPU machine, or with --dry-run to check it on the CPU", file=sys.stderr); return 2
    try: ns = [int(n) for n in a.parallel.split(',')]
    except ValueError: print(f"bench/gpu.py: --parallel {a.parallel!r}: expected integers like 1,2,4", file=sys.stderr); return 2
    out = a.out or (Path(tempfile.mkdtemp(prefix='kdbus-gpu-')) if a.dry_run else ROOT / 'results' / 'bench')
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True
    t0 = time.time()
    torch.manual_seed(0)
    teacher, student = build_models('paper', encoder_weights=None, device=device)
    teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    b = batch_of(a.batch, a.size, device, channels_last=True)
    rows = []
    for amp in (False, True):
        for kind in ('teacher', 'student', *KD_PATHS):
            ips, mem = rate(step_fn(kind, teacher, student, b, device, amp), a.batch, device, a.warmup, a.steps)
            rows.append(dict(step=kind if kind in ('teacher', 'student') else run_name(kind, 'kld', 'weak'), kind=kind,
                             amp=str(amp_dtype(device)).split('.')[-1] if amp else 'float32', images_per_s=ips, peak_MB=mem))
            print(f"{rows[-1]['step']:>14} {rows[-1]['amp']:>8}: {ips:8.1f} img/s, peak {mem:.0f} MB", flush=True)
    df = pd.DataFrame(rows)
    data_ips = data_rate(max(4 * a.batch, 32), a.size, a.batch, a.workers, device, batches=max(a.steps, 4))
    print(f"data pipeline ({a.workers} workers): {data_ips:.1f} img/s", flush=True)
    par = {n: parallel_rate(n, 'paper', b, device, True, a.warmup, a.steps) for n in ns}
    for n, r in par.items(): print(f"{n} students at once: {r:.1f} img/s", flush=True)
    n_train, n_val = round(163 * 2 / 3 * 0.85), round(163 * 2 / 3 * 0.15)  # UDIAT: 3 folds, 15 % of the rest for validation
    best = df[df.amp != 'float32'].set_index('kind').images_per_s.to_dict()
    hours = {n: grid_hours(best, data_ips, n_train, n_val, a.epochs, par[n] / par[ns[0]] if n > 1 else 1) for n in ns}
    name = torch.cuda.get_device_name() if device.type == 'cuda' else f"CPU ({platform.processor() or platform.machine()}), dry run"
    md = [f"# The paper profile's cost on {name}\n",
          f"`bash bench/gpu.sh{' --dry-run' if a.dry_run else ''}` ({time.time() - t0:.0f} s); torch {torch.__version__}; random weights; "
          f"{a.size} px, batch {a.batch}, {a.steps} timed steps after {a.warmup}; channels-last; cuDNN autotuning on CUDA.\n",
          df.assign(images_per_s=df.images_per_s.round(1), peak_MB=df.peak_MB.round(0)).drop(columns='kind').to_markdown(index=False), "",
          f"- Data pipeline (KDDataset, weak view, {a.workers} DataLoader worker(s), pinned memory on CUDA): {data_ips:.1f} img/s"
          f" ({'faster' if data_ips > max(best.values()) else 'SLOWER'} than the fastest mixed-precision step, {max(best.values()):.1f} img/s).",
          *[f"- {n} student(s) at once (one CUDA stream each, mixed precision): {r:.1f} img/s, {r / par[ns[0]]:.2f}x the first" for n, r in par.items()],
          f"- Paper grid (42 runs: 3 folds x 14), extrapolated with mixed precision, {a.epochs} epochs per run (an assumption: the paper "
          f"stops after 50 epochs without improvement, at most 500), {n_train} training and {n_val} validation images per fold (UDIAT), "
          f"validation at a third of a step's cost, the data pipeline as a cap, N at once sped up by the measured N-students ratio "
          f"(the teacher-first order ignored): "
          + "; ".join(f"{h:.2f} h with {n} at once" for n, h in hours.items()) + ".", ""]
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / 'gpu.csv', index=False)
    (out / 'gpu.md').write_text('\n'.join(md))
    print(f"wrote {out / 'gpu.md'}, {out / 'gpu.csv'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
