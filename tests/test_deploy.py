"Tests of kdbus.deploy and `kdbus export` / `kdbus predict`: parity of ONNX Runtime and PyTorch, predict on the BUSI sample and on synthetic images, bad inputs."
import json, os, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import kdbus_main
from kdbus.cli import main
from kdbus.data import load_data, read_image
from kdbus.deploy import (PARITY_ATOL, PARITY_MASK, PARITY_RTOL, PREDICT_COLUMNS, DeployError, check_parity, export_student,
                          load_onnx, load_segmenter, load_student, predict_paths, prepare, read_checkpoint)
from kdbus.evaluate import predict
from kdbus.models import PRESETS, build_model

ROOT = Path(__file__).resolve().parents[1]
BUSI = ROOT.parent/'shared'/'data'/'busi-sample'
KDBUS = Path(sys.executable).parent/'kdbus'
needs_busi = pytest.mark.skipif(not BUSI.is_dir(), reason=f"BUSI sample not found at {BUSI} (kept outside the repository)")


@pytest.fixture(scope='module')
def run(smoke_student, tmp_path_factory):
    "A trained smoke Student run (fold 0 of 30 synthetic images; `conftest.smoke_student`), its exported ONNX file and int8 file."
    out, metrics = smoke_student
    ck = out/'Student'/'fold0'/'best.pt'
    exp = export_student(ck, tmp_path_factory.mktemp('onnx')/'student.onnx', int8=True)
    return dict(ck=ck, onnx=exp['onnx'], int8=exp['int8'], export=exp, metrics=metrics, out=out)


class Result:
    def __init__(self, returncode, stdout, stderr): self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

def cli(*args):
    "Run `kdbus ARGS` in this process (the console script's `main`), capturing its exit code and output."
    return Result(*kdbus_main(*args))

def script(*args):
    "Run the installed `kdbus` console script in a process of its own."
    return subprocess.run([str(KDBUS), *map(str, args)], capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})


# ---------------------------------------------------------------- export and parity
def test_export_parity_with_pytorch(run):
    exp = run['export']
    assert exp['ok'] and exp['size'] == 64 and exp['label'] == 'Student'
    for p in exp['parity']:
        assert p['mask_agree'] >= PARITY_MASK and p['within_tol'] == 1.0 and p['max_abs'] < PARITY_ATOL, p
    sess = load_onnx(run['onnx'])
    assert [i.shape for i in sess.get_inputs()] == [['batch', 3, 'height', 'width']]
    model, _ = load_student(run['ck'])
    rng = np.random.default_rng(3)
    for shape in [(4, 3, 64, 64), (1, 3, 128, 96), (2, 3, 100, 70)]:  # dynamic batch and size, also not multiples of 32
        x = rng.standard_normal(shape, dtype=np.float32)
        r = check_parity(model, sess, x)
        assert r['shape'] == (shape[0], 2, *shape[2:]) and r['ok'], (shape, r)


def test_parity_check_can_fail(run, tmp_path):
    "A model whose ONNX file holds other weights fails the parity check."
    model, _ = load_student(run['ck'])
    other = build_model(PRESETS['smoke']['student']).eval()
    r = check_parity(other, load_onnx(run['onnx']), np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32))
    assert not r['ok'] and r['within_tol'] < 1


@needs_busi
def test_parity_and_evaluation_masks_on_real_images(run):
    "On the BUSI sample: predict's preprocessing is load_data's, its masks are evaluate.predict's, ONNX agrees with PyTorch."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        data = load_data(f"busi:{BUSI}", size=64)
    files = sorted((BUSI/'benign').glob('*).png'))[:5]
    by_id = dict(zip(data.ids, data.images))
    for f in files:  # the same pixels as the training/evaluation loader
        np.testing.assert_array_equal(prepare(read_image(f), 64), by_id[next(i for i in data.ids if i.endswith(f.stem))])
    model, _ = load_student(run['ck'])
    seg_pt, seg_onnx = load_segmenter(run['ck']), load_segmenter(run['onnx'], threads=1)
    ref = predict(model, data.images)
    np.testing.assert_array_equal(seg_pt.masks(data.images), ref)
    assert (seg_onnx.masks(data.images) == ref).mean() >= PARITY_MASK
    lo, lt = seg_pt.logits(data.images), seg_onnx.logits(data.images)
    assert np.all(np.abs(lo - lt) <= PARITY_ATOL + PARITY_RTOL * np.abs(lo))


# ---------------------------------------------------------------- predict
@needs_busi
def test_cli_predict_on_the_busi_sample(run, tmp_path):
    r = cli('predict', run['onnx'], BUSI, '--out', tmp_path/'p')
    assert r.returncode == 0, r.stderr
    assert '60 image(s) segmented' in r.stdout and '60 mask file(s) skipped' in r.stdout and 'README.md' in r.stdout
    df = pd.read_csv(tmp_path/'p'/'predictions.csv', keep_default_na=False)
    assert list(df.columns) == list(PREDICT_COLUMNS) and len(df) == 60 and (df.error == '').all()
    for row in df.sample(5, random_state=0).itertuples():  # masks and overlays at the image's own size
        m = np.asarray(Image.open(tmp_path/'p'/row.mask))
        im = Image.open(BUSI/row.file)
        assert m.shape == (im.height, im.width) == (row.height, row.width) and set(np.unique(m)) <= {0, 255}
        assert int((m > 0).sum()) == row.lesion_px
        assert Image.open(tmp_path/'p'/row.overlay).size == im.size


def _synthetic_folder(root):
    "Images of odd sizes and kinds, plus the broken and the irrelevant."
    rng = np.random.default_rng(0)
    (root/'deep'/'er').mkdir(parents=True)
    Image.fromarray((rng.random((333, 517, 3)) * 255).astype(np.uint8)).save(root/'wide.png')
    Image.fromarray((rng.random((700, 90)) * 255).astype(np.uint8)).save(root/'deep'/'tall grey.jpg')
    Image.fromarray((rng.random((50, 40)) * 65535).astype(np.uint16)).save(root/'deep'/'er'/'sixteen.png')  # 16-bit
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(root/'tiny.bmp')
    (root/'truncated.png').write_bytes((root/'wide.png').read_bytes()[:300])
    (root/'text.png').write_text('this is not a PNG')
    (root/'notes.txt').write_text('ignored')
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root/'wide_mask.png')
    return root


def test_predict_on_synthetic_images_of_any_size(run, tmp_path):
    src = _synthetic_folder(tmp_path/'in')
    seg = load_segmenter(run['ck'])
    df = predict_paths(seg, src, tmp_path/'out', progress=False)
    assert df.file.tolist() == ['deep/er/sixteen.png', 'deep/tall grey.jpg', 'text.png', 'tiny.bmp', 'truncated.png', 'wide.png']
    errors = dict(zip(df.file, df.error))
    assert 'truncated or corrupt' in errors['truncated.png'] and 'not a readable image' in errors['text.png']
    assert not any(errors[f] for f in ('wide.png', 'deep/tall grey.jpg', 'deep/er/sixteen.png', 'tiny.bmp'))
    for f, shape in (('wide.png', (333, 517)), ('deep/tall grey.jpg', (700, 90)), ('deep/er/sixteen.png', (50, 40))):
        m = np.asarray(Image.open(tmp_path/'out'/'masks'/Path(f).with_suffix('.png')))
        assert m.shape == shape
    assert df.attrs['skipped_masks'] == [str(src/'wide_mask.png')] and df.attrs['ignored'] == [str(src/'notes.txt')]
    # the PyTorch checkpoint and the ONNX file give (nearly) the same masks at the original size
    df2 = predict_paths(load_segmenter(run['onnx']), src, tmp_path/'out2', progress=False)
    for f in ('wide.png', 'deep/tall grey.jpg'):
        a, b = (np.asarray(Image.open(d/'masks'/Path(f).with_suffix('.png'))) for d in (tmp_path/'out', tmp_path/'out2'))
        assert (a == b).mean() >= PARITY_MASK
    # a single file, and the output folder inside the input folder is not read back as input
    one = predict_paths(seg, src/'wide.png', src/'preds', progress=False)
    assert one.file.tolist() == ['wide.png']
    again = predict_paths(seg, src, src/'preds', progress=False)
    assert not any(f.startswith('preds') for f in again.file)


def test_cli_predict_reports_unreadable_files_and_keeps_the_rest(run, tmp_path):
    src = _synthetic_folder(tmp_path/'in')
    r = cli('predict', run['ck'], src, '--out', tmp_path/'out', '--threads', '1')
    assert r.returncode == 1
    assert 'truncated.png' in r.stderr and 'text.png' in r.stderr and '4 image(s) segmented' in r.stdout
    df = pd.read_csv(tmp_path/'out'/'predictions.csv', keep_default_na=False)
    assert len(df) == 6 and (df.error != '').sum() == 2 and (df.lesion_px != '').sum() == 4


def test_threads_apply_to_the_segmenter_only(run, tmp_path):
    "`--threads` / threads= sets PyTorch's threads for the segmenter's calls; the process's own setting is left as it was."
    before = torch.get_num_threads()
    seg = load_segmenter(run['ck'], threads=before + 1)
    seen = []
    seg.model.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    seg.masks(np.zeros((1, 64, 64, 3), np.float32))
    assert seen == [before + 1] and torch.get_num_threads() == before
    assert cli('predict', run['ck'], _synthetic_folder(tmp_path/'in'), '--out', tmp_path/'out', '--threads', before + 1).returncode == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match='threads=0'): load_segmenter(run['ck'], threads=0)


# ---------------------------------------------------------------- bad input
def test_bad_checkpoints_are_named(run, tmp_path):
    good = run['ck'].read_bytes()
    (tmp_path/'cut.pt').write_bytes(good[:len(good) // 2])
    (tmp_path/'empty.pt').write_bytes(b'')
    (tmp_path/'text.pt').write_text('hello')
    torch.save([1, 2, 3], tmp_path/'list.pt')
    torch.save(load_student(run['ck'])[0].state_dict(), tmp_path/'weights_only.pt')
    for name, msg in (('cut.pt', 'not a readable PyTorch checkpoint'), ('empty.pt', 'empty file'), ('text.pt', 'not a readable PyTorch checkpoint'),
                      ('list.pt', r'not a kdbus checkpoint \(a list\)'), ('weights_only.pt', 'not a kdbus checkpoint')):
        with pytest.raises(DeployError, match=msg) as e: load_student(tmp_path/name)
        assert name in str(e.value)
    with pytest.raises(FileNotFoundError, match='nope.pt'): load_student(tmp_path/'nope.pt')
    teacher_run = tmp_path/'Teacher'/'fold0'; teacher_run.mkdir(parents=True)
    t = build_model(PRESETS['smoke']['teacher'])
    torch.save(dict(model=t.state_dict(), spec=t.kdbus_spec.to_dict()), teacher_run/'best.pt')
    with pytest.raises(DeployError, match='a teacher checkpoint'): load_student(teacher_run/'best.pt')  # by its spec: no config.json
    (teacher_run/'config.json').write_text(json.dumps(dict(label='Teacher', config=dict(size=64))))
    assert read_checkpoint(teacher_run/'best.pt')['role'] == 'teacher'
    r = cli('export', teacher_run/'best.pt', tmp_path/'t.onnx')
    assert r.returncode == 2 and 'best.pt: a teacher checkpoint' in r.stderr and not (tmp_path/'t.onnx').exists()
    r = script('export', tmp_path/'cut.pt', tmp_path/'c.onnx')  # the console script too: exit 2, no traceback
    assert r.returncode == 2 and 'cut.pt: not a readable PyTorch checkpoint' in r.stderr and 'Traceback' not in r.stderr


def test_bad_onnx_files_are_named(run, tmp_path):
    grey = build_model(PRESETS['smoke']['student'].replace(in_channels=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(grey, (torch.zeros(1, 1, 64, 64),), str(tmp_path/'grey.onnx'), dynamo=False)
        flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)).eval()
        torch.onnx.export(flat, (torch.zeros(1, 3, 2, 2),), str(tmp_path/'vector.onnx'), dynamo=False)
    with pytest.raises(DeployError, match=r"grey.onnx: the model's input is .* 1 x 1 x 64 x 64; expected one float input N x 3 x H x W"): load_onnx(tmp_path/'grey.onnx')
    with pytest.raises(DeployError, match=r"vector.onnx: the model's output is 1 x 2; expected"): load_onnx(tmp_path/'vector.onnx')
    half = run['onnx'].read_bytes(); (tmp_path/'cut.onnx').write_bytes(half[:len(half) // 2])
    with pytest.raises(DeployError, match='cut.onnx: not a readable ONNX model'): load_onnx(tmp_path/'cut.onnx')
    src = tmp_path/'imgs'; src.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src/'a.png')
    for f in ('grey.onnx', 'cut.onnx'):
        r = cli('predict', tmp_path/f, src, '--out', tmp_path/'o')
        assert r.returncode == 2 and f in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path/'o'/'predictions.csv').exists()


def test_bad_predict_inputs(run, tmp_path):
    (tmp_path/'empty').mkdir()
    (tmp_path/'docs').mkdir(); (tmp_path/'docs'/'a.txt').write_text('x')
    for d in ('empty', 'docs', 'missing'):
        r = cli('predict', run['onnx'], tmp_path/d, '--out', tmp_path/'o')
        assert r.returncode == 2 and d in r.stderr, r.stderr
    r = cli('export', run['ck'], tmp_path/'x.pt')
    assert r.returncode == 2 and 'ending in .onnx' in r.stderr


# ---------------------------------------------------------------- the commands, end to end
def test_cli_export_then_predict(run, tmp_path):
    r = cli('export', run['ck'], tmp_path/'m.onnx', '--int8')
    assert r.returncode == 0, r.stderr
    assert 'masks agree on 100' in r.stdout or 'masks agree on 99.9' in r.stdout
    assert ': ok' in r.stdout and (tmp_path/'m.onnx').is_file() and (tmp_path/'m.int8.onnx').is_file()
    img = tmp_path/'scan.png'
    Image.fromarray((np.random.default_rng(0).random((300, 400)) * 255).astype(np.uint8)).save(img)
    for model in ('m.onnx', 'm.int8.onnx'):
        assert main(['predict', str(tmp_path/model), str(img), '--out', str(tmp_path/model.replace('.', '_'))]) == 0
        df = pd.read_csv(tmp_path/model.replace('.', '_')/'predictions.csv')
        assert df.loc[0, 'file'] == 'scan.png' and (df.loc[0, 'height'], df.loc[0, 'width']) == (300, 400)


def test_commands_from_an_installed_wheel(run, tmp_path):
    "Build the wheel, install it into a folder of its own and run export and predict from outside the checkout."
    dist, target, work = tmp_path/'dist', tmp_path/'site', tmp_path/'elsewhere'
    work.mkdir()
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(dist), str(ROOT)], check=True, cwd=work)
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(target), *map(str, dist.glob('kdbus-*.whl'))], check=True)
    env = {**os.environ, 'PYTHONPATH': str(target), 'OMP_NUM_THREADS': '1'}
    exe = str(target/'bin'/'kdbus')
    r = subprocess.run([exe, 'export', str(run['ck']), 'w.onnx'], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and ': ok' in r.stdout, r.stderr
    Image.fromarray(np.full((80, 120), 128, np.uint8)).save(work/'x.png')
    r = subprocess.run([exe, 'predict', 'w.onnx', 'x.png', '--out', 'p'], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and (work/'p'/'predictions.csv').is_file(), r.stderr
    r = subprocess.run([sys.executable, '-c', 'import kdbus.deploy as d; print(d.__file__)'], cwd=work, env=env, capture_output=True, text=True, check=True)
    assert Path(r.stdout.strip()).is_relative_to(target)
