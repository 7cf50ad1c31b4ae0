"Fixtures and helpers shared by several test files."
import contextlib, importlib.util, io, warnings
from pathlib import Path

import pytest

from kdbus.config import resolve_config
from kdbus.experiment import run_experiment


@pytest.fixture(scope='session')
def smoke_student(tmp_path_factory):
    "A results folder with one trained smoke Student run (fold 0 of 30 synthetic images), trained once per session: (folder, metrics)."
    out = tmp_path_factory.mktemp('smoke-student')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        metrics = run_experiment(resolve_config('smoke', path='none', data='synth:n=30', out_dir=str(out)), progress=False)
    return out, metrics


@pytest.fixture(scope='session')
def script():
    "Load one of the project's scripts (tools/*.py, bench/*.py) as a module, by its path from the project root: script('tools/x.py')."
    root = Path(__file__).resolve().parents[1]
    def load(rel):
        spec = importlib.util.spec_from_file_location(Path(rel).stem, root/rel)
        mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
        return mod
    return load


def kdbus_main(*args):
    "Run `kdbus ARGS` in this process (the console script's `main`): (exit code, stdout, stderr). Test files import it."
    from kdbus.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: rc = main([str(a) for a in args])
        except SystemExit as e: rc = e.code
    return rc, out.getvalue(), err.getvalue()
