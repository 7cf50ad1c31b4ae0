"""The `kdbus` command as a user runs it: a separate process, exit codes, messages."""
import os, subprocess, sys
from pathlib import Path
import numpy as np, pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BUSI_SAMPLE = ROOT.parent / "shared" / "data" / "busi-sample"

def kdbus(*args, cwd=None, env=None):
    "Run the console command; return the completed process."
    exe = Path(sys.executable).with_name("kdbus")  # the console script installed beside this Python
    assert exe.exists(), f"no kdbus command at {exe}: install the project (make setup)"
    return subprocess.run([str(exe)] + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=600)

def test_help_lists_the_commands():
    r = kdbus("--help")
    assert r.returncode == 0
    for c in ("synth", "check-data"): assert c in r.stdout

def test_synth_then_check_data(tmp_path):
    r = kdbus("synth", tmp_path / "s", "--n", 6, "--seed", 3)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "s" / "original").glob("*.png"))) == 6
    r = kdbus("check-data", f"udiat:{tmp_path / 's'}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cases     6" in r.stdout and "problems  0" in r.stdout

def test_synth_spec_uses_the_cache(tmp_path):
    r = kdbus("check-data", "synth:n=5,seed=2", env={"KDBUS_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(list(tmp_path.glob("synth-*n5-seed2/original/*.png"))) == 5

@pytest.mark.skipif(not BUSI_SAMPLE.exists(), reason=f"the BUSI sample is not at {BUSI_SAMPLE}")
def test_check_data_on_the_busi_sample():
    r = kdbus("check-data", f"busi:{BUSI_SAMPLE}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cases     60  (benign 40, malignant 20)" in r.stdout
    assert "duplicates 2 group(s) of 5 images, 0 across classes" in r.stdout

def test_check_data_reports_every_problem_and_fails(tmp_path):
    "A set with three different faults: all three are named, and the exit code is 1."
    root = tmp_path / "broken"
    (root / "original").mkdir(parents=True); (root / "GT").mkdir()
    img = np.full((40, 50), 100, np.uint8); msk = np.zeros((40, 50), np.uint8); msk[10:20, 10:20] = 255
    Image.fromarray(img).save(root / "original" / "000001.png"); Image.fromarray(msk).save(root / "GT" / "000001.png")
    Image.fromarray(img).save(root / "original" / "000002.png")                       # image without a mask
    Image.fromarray(msk).save(root / "GT" / "000003.png")                             # mask without an image
    Image.fromarray(img).save(root / "original" / "000004.png")
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(root / "GT" / "000004.png")    # mask of another size
    r = kdbus("check-data", f"udiat:{root}")
    assert r.returncode == 1, r.stdout + r.stderr
    for name in ("000002", "000003", "000004"): assert name in r.stdout, r.stdout

def scan(seed, h=90, w=120):
    "A made-up grey scan: smooth random texture, different for each seed."
    rng = np.random.default_rng(seed)
    t = np.cumsum(np.cumsum(rng.normal(size=(h, w)), axis=0), axis=1)
    return (255 * (t - t.min()) / (t.max() - t.min())).astype(np.uint8)

def busi_tree(root, images):
    "A BUSI-layout tree of {'benign (1)': array, ...}, each with a mask of its size."
    for name, a in images.items():
        folder = root / name.split()[0]; folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / f"{name}.png")
        m = np.zeros(a.shape[:2], np.uint8); m[10:30, 10:40] = 255
        Image.fromarray(m).save(folder / f"{name}_mask.png")
    return root

def test_check_data_fails_on_a_scan_filed_under_both_classes(tmp_path):
    a = scan(0)
    root = busi_tree(tmp_path / "B", {"benign (1)": a, "benign (2)": scan(1), "malignant (1)": scan(2)})
    (root / "malignant" / "malignant (2).png").write_bytes((root / "benign" / "benign (1).png").read_bytes())   # the same file
    (root / "malignant" / "malignant (2)_mask.png").write_bytes((root / "benign" / "benign (1)_mask.png").read_bytes())
    busi_tree(root, {"benign (3)": np.roll(a, (4, 6), axis=(0, 1))})                                         # a shifted copy
    r = kdbus("check-data", f"busi:{root}")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "duplicates 1 group(s) of 3 images, 1 across classes" in r.stdout, r.stdout
    assert "one scan filed under benign and malignant" in r.stdout and "benign (1), benign (3), malignant (2)" in r.stdout

def test_check_data_lists_copies_within_a_class_and_passes(tmp_path):
    a = scan(0)
    root = busi_tree(tmp_path / "B", {"benign (1)": a, "benign (2)": a[5:, :100], "malignant (1)": scan(2)})   # a cropped copy
    r = kdbus("check-data", f"busi:{root}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "duplicates 1 group(s) of 2 images, 0 across classes" in r.stdout and "benign (1), benign (2) (benign; similarity >= " in r.stdout
    r = kdbus("check-data", f"busi:{root}", "--duplicate-threshold", "1")                                      # identical files only
    assert r.returncode == 0 and "duplicates 0\n" in r.stdout, r.stdout
    r = kdbus("check-data", f"busi:{root}", "--duplicate-threshold", "80")
    assert r.returncode == 2 and "0 < S <= 1" in r.stderr, r.stderr

def test_bad_input_is_named_and_exit_code_is_2(tmp_path):
    r = kdbus("check-data", f"udiat:{tmp_path / 'missing'}")
    assert r.returncode == 2 and "missing" in r.stderr
    r = kdbus("check-data", "dicom:/x")
    assert r.returncode == 2 and "udiat" in r.stderr          # lists the valid kinds
    r = kdbus("synth", tmp_path / "s", "--n", 0)
    assert r.returncode == 2 and "n" in r.stderr


def test_grid_option_choices_are_the_config_s_values():
    "The parser lists --teacher-train-aug, --regressor-relu and --sup-loss choices itself (so `kdbus --help` imports no torch): they must stay the config's values."
    from kdbus.cli import make_parser
    from kdbus.config import TEACHER_TRAIN_AUGS, SUP_LOSSES
    from kdbus.models import REGRESSOR_RELU
    grid = next(a for a in make_parser()._subparsers._group_actions[0].choices.values() if any(o.dest == 'sup_loss' for o in a._actions))
    choices = {a.dest: tuple(a.choices) for a in grid._actions if a.dest in ('teacher_train_aug', 'regressor_relu', 'sup_loss')}
    assert choices == dict(teacher_train_aug=TEACHER_TRAIN_AUGS, regressor_relu=tuple(REGRESSOR_RELU), sup_loss=SUP_LOSSES), choices
