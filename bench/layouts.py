"""Benchmark: channels-last against the contiguous layout on the CPU, model by model (issue 27).

For the quick preset's Teacher (its training step, and its inference as a KD run's frozen teacher) and for every
student size (its training step), times both memory layouts in interleaved rounds (`kdbus.bench.time_interleaved`:
each round calls every one once) and reports the medians and contiguous / channels-last: above 1, channels-last
is faster. With `--compile`, the Teacher's and the `s` student's training steps are also timed compiled
(`torch.compile`, inductor, contiguous): the `compiled` columns, and the seconds the first call took. A training step is forward, the cross-entropy, backward and an Adam step on one batch; inference is
a forward under `torch.no_grad` in eval mode. It is what `channels_last='auto'` once chose on the CPU from
(e22fee1..f213dd7); it is contiguous there since (`kdbus.train.memory_format`, `bench/layout_precision.py`).

    OMP_NUM_THREADS=1 python bench/layouts.py --out bench     # layouts.md, layouts.csv (about 3 min on 1 thread)
    OMP_NUM_THREADS=1 python bench/layouts.py --compile --out /tmp  # also torch.compile'd steps (inductor; minutes to compile)
    python bench/layouts.py --rounds 2 --warmup 1 --out /tmp  # a dry run
Ratios are measured in one run, on one machine: compare them, not the seconds, with other machines.
"""
import argparse, platform, statistics, time
from pathlib import Path
import pandas as pd, torch
import torch.nn.functional as F
from kdbus.bench import time_interleaved
from kdbus.models import STUDENT_SIZES, build_model, resolve_specs, student_size

LAYOUTS = {'contiguous': torch.contiguous_format, 'channels_last': torch.channels_last}

def train_step(model, x, y, fmt):
    "One training step of `model` in layout `fmt` (its own Adam)."
    model = model.to(memory_format=fmt).train(); x = x.contiguous(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    def step():
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    return step

def inference(model, x, fmt):
    "One frozen forward of `model` in layout `fmt`."
    model = model.to(memory_format=fmt).eval(); x = x.contiguous(memory_format=fmt)
    def fwd():
        with torch.no_grad(): model(x)
    return fwd

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--preset', default='quick'); p.add_argument('--size', type=int, default=128)
    p.add_argument('--batch', type=int, default=8); p.add_argument('--rounds', type=int, default=9)
    p.add_argument('--warmup', type=int, default=2); p.add_argument('--out', type=Path, default=Path('.'))
    p.add_argument('--compile', action='store_true', help="also time torch.compile'd training steps (Teacher, student s)")
    a = p.parse_args(argv)
    if a.batch < 1 or a.size < 32: p.error(f"--batch {a.batch} / --size {a.size}: expected a batch >= 1 and a size >= 32")
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = (torch.rand(a.batch, a.size, a.size) < 0.1).long()
    teacher_spec = resolve_specs(a.preset)[0]
    models = {('Teacher', 'training step'): (teacher_spec, 'train'), ('Teacher', 'inference (KD target)'): (teacher_spec, 'eval')}
    models.update({(f'student {k}', 'training step'): (student_size(k, a.preset), 'train') for k in STUDENT_SIZES})
    fns, compile_s = {}, {}
    for (name, what), (spec, mode) in models.items():
        for lay, fmt in LAYOUTS.items():
            torch.manual_seed(0); m = build_model(spec)
            fns[(name, what, lay)] = train_step(m, x, y, fmt) if mode == 'train' else inference(m, x, fmt)
        if a.compile and mode == 'train' and name in ('Teacher', 'student s'):
            torch.manual_seed(0); step = train_step(torch.compile(build_model(spec)), x, y, torch.contiguous_format)
            t0 = time.perf_counter(); step(); compile_s[name] = time.perf_counter() - t0  # the first call compiles
            fns[(name, what, 'compiled')] = step
    t = time_interleaved(fns, warmup=a.warmup, repeats=a.rounds)
    rows = []
    for (name, what), _ in models.items():
        c, l = (statistics.median(t[(name, what, k)]) for k in LAYOUTS)
        row = dict(model=name, what=what, contiguous_s=round(c, 4), channels_last_s=round(l, 4), ratio=round(c / l, 2))
        if a.compile:
            k = statistics.median(t[(name, what, 'compiled')]) if (name, what, 'compiled') in t else None
            row.update(compiled_s=None if k is None else round(k, 4), compiled_ratio=None if k is None else round(c / k, 2),
                       compile_first_call_s=None if k is None else round(compile_s[name], 1))
        rows.append(row)
    df = pd.DataFrame(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out / 'layouts.csv', index=False)
    head = (f"Channels-last against contiguous on the CPU: preset {a.preset}, batch {a.batch}, {a.size} px, "
            f"{torch.get_num_threads()} thread(s), medians of {a.rounds} interleaved rounds after {a.warmup} warm-up, "
            f"torch {torch.__version__}, {platform.processor() or platform.machine()}. ratio = contiguous / "
            "channels-last (above 1: channels-last is faster)"
            + ("; compiled_ratio = contiguous / compiled" if a.compile else "") + ".\n\n")
    (a.out / 'layouts.md').write_text(head + df.to_markdown(index=False) + "\n")
    print(head + df.to_markdown(index=False))
    return df

if __name__ == '__main__':
    main()
