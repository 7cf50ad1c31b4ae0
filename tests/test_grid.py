"""The grid through the `kdbus` command: a smoke grid of 5 of Table 4's runs, its files and Table 4, a second grid,
and a sweep over its folder (seeds: tests/test_ray.py)."""
import contextlib, io, json, subprocess, sys
from pathlib import Path
import pandas as pd, pytest

from kdbus.config import label_params
from kdbus.jobs import attempts

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = "synth:n=30"   # a small synthetic set keeps the grid short
# Teacher, Student and one KD run per path: both losses and both teacher augmentations appear. Each papermill run costs
# ~10 s of CPU (kernel start and imports); the 12 KD experiments are trained one by one in tests/test_distill.py, and the
# grid's 14 jobs are listed in nbs/11_grid.ipynb.
LABELS = ['Teacher', 'Student', 'L_KLD_WAug', 'H_MSE', 'HReg_KLD']
RUNS = ("--runs", ",".join(LABELS))

def sh(*args, cwd=None, timeout=1200):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)

def kdbus_cli(*args):
    """`kdbus ARGS` in this process, as `sh` returns it (exit code, stdout, stderr): no Python start and imports to pay.
    The console script itself, in its own process, runs the first grid below."""
    from kdbus.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())

@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "smoke"
    r = sh(BIN / "kdbus", "grid", "--profile", "smoke", "--data", DATA, "--folds", "0", "--epochs", "1", "--out", out, *RUNS)  # 1 epoch: the files, not the training, are tested
    return out, r

def test_smoke_grid_completes_with_every_file(grid):
    out, r = grid
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "without encryption" not in r.stdout + r.stderr  # the kernels talk over IPC: no TCP warning per run
    for label in LABELS:
        d = out / label / "fold0"
        for f in ("config.json", "env.json", "history.csv", "per_image.csv", "metrics.json", "run.ipynb"):
            assert (d / f).is_file(), f"{d / f} missing"
        per = pd.read_csv(d / "per_image.csv")
        assert per["dice"].between(0, 1).all() and per["iou"].between(0, 1).all()
        assert not per["id"].astype(str).str.contains("/").any(), "ids must not be paths"
        cfg = json.loads((d / "config.json").read_text())["config"]
        want = {k: v for k, v in label_params(label).items() if v is not None}  # the label's path, loss and teacher augmentation
        assert {k: cfg[k] for k in want} == want, (label, cfg)
    for f in ("table4.csv", "table4.md", "figure2.png", "figure2.pdf"):
        assert (out / f).is_file(), f"{f} missing"

def test_table4_has_the_runs_in_table_order_and_range(grid):
    out, _ = grid
    t = pd.read_csv(out / "table4.csv")
    first = t.columns[0]
    assert list(t[first]) == LABELS
    assert t["dsc_mean"].between(0, 100).all() and t["dsc_std"].between(0, 100).all()

def test_second_grid_does_no_work(grid):
    "Started again on a complete folder, the grid starts nothing (the same for Ray: with nothing to do no executor is built)."
    out, _ = grid
    r = kdbus_cli("grid", "--profile", "smoke", "--data", DATA, "--folds", "0", "--epochs", "1", "--out", out, *RUNS)
    assert r.returncode == 0 and f"0 run, {len(LABELS)} already complete, 0 failed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert all(len(attempts(out / l / "fold0")) == 2 for l in LABELS)  # nobody started again: each run's start and done only

def test_grid_refuses_a_folder_of_another_profile(grid):
    out, _ = grid
    r = kdbus_cli("grid", "--profile", "quick", "--data", DATA, "--folds", "0", "--out", out)
    assert r.returncode == 2 and "profile" in r.stderr

# --- sweeps and seeds (issue: beyond Table 3) --------------------------------------------------------------------

# T over a KLD and an MSE run: one new run (T is the KLD loss's temperature; a float through papermill), two reused. Which
# setting applies to which path, stage included, is listed without running anything in nbs/11_grid.ipynb.
SWEEP_ARGS = ("--runs", "L_KLD_WAug,H_MSE", "--sweep", "T=1,2")
NEW_RUNS = ["L_KLD_WAug+T=2"]

@pytest.fixture(scope="module")
def sweep(grid, tmp_path_factory):
    "The smoke grid's folder, copied, then a sweep of T over two of its runs: 1 new run, 2 reused."
    import shutil
    out = tmp_path_factory.mktemp("sweep") / "smoke"
    shutil.copytree(grid[0], out)
    return out, kdbus_cli("grid", "--profile", "smoke", "--data", DATA, "--folds", "0", "--epochs", "1", "--out", out, *SWEEP_ARGS)

def test_sweep_runs_in_named_folders_and_reuses_the_rest(sweep):
    out, r = sweep
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 run, 2 already complete, 0 failed" in r.stdout, r.stdout[-2000:]
    for name in NEW_RUNS: assert (out / name / "fold0" / "metrics.json").is_file(), name
    cfg = lambda n: json.loads((out / n / "fold0" / "config.json").read_text())["config"]
    assert cfg("L_KLD_WAug+T=2")["T"] == 2.0
    assert (cfg("L_KLD_WAug")["T"], cfg("H_MSE")["stage"]) == (1.0, -1)  # the reused runs are the paper's settings
    split = lambda n: json.loads((out / n / "fold0" / "config.json").read_text())["split"]["test"]
    assert split("L_KLD_WAug+T=2") == split("L_KLD_WAug")  # a sweep run keeps the folds
    assert not (out / "H_MSE+T=2").exists()  # a setting that does not apply: no run

def test_sweep_report_beside_an_unchanged_table4(sweep):
    out, _ = sweep
    assert list(pd.read_csv(out / "table4.csv")["model"]) == LABELS  # Table 4: the paper's settings only
    s = pd.read_csv(out / "sweep.csv")
    got = {(m, st) for m, st in zip(s.model, s.setting)}
    assert {("L_KLD_WAug", "T=2"), ("L_KLD_WAug", "paper")} <= got and not any(m == "H_MSE" and st != "paper" for m, st in got)
    assert s[s.setting != "paper"]["n_pairs"].gt(0).all()
    assert set(s.seeds.astype(str)) == {"0"}  # one seed (read back as a number)
    assert (out / "sweep.png").stat().st_size > 10_000 and "p (Holm)" in (out / "sweep.md").read_text()
    assert not (out / "table4_seeds.csv").exists()  # one seed: no seed table

def test_bad_sweeps_are_refused_before_anything_runs(grid, tmp_path):
    for args, msg in ((("--sweep", "T=0"), "T=0.0 is out of range"), (("--sweep", "T=1,two"), "T='two' is not a number"),
                      (("--sweep", "lr=1,2"), "NAME one of T, alpha, stage, kd_axis, student"), (("--sweep", "stage=7"), "stage=7"),
                      (("--sweep", "kd_axis=pixel"), "kd_axis='pixel'"), (("--runs", "Student", "--sweep", "T=2"), "no chosen run uses T"),
                      (("--seeds", "0,x"), "--seeds '0,x'"), (("--runs", "L_KL"), "'L_KL' is not a run of Table 4"),
                      (("--sweep", "student=s,xxl"), "student='xxl' is not valid; expected one of: 'xs', 's', 'm', 'l'"),
                      (("--runs", "Teacher", "--sweep", "student=m"), "student applies to every run but the Teacher")):
        r = kdbus_cli("grid", "--profile", "smoke", "--data", DATA, "--folds", "0", "--out", tmp_path / "g", *args)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr[-1500:])
        assert not (tmp_path / "g").exists(), args

def test_a_seeds_grid_started_again_does_no_work(tmp_path):
    "A replicated grid (`--seeds 0,1`) started again skips every run, the `+seed=1` ones and their teacher included."
    import functools
    from kdbus.grid import run_grid
    from kdbus.testing import fake_execute
    kw = dict(folds=(0,), out=tmp_path, labels=("Teacher", "L_KLD_WAug"), seeds=(0, 1), report=False, log=lambda *a: None,
              execute=functools.partial(fake_execute, teacher_seconds=0))
    first = run_grid("smoke", DATA, **kw)
    assert not first.failed and len(first.done) == 4, first
    again = run_grid("smoke", DATA, **kw)
    assert (again.done, again.failed, len(again.skipped)) == ([], [], 4), again
    assert ("L_KLD_WAug+seed=1", 0) in again.skipped
