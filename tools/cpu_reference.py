"""Write tests/data/cpu_reference.json: the smoke histories and weights of a Teacher, a Student and a KD run trained on the CPU
(1 thread), and the machine they were made on.

tests/test_train.py checks two things with them:
- on the machine the test runs on, the switches at 'auto' (AMP: off on the CPU; channels-last: contiguous, `PLAIN_LAYOUTS`) and
  persistent DataLoader workers give the same bits as a plain run made in the same test with AMP off, no workers and each
  run's layout spelled out: the same kernels run, so every bit must agree;
- against this committed reference, the histories agree within `TOLERANCE`, never bit for bit: floating-point kernels differ
  between CPU generations, instruction sets (ATEN_CPU_CAPABILITY) and even between hosts that report the same CPU model (the
  reference of 2026-12-01 and a machine of 2026-12-06, both "AMD EPYC (family 25, model 17)", AVX512, torch 2.14.1, differ
  in the 6th digit of the Teacher's second-epoch loss), so `machine` records where it was made, for information only.
Regenerate only when a change is *meant* to alter CPU results, and say so:
    python tools/cpu_reference.py
"""
import json, platform, warnings
from pathlib import Path
import torch
from kdbus.experiment import cpu_model
from kdbus.config import resolve_config
from kdbus.data import load_data
from kdbus.folds import make_folds
from kdbus.train import build_step, fit, weights_hash

DATA, OUT = 'synth:n=24', Path(__file__).resolve().parents[1]/'tests'/'data'/'cpu_reference.json'
# how far a history may move on another machine: a few float roundings per step, compounded over the smoke epochs
TOLERANCE = dict(rtol=1e-3, atol=1e-4, dice_atol=0.02)  # losses and learning rate: rtol/atol; val_dice, val_nonempty: dice_atol
RUNS = dict(Teacher=dict(path='teacher'), Student=dict(path='none', epochs=3), HReg_KLD=dict(path='hidden_regressor', loss='kld', teacher_aug='weak'))
# the plain run's layouts, spelled out: what `channels_last='auto'` resolves to on the CPU (kdbus.train.memory_format)
PLAIN_LAYOUTS = dict(Teacher='off', Student='off', HReg_KLD='off')

def train_reference(out_dir, layouts: dict | None = None, **settings) -> dict:
    """Train the `RUNS` on fold 0 of DATA at 64 px with one thread; their history rows (without seconds) and weight hashes.
    `layouts`: a `channels_last` value per run name, over `settings`."""
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore'); d = load_data(DATA, size=64)
        f = make_folds(d.labels, k=5, seed=0)[0]
        parts, teacher, res = (d.subset(f.train), d.subset(f.val)), None, {}
        for name, kw in RUNS.items():
            layout = {} if layouts is None else dict(channels_last=layouts[name])
            c = resolve_config('smoke', data=DATA, out_dir=str(Path(out_dir)/name), **kw, **{**settings, **layout})
            r = fit(build_step(c, teacher), c, *parts, progress=False)
            teacher = teacher or r.model
            res[name] = dict(history=r.history.drop(columns='seconds').to_dict('records'), weights=weights_hash(r.model))
        return res
    finally: torch.set_num_threads(threads)

def machine() -> dict:
    "Where a reference was made: CPU model and vector extensions, the capability PyTorch dispatches to, torch's version."
    try: flags = sorted({f for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('flags') for f in l.split(':', 1)[1].split()
                         if f.startswith(('avx', 'amx', 'fma'))})
    except OSError: flags = []
    return dict(cpu=cpu_model(), cpu_flags=' '.join(flags), cpu_capability=torch.backends.cpu.get_cpu_capability(), torch=torch.__version__,
                threads=1, platform=platform.platform())

if __name__ == '__main__':
    import tempfile
    with tempfile.TemporaryDirectory() as tmp: runs = train_reference(tmp)
    OUT.write_text(json.dumps(dict(machine=machine(), tolerance=TOLERANCE, runs=runs), indent=1) + '\n')
    print(f"wrote {OUT}")
