"""The package as a user gets it: a built wheel installed outside the checkout, and its `kdbus` command."""
import os, subprocess, sys, sysconfig
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    "Build the wheel once (no build isolation: the build needs only setuptools, already here)."
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, cwd=out)
    wheels = list(out.glob("kdbus-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]

def test_wheel_holds_the_package(wheel):
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    for mod in ("kdbus/__init__.py", "kdbus/cli.py", "kdbus/data.py", "kdbus/duplicates.py", "kdbus/folds.py", "kdbus/synth.py", "kdbus/_modidx.py",
                "kdbus/run.ipynb"):  # the experiment notebook travels with the package, for `kdbus grid`
        assert mod in names, f"{mod} missing from {wheel.name}"
    assert not any(n.startswith(("nbs/", "tests/")) for n in names)

def test_installed_wheel_runs_outside_checkout(wheel, tmp_path):
    "Install the wheel into a folder of its own (dependencies from this environment), run `kdbus --help` elsewhere."
    target, work = tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    exe = target / "bin" / "kdbus"
    assert exe.exists(), "the wheel installs no `kdbus` console script"
    r = subprocess.run([str(exe), "--help"], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "check-data" in r.stdout and "synth" in r.stdout
    # the command must have run the installed copy, not the checkout's
    r = subprocess.run([sys.executable, "-c", "import kdbus; print(kdbus.__file__)"], cwd=work, env=env,
                       capture_output=True, text=True, check=True)
    assert Path(r.stdout.strip()).is_relative_to(target), r.stdout
    # the grid finds its notebook inside the installed package, a real file with the parameters cell
    r = subprocess.run([sys.executable, "-c", "from kdbus.jobs import run_notebook; print(run_notebook())"], cwd=work,
                       env=env, capture_output=True, text=True, check=True)
    nb = Path(r.stdout.strip())
    assert nb.is_relative_to(target) and not nb.is_symlink() and '"parameters"' in nb.read_text()


def test_licence_and_citation_match_the_package():
    "LICENSE is the Apache-2.0 text settings.ini declares; CITATION.cff cites the paper and BUSI as kdbus's report does."
    import configparser, re, yaml
    from kdbus.data import DATA_CITATIONS
    from kdbus.report import PAPER
    ini = configparser.ConfigParser(); ini.read(ROOT / "settings.ini")
    assert ini["DEFAULT"]["license"] == "apache2"
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "Apache-2.0" and cff["version"] == ini["DEFAULT"]["version"]
    doi = lambda s: re.search(r"doi:(\S+?)\.?$", s).group(1)
    assert cff["preferred-citation"]["doi"] == doi(PAPER)
    assert [r["doi"] for r in cff["references"]] == [doi(DATA_CITATIONS["busi"])]
