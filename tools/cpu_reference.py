"""Write tests/data/cpu_reference.json: the smoke histories and weights of a Teacher, a Student and a KD run trained on the CPU (1 thread).

tests/test_train.py retrains them and requires bit-identical histories and weights: a GPU-only change (AMP, channels-last,
cuDNN, DataLoader workers) must not move a CPU result. Regenerate only when a change is *meant* to alter CPU results, and say so:
    python tools/cpu_reference.py
"""
import json, warnings
from pathlib import Path
import torch
from kdbus.config import resolve_config
from kdbus.data import load_data, make_folds
from kdbus.train import build_step, fit, weights_hash

DATA, OUT = 'synth:n=24', Path(__file__).resolve().parents[1]/'tests'/'data'/'cpu_reference.json'
RUNS = dict(Teacher=dict(path='teacher'), Student=dict(path='none', epochs=3), HReg_KLD=dict(path='hidden_regressor', loss='kld', teacher_aug='weak'))

def train_reference(out_dir, **settings) -> dict:
    "Train the `RUNS` on fold 0 of DATA at 64 px with one thread; their history rows (without seconds) and weight hashes."
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore'); d = load_data(DATA, size=64)
        f = make_folds(d.labels, k=5, seed=0)[0]
        parts, teacher, res = (d.subset(f.train), d.subset(f.val)), None, {}
        for name, kw in RUNS.items():
            c = resolve_config('smoke', data=DATA, out_dir=str(Path(out_dir)/name), **kw, **settings)
            r = fit(build_step(c, teacher), c, *parts, progress=False)
            teacher = teacher or r.model
            res[name] = dict(history=r.history.drop(columns='seconds').to_dict('records'), weights=weights_hash(r.model))
        return res
    finally: torch.set_num_threads(threads)

if __name__ == '__main__':
    import tempfile
    with tempfile.TemporaryDirectory() as tmp: OUT.write_text(json.dumps(train_reference(tmp), indent=1) + '\n')
    print(f"wrote {OUT}")
