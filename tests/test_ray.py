"""The grid on Ray (`kdbus grid --executor ray`): a local 2-CPU Ray instance, the smoke grid, retries, worker deaths,
teacher-before-student order, the run-folder lock, and kdbus without Ray."""
import json, os, subprocess, sys, time
from pathlib import Path
import pandas as pd, pytest

from kdbus.grid import grid_jobs, run_grid
from kdbus.jobs import attempts
from kdbus.runfolder import LOCK_NAME, run_folder_lock

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = "synth:n=30"
RUN_FILES = {"config.json", "env.json", "history.csv", "per_image.csv", "metrics.json", "predictions.npz", "best.pt",
             "run.ipynb", "grid_attempts.jsonl", ".lock"}  # .lock: kdbus.runfolder.run_lock (flock), as in local runs
REPORT_FILES = {"table4.csv", "table4.md", "figure2.png", "figure2.pdf", "dice_distribution.png", "learning_curves.png",
                "loss_terms.png"}
quiet = lambda *a: None

def sh(*args, timeout=1200, env=None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})})

@pytest.fixture(scope="module")
def cluster():
    "A local Ray instance with 2 CPUs, for this module; its address."
    ray = pytest.importorskip("ray")
    from ray import cloudpickle  # Ray's own copy
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fake executes below run on Ray workers, which cannot import this file
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()

# --- the real smoke grid through the CLI, on the test's Ray instance -------------------------------------------

RAY_RUNS = ("Teacher", "L_KLD_WAug")  # a teacher and a KD run that waits for it; the local smoke grid (test_grid.py) runs 5
RAY_SEEDS = ("--seeds", "0,1")  # the seed flag (on Ray; the sweep flag is tested on the local grid): 4 run folders, 2 teachers
RAY_FOLDERS = ("Teacher", "L_KLD_WAug", "Teacher+seed=1", "L_KLD_WAug+seed=1")
RAY_TEACHER = {"L_KLD_WAug": "Teacher", "L_KLD_WAug+seed=1": "Teacher+seed=1"}

def ray_grid_command(out, cluster):
    return (BIN / "kdbus", "grid", "--profile", "smoke", "--data", DATA, "--folds", "0", "--epochs", "1", "--out", out,
            "--runs", ",".join(RAY_RUNS), *RAY_SEEDS, "--executor", "ray", "--address", cluster)

@pytest.fixture(scope="module")
def ray_grid(cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("raygrid") / "smoke"
    t = time.time()
    r = sh(*ray_grid_command(out, cluster))
    print(f"\nsmoke grid ({len(RAY_FOLDERS)} runs, 1 epoch) on Ray with 2 CPUs: {time.time() - t:.0f} s wall")
    return out, r

def test_ray_smoke_grid_completes_like_the_local_one(ray_grid):
    out, r = ray_grid
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{len(RAY_FOLDERS)} run, 0 already complete, 0 failed" in r.stdout
    for name in RAY_FOLDERS:
        d = out / name / "fold0"
        assert {p.name for p in d.iterdir()} == RUN_FILES, f"{d}: {sorted(p.name for p in d.iterdir())}"  # no lock, no last.pt left
        assert [a["executor"] for a in attempts(d)] == ["ray", "ray"]  # one attempt: start, done
    assert REPORT_FILES <= {p.name for p in out.iterdir()}
    # the same report as from run folders made anywhere else (here: kdbus.testing.fake_results, written locally)
    from kdbus.report import table4
    from kdbus.testing import fake_results
    ours, local = pd.read_csv(out / "table4.csv"), table4(fake_results(out.parent / "local", DATA, n_folds=1))
    assert list(ours.columns) == list(local.columns)
    assert list(ours.iloc[:, 0]) == [l for l in local.iloc[:, 0] if l in RAY_RUNS] == list(RAY_RUNS)  # Table 4: the paper's settings, seed 0
    assert ours["dsc_mean"].between(0, 100).all()

def test_ray_grid_with_seeds(ray_grid):
    "Seeds: each replicate keeps the folds (split seed 0), distils from its own seed's teacher, and the seed table is written."
    out, r = ray_grid
    assert r.returncode == 0
    run = lambda n: json.loads((out / n / "fold0" / "config.json").read_text())
    for name, teacher in RAY_TEACHER.items(): assert run(name)["teacher"]["run_dir"] == f"{teacher}/fold0", name
    rep = run("L_KLD_WAug+seed=1")["config"]
    assert (rep["seed"], rep["split_seed"]) == (1, 0)
    assert run("L_KLD_WAug+seed=1")["split"]["test"] == run("L_KLD_WAug")["split"]["test"]  # a replicate keeps the folds
    t = pd.read_csv(out / "table4_seeds.csv").set_index("model")
    assert list(t.index) == list(RAY_RUNS) and (t.n_seeds == 2).all() and (t.seeds == "0,1").all()
    assert "p (Holm)" in (out / "table4_seeds.md").read_text() and not (out / "sweep.csv").exists()  # no sweep: no sweep table

def test_ray_grid_kd_runs_started_after_their_teacher(ray_grid):
    "From the attempt logs of the real grid: every KD run started after its own Teacher (of its seed) had finished."
    out, r = ray_grid
    assert r.returncode == 0
    for name, teacher in RAY_TEACHER.items():
        teacher_done = max(a["t"] for a in attempts(out / teacher / "fold0") if a["event"] == "done")
        first_start = min(a["t"] for a in attempts(out / name / "fold0") if a["event"] == "start")
        assert first_start > teacher_done, f"{name} started {teacher_done - first_start:.1f} s before {teacher} was done"
        used = json.loads((out / name / "fold0" / "metrics.json").read_text())["teacher_weights_sha256"]
        assert used and len(used) == 64

# --- retries, worker deaths, order: fake executes (no papermill), so each takes a moment -----------------------

def fake_run(job, out):
    "Stand-in for papermill: writes the files that make a run complete (and a teacher ready)."
    d = job.run_dir(out)
    if job.label == "Teacher": time.sleep(3)  # a slow teacher: a KD run started too early would see nothing
    (d / "teacher_seen").write_text(str((Path(out) / "Teacher" / f"fold{job.fold}" / "metrics.json").is_file()))
    for f in ("best.pt", "metrics.json"): (d / f).write_text("{}")

def faulty(job, out):
    "Student always raises; L_MSE's worker dies on its first attempt; the rest succeed."
    starts = sum(a["event"] == "start" for a in attempts(job.run_dir(out)))
    if job.label == "Student": raise RuntimeError(f"ValueError: injected failure, attempt {starts}")
    if job.label == "L_MSE" and starts == 1: os._exit(1)  # the worker process dies mid-run
    fake_run(job, out)

def test_failing_run_is_retried_then_reported_and_dead_worker_retried(cluster, tmp_path):
    r = run_grid("smoke", DATA, folds=(0,), out=tmp_path, labels=("Teacher", "Student", "L_MSE", "H_KLD"), execute=faulty,
                 executor="ray", max_retries=2, report=False, log=quiet)
    assert [(l, f) for l, f, _ in r.failed] == [("Student", 0)]
    assert "injected failure, attempt 3" in r.failed[0][2]
    assert sorted(r.done) == [("H_KLD", 0), ("L_MSE", 0), ("Teacher", 0)]
    ev = lambda l: [a["event"] for a in attempts(tmp_path / l / "fold0")]
    assert ev("Student") == ["start", "failed"] * 3  # 1 + max_retries attempts, then given up
    assert ev("L_MSE") == ["start", "start", "done"]  # the dead worker's attempt, then a retry that took over its lock
    assert ev("Teacher") == ev("H_KLD") == ["start", "done"]
    assert not any(tmp_path.rglob(LOCK_NAME))

def test_kd_runs_wait_for_their_teacher(cluster, tmp_path):
    labels = ("Teacher", "Student", "L_MSE", "L_KLD", "H_MSE", "HReg_KLD_WAug")
    r = run_grid("smoke", DATA, folds=(0, 1), out=tmp_path, labels=labels, execute=fake_run, executor="ray",
                 report=False, log=quiet)
    assert not r.failed and len(r.done) == 12
    for f in (0, 1):
        for l in labels[2:]: assert (tmp_path / l / f"fold{f}" / "teacher_seen").read_text() == "True", f"{l}/fold{f}"

def teacher_outlasts_a_kd_run(job, out):
    """`fake_run` whose Teacher ends only once a KD run has looked for it (at most 60 s): on a loaded machine, where a Ray
    worker can take longer to start than `fake_run`'s Teacher takes, the overlap still happens."""
    if job.label == "Teacher":
        t = time.time()
        while not any(Path(out).glob("L_*/fold*/teacher_seen")) and time.time() - t < 60: time.sleep(0.1)
    fake_run(job, out)

def test_order_check_catches_a_student_started_without_its_teacher(cluster, tmp_path):
    "Negative control: the same jobs submitted to Ray all at once, bypassing the schedule, are caught by the check above."
    import ray
    from kdbus.ray_grid import RayExecutor
    ex = RayExecutor(teacher_outlasts_a_kd_run)
    jobs = grid_jobs("smoke", DATA, folds=(0,), out=tmp_path, labels=("Teacher", "L_MSE", "L_KLD"))
    ray.get([ex.submit(j, tmp_path) for j in jobs])
    seen = {j.label: (j.run_dir(tmp_path) / "teacher_seen").read_text() for j in jobs[1:]}
    assert "False" in seen.values(), seen

def test_paper_profile_asks_for_a_gpu_the_cluster_lacks(cluster, tmp_path):
    with pytest.raises(ValueError, match="--gpus-per-run 0"):
        run_grid("paper", DATA, folds=(0,), out=tmp_path, labels=("Student",), execute=fake_run, executor="ray",
                 report=False, log=quiet)
    assert not any(tmp_path.rglob("grid_attempts.jsonl"))  # refused before anything ran
    r = run_grid("paper", DATA, folds=(0,), out=tmp_path, labels=("Student",), execute=fake_run, executor="ray",
                 gpus_per_run=0, report=False, log=quiet)
    assert r.done == [("Student", 0)]

def test_relative_data_path_is_refused_for_ray(cluster, tmp_path):
    with pytest.raises(ValueError, match="relative path"):
        run_grid("smoke", "udiat:some/relative/folder", folds=(0,), out=tmp_path, execute=fake_run, executor="ray",
                 report=False, log=quiet)

# --- no Ray needed -----------------------------------------------------------------------------------------------

NO_RAY = "import sys; sys.modules['ray'] = None\n"

def test_without_ray_the_local_grid_works_and_executor_ray_says_how_to_install(tmp_path):
    "With Ray not importable (one process for both: a Python start is the cost): the local grid runs, `--executor ray` is refused."
    code = NO_RAY + ("import kdbus.cli, kdbus.grid, kdbus.ray_grid\n"
                     f"r = kdbus.grid.run_grid('smoke', {DATA!r}, folds=(0,), out={str(tmp_path / 'local')!r}, labels=('Student',), "
                     "execute=lambda j, o: None, report=False)\n"
                     "assert r.done == [('Student', 0)], r\nprint('ok')\n"
                     f"sys.exit(kdbus.cli.main(['grid', '--profile', 'smoke', '--data', {DATA!r}, "
                     f"'--folds', '0', '--out', {str(tmp_path / 'ray')!r}, '--executor', 'ray']))")
    r = sh(sys.executable, "-c", code)
    assert "ok" in r.stdout, r.stderr[-2000:]
    assert r.returncode == 2, r.stdout + r.stderr
    assert "pip install 'kdbus[ray]'" in r.stderr
    assert not (tmp_path / "ray").exists() or not any((tmp_path / "ray").iterdir())

def test_importing_kdbus_does_not_import_ray():
    """Nor does the Ray executor's module load the grid, nor the grid Ray's module: kdbus.jobs is the layer below both.
    One process (a Python start is the cost): kdbus's modules are dropped between the two orders of import."""
    r = sh(sys.executable, "-c", "import sys, kdbus.ray_grid; print('kdbus.grid' in sys.modules, 'ray' in sys.modules)\n"
                                 "for m in [m for m in sys.modules if m.split('.')[0] == 'kdbus']: del sys.modules[m]\n"
                                 "import kdbus.grid; print('kdbus.ray_grid' in sys.modules)\n"
                                 "import kdbus.cli; print('ray' in sys.modules)")
    assert r.returncode == 0 and r.stdout.split() == ["False"] * 4, r.stdout + r.stderr[-2000:]

def test_ray_options_refused_for_the_local_executor(tmp_path, capsys):
    from kdbus.cli import main
    for opt in (("--address", "head:6379"), ("--cpus-per-run", "1"), ("--gpus-per-run", "0")):
        capsys.readouterr()
        try: code = main(["grid", "--profile", "smoke", "--data", DATA, "--out", str(tmp_path), *opt])
        except SystemExit as e: code = e.code
        err = capsys.readouterr().err
        assert code == 2 and "--executor ray" in err, (opt, err[-500:])
    assert not any(tmp_path.iterdir())

LOCKER = """
import sys, time
from pathlib import Path
from kdbus.runfolder import run_folder_lock, RunLocked
d, go = sys.argv[1], Path(sys.argv[2])
print('ready', flush=True)
while not go.exists(): time.sleep(0.001)
try:
    with run_folder_lock(d, what=sys.argv[3]): time.sleep(3); print('won')
except RunLocked as e: print('locked:', e)
"""

def test_only_one_process_owns_a_run_folder(tmp_path):
    "Three processes try to own one run folder at the same instant: exactly one does, the others are told who."
    d, go = tmp_path / "Teacher" / "fold0", tmp_path / "go"
    ps = [subprocess.Popen([sys.executable, "-c", LOCKER, str(d), str(go), f"p{i}"], stdout=subprocess.PIPE, text=True)
          for i in range(3)]
    for p in ps: assert p.stdout.readline().strip() == "ready"
    go.write_text("")
    outs = [p.communicate(timeout=120)[0].strip() for p in ps]
    assert sum(o == "won" for o in outs) == 1, outs
    assert all(o.startswith("locked:") and "is being run by pid" in o for o in outs if o != "won"), outs
    assert not (d / LOCK_NAME).exists()
    with run_folder_lock(d): pass  # free again

STALLER = """
import json, os, sys, time
from pathlib import Path
from kdbus.runfolder import LockLost, lock_owner, run_folder_lock
d = Path(sys.argv[1]); lock = d / '.grid.lock'
try:
    with run_folder_lock(d, stale_after=0.4):
        # this process stalls past stale_after; another takes the folder over, as _take_over does
        lock.unlink(); lock.write_text(json.dumps(dict(host='elsewhere', pid=1, what='successor', token='theirs')))
        os.utime(lock, (1e9, 1e9))
        for _ in range(100): time.sleep(0.05)  # the run goes on; its heartbeat must stop it
    print('not stopped')
except LockLost as e: print('stopped:', e)
print('mtime', lock.stat().st_mtime, 'owner', lock_owner(lock)[0]['what'])
"""

def test_a_holder_that_lost_its_lock_stops(tmp_path):
    "A run whose lock was taken over after a stall stops at its next heartbeat, and leaves its successor's lock alone."
    d = tmp_path / "Teacher" / "fold0"
    out = subprocess.run([sys.executable, "-c", STALLER, str(d)], capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("stopped:") and "lost its lock to pid 1 on elsewhere (successor)" in out, out
    assert "mtime 1000000000.0 owner successor" in out, out  # not refreshed, not removed
