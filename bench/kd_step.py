"""Benchmark: the cost of the KD machinery in one training step.

For each KD path and teacher augmentation, times in one run (interleaved, median of repeats
after warm-up):
  teacher  = the teacher's inference alone (eval, no_grad, full forward) on the batch,
  student  = the student's training step alone (forward, cross-entropy, backward, Adam step),
  kd       = the distiller's training step (teacher target + student forward/backward + both losses + step),
and reports kd / (teacher + student): 1.0 means the KD machinery itself is free; the target is <= 1.1.

    python bench/kd_step.py                # the quick preset at 128 px, batch 16
    python bench/kd_step.py --preset paper --size 224 --batch 4
"""
import argparse, statistics, time
import numpy as np, torch
from kdbus.augment import KDDataset
from kdbus.distill import Distiller, KD_PATHS, run_name
from kdbus.losses import sup_loss
from kdbus.models import build_models

def timed(fn, reps):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); out.append(time.perf_counter() - t0)
    return out

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="quick"); p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16); p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2); p.add_argument("--loss", default="kld")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    teacher, student = build_models(a.preset)
    rng = np.random.default_rng(0)
    images = rng.random((a.batch, a.size, a.size, 3), dtype=np.float32)
    masks = (rng.random((a.batch, a.size, a.size)) > 0.7).astype(np.uint8)
    batches = {aug: torch.utils.data.default_collate([KDDataset(images, masks, teacher_aug=aug, seed=0)[i] for i in range(a.batch)])
               for aug in ("strong", "weak")}
    teacher.eval()
    def teacher_inference(x):
        with torch.no_grad(): teacher(x)
    s_opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    def student_step(b):
        s_opt.zero_grad(set_to_none=True)
        sup_loss(student(b["student"]), b["mask"]).backward(); s_opt.step()
    rows = []
    for path in KD_PATHS:
        for aug in ("strong", "weak"):
            b = batches[aug]
            d = Distiller(teacher, student, path=path, loss=a.loss, teacher_aug=aug).train()
            opt = torch.optim.Adam(d.parameters(), lr=1e-4)
            def kd_step():
                opt.zero_grad(set_to_none=True)
                _, terms = d(b); terms.total.backward(); opt.step()
            fns = dict(teacher=lambda: teacher_inference(b["teacher"]), student=lambda: student_step(b), kd=kd_step)
            for f in fns.values(): timed(f, a.warmup)
            times = {k: [] for k in fns}
            for _ in range(a.reps):  # interleave, so drift in machine load hits all three alike
                for k, f in fns.items(): times[k] += timed(f, 1)
            med = {k: statistics.median(v) * 1000 for k, v in times.items()}
            rows.append(dict(run=run_name(path, a.loss, aug), teacher_ms=med["teacher"], student_ms=med["student"],
                             kd_ms=med["kd"], ratio=med["kd"] / (med["teacher"] + med["student"])))
    print(f"KD training step vs teacher inference + student step: preset {a.preset}, {a.size} px, batch {a.batch}, "
          f"{torch.get_num_threads()} threads, median of {a.reps} after {a.warmup} warm-up, torch {torch.__version__}")
    print("| run | teacher inference (ms) | student step (ms) | KD step (ms) | KD / (teacher + student) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['teacher_ms']:.0f} | {r['student_ms']:.0f} | {r['kd_ms']:.0f} | {r['ratio']:.2f} |")
    return rows

if __name__ == "__main__": main()
