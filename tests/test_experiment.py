"Tests of kdbus.experiment: fail-fast checks, the run folder, teacher reuse without leakage, resumption after SIGKILL."
import json, os, signal, subprocess, sys, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kdbus.config import RunConfig, label_params, resolve_config
from kdbus.data import DataError
from kdbus.evaluate import BOUNDARY_COLUMNS, PER_IMAGE_COLUMNS, load_predictions, read_per_image
from kdbus.experiment import check_run, ensure_teacher, run_experiment
from kdbus.runfolder import check_same_run, read_json
from kdbus.train import HISTORY_COLUMNS, load_model, weights_hash

DATA = 'synth:n=24'
METRICS = {'label', 'fold', 'dice_mean', 'dice_std', 'iou_mean', 'n_test', 'params', 'regressor_params', 'best_epoch',
           'epochs_run', 'seconds', 'stopped', 'complete'}


def cfg(out, label='L_KLD_WAug', **kw):
    return resolve_config('smoke', **label_params(label), data=DATA, out_dir=str(out), **kw)


@pytest.fixture(scope='module')
def grid(tmp_path_factory):
    "Two KD runs of fold 0 and the Teacher they share, run once for the module."
    out = tmp_path_factory.mktemp('runs')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        m = {n: run_experiment(cfg(out, n), progress=False) for n in ('L_KLD_WAug', 'HReg_MSE')}
    return out, m


# ---------------------------------------------------------------- fail fast
def test_bad_parameters_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="loss='huber'"): resolve_config('smoke', loss='huber', out_dir=str(tmp_path))
    with pytest.raises(ValueError, match='fold=5 is out of range'): resolve_config('smoke', fold=5, out_dir=str(tmp_path))
    missing = resolve_config('smoke', data=f"udiat:{tmp_path/'no_such_set'}", out_dir=str(tmp_path/'runs'))
    t = time.perf_counter()
    with pytest.raises(DataError, match='no_such_set'): run_experiment(missing, progress=False)
    assert time.perf_counter() - t < 30 and not (tmp_path/'runs').exists()
    with pytest.raises(TypeError, match='RunConfig'): check_run(dict(path='logits'))


def _udiat(root, n=6, broken=None):
    (root/'original').mkdir(parents=True); (root/'GT').mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(root/'original'/f"{i:06d}.png")
        m = np.zeros((40, 48), np.uint8); m[10:20, 12:30] = 255
        Image.fromarray(m).save(root/'GT'/f"{i:06d}.png")
    (root/'labels.csv').write_text('image,type\n' + ''.join(f"{i:06d},{'benign' if i % 2 else 'malignant'}\n" for i in range(1, n + 1)))
    if broken:
        p = root/'original'/f"{broken:06d}.png"; p.write_bytes(p.read_bytes()[:60])
    return root


def test_unreadable_image_fails_before_training(tmp_path):
    root = _udiat(tmp_path/'set', broken=3)
    c = resolve_config('smoke', path='teacher', data=f"udiat:{root}", k_folds=2, n_folds=1, out_dir=str(tmp_path/'runs'))
    with pytest.raises(DataError, match=r'000003\.png: cannot decode.*looking for duplicate images'): check_run(c)  # every image is read once, for duplicates
    with pytest.raises(DataError, match=r'000003\.png: cannot decode'): run_experiment(c, progress=False)
    assert not c.run_dir.exists()


def test_too_few_images_for_the_folds(tmp_path):
    root = _udiat(tmp_path/'set', n=4)
    c = resolve_config('smoke', data=f"udiat:{root}", out_dir=str(tmp_path/'runs'))  # k_folds=5
    with pytest.raises(ValueError, match=r'\(4 images\) cannot be split'): check_run(c)


# ---------------------------------------------------------------- the run folder
def test_run_folder_holds_the_contracts_files(grid):
    out, m = grid
    d = out/'L_KLD_WAug'/'fold0'
    assert {p.name for p in d.iterdir() if not p.name.startswith('.')} == {
        'config.json', 'env.json', 'history.csv', 'per_image.csv', 'predictions.npz', 'metrics.json', 'best.pt'}
    met = read_json(d/'metrics.json')
    assert METRICS <= set(met) and met['complete'] is True and met == m['L_KLD_WAug']
    assert met['stopped'] in ('early', 'max_epochs') and met['regressor_params'] == 0 and met['n_test'] == 5
    c = read_json(d/'config.json')
    assert RunConfig.from_dict(c['config']) == cfg(out).replace(out_dir='.')  # paths relative to the results folder
    assert c['teacher']['checkpoint'] == 'Teacher/fold0/best.pt' and str(out) not in (d/'config.json').read_text()
    assert c['models']['trained']['trainable_params'] == met['params'] and c['models']['trained']['weights_source'] is None
    assert c['models']['teacher']['encoder'] == 'tu-mobilenetv3_small_075'
    env = read_json(d/'env.json')
    assert {'python', 'torch', 'smp', 'albumentations', 'numpy', 'kdbus', 'git_commit', 'device', 'torch_threads', 'platform', 'cpu', 'cpu_capability'} <= set(env)
    assert env['cpu_capability'] == torch.backends.cpu.get_cpu_capability() and env['cpu']  # results are bit-for-bit only on the same kind of CPU
    h = pd.read_csv(d/'history.csv')
    assert tuple(h.columns) == HISTORY_COLUMNS and len(h) == met['epochs_run'] and h.train_kd.notna().all()
    pi = read_per_image(d/'per_image.csv')
    assert tuple(pi.columns) == PER_IMAGE_COLUMNS + BOUNDARY_COLUMNS and pi.id.tolist() == c['split']['test']
    assert pi.hd95.dropna().ge(0).all() and pi.hd95_orig.notna().sum() == pi.hd95.notna().sum()  # both where defined
    assert np.isclose(pi.dice.mean(), met['dice_mean']) and pi.dice.between(0, 1).all()
    ids, masks = load_predictions(d/'predictions.npz')
    assert ids == pi.id.tolist() and masks.shape == (5, 64, 64) and masks.sum((1, 2)).tolist() == pi.pred_area.tolist()
    assert read_json(out/'HReg_MSE'/'fold0'/'metrics.json')['regressor_params'] > 0


def test_teacher_never_saw_the_test_images(grid):
    out, m = grid
    t = read_json(out/'Teacher'/'fold0'/'config.json')['split']
    for name in m:
        s = read_json(out/name/'fold0'/'config.json')['split']
        assert not (set(t['train']) | set(t['val'])) & set(s['test'])
        assert t['test'] == s['test'] and not set(s['train']) & set(s['test'])


def test_every_kd_run_of_a_fold_reuses_one_teacher(grid):
    out, m = grid
    tdir = out/'Teacher'/'fold0'
    h = weights_hash(load_model(tdir/'best.pt'))
    assert {v['teacher_weights_sha256'] for v in m.values()} == {h}
    for name in m: assert read_json(out/name/'fold0'/'config.json')['teacher']['weights_sha256'] == h
    before = {p.name: p.stat().st_mtime_ns for p in tdir.iterdir()}
    third = run_experiment(cfg(out, 'H_MSE'), progress=False)
    assert third['teacher_weights_sha256'] == h
    assert {p.name: p.stat().st_mtime_ns for p in tdir.iterdir()} == before  # not trained, not rewritten


def test_a_complete_run_is_not_redone(grid):
    out, m = grid
    d = out/'L_KLD_WAug'/'fold0'
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    assert run_experiment(cfg(out), progress=False) == m['L_KLD_WAug']
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == before


def test_a_teacher_with_other_settings_is_refused(grid):
    out, _ = grid
    with pytest.raises(ValueError, match=r"Teacher/fold0 holds a different Teacher run \(lr: 0.001 there, 0.005 here\)"):
        run_experiment(cfg(out, 'H_KLD', lr=0.005), progress=False)
    with pytest.raises(ValueError, match='size: 64 there, 96 here'):
        ensure_teacher(cfg(out, 'H_KLD', size=96), progress=False)


def test_a_data_folder_spelled_otherwise_is_the_same_run(tmp_path, monkeypatch):
    "A run made with a relative data folder is resumed (or its teacher reused) by one naming the folder absolutely."
    monkeypatch.chdir(tmp_path)
    cfg = lambda data: resolve_config('smoke', data=data, out_dir=str(tmp_path/'runs'))
    made = cfg('udiat:set')
    made.run_dir.mkdir(parents=True)
    (made.run_dir/'config.json').write_text(json.dumps(dict(config=made.to_dict())))
    check_same_run(cfg(f"udiat:{tmp_path/'set'}"), made.run_dir)
    with pytest.raises(ValueError, match=r"data: 'udiat:set' there, 'udiat:.*other' here"):
        check_same_run(cfg(f"udiat:{tmp_path/'other'}"), made.run_dir)


def test_a_teacher_without_checkpoint_is_retrained_identically(tmp_path):
    c = cfg(tmp_path, 'L_MSE')
    first = run_experiment(c, progress=False)
    tdir = c.teacher_config().run_dir
    tm = read_json(tdir/'metrics.json')
    for f in ('best.pt', 'last.pt'): (tdir/f).unlink(missing_ok=True)  # results kept without checkpoints
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a differing retrained teacher would warn
        second = run_experiment(cfg(tmp_path, 'L_MSE_WAug'), progress=False)
    assert second['teacher_weights_sha256'] == first['teacher_weights_sha256']
    assert read_json(tdir/'metrics.json')['dice_mean'] == tm['dice_mean']


# ---------------------------------------------------------------- killed and resumed
SCRIPT = """
import sys
import torch
torch.set_num_threads(int(sys.argv[3]))  # the parent's: CPU results are reproducible for a given thread count
from kdbus.config import resolve_config
from kdbus.experiment import run_experiment
run_experiment(resolve_config('smoke', path='none', data='synth:n=24', epochs=int(sys.argv[2]), patience=int(sys.argv[2]), out_dir=sys.argv[1]), progress=False)
"""

def test_a_killed_run_resumes_at_the_next_epoch_and_completes(tmp_path):
    epochs = 12  # enough to be killed part-way: the poll below kills at the first last.pt
    c = resolve_config('smoke', path='none', data=DATA, epochs=epochs, patience=epochs, out_dir=str(tmp_path/'killed'))
    last = c.run_dir/'last.pt'
    p = subprocess.Popen([sys.executable, '-c', SCRIPT, c.out_dir, str(epochs), str(torch.get_num_threads())], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not last.exists() and p.poll() is None and time.time() < deadline: time.sleep(0.05)
        assert last.exists(), f"no last.pt appeared: {p.poll()=} {p.stderr.read().decode()[-2000:] if p.poll() is not None else ''}"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(30)
    assert p.returncode == -signal.SIGKILL
    assert not (c.run_dir/'metrics.json').exists()
    ck = torch.load(last, weights_only=True)
    done = ck['epoch']
    assert 1 <= done < epochs
    m = run_experiment(c, progress=False)
    h = pd.read_csv(c.run_dir/'history.csv')
    assert h.epoch.tolist() == list(range(1, epochs + 1))  # continued, no epoch twice
    kept = pd.DataFrame(ck['history'])
    pd.testing.assert_frame_equal(h.iloc[:done], kept[list(h.columns)], check_exact=False, rtol=1e-12)  # not retrained (same timings)
    assert m['complete'] and m['epochs_run'] == epochs and m['stopped'] == 'max_epochs'
    # the same config, never interrupted, ends with the same results
    u = run_experiment(c.replace(out_dir=str(tmp_path/'whole')), progress=False)
    hu = pd.read_csv(tmp_path/'whole'/'Student'/'fold0'/'history.csv')
    pd.testing.assert_frame_equal(h.drop(columns='seconds'), hu.drop(columns='seconds'))
    assert {k: v for k, v in m.items() if k != 'seconds'} == {k: v for k, v in u.items() if k != 'seconds'}


def test_a_split_file_fixes_the_test_parts_and_bad_ones_fail_first(tmp_path):
    "data='udiat:DIR:splits=FILE': the file's folds are the run's; a bad file is named with its line before anything is written."
    root = _udiat(tmp_path/'set', n=6)
    sp = tmp_path/'folds.csv'
    sp.write_text('case,fold\n' + ''.join(f"{i:06d},{(i - 1) % 2}\n" for i in range(1, 7)))
    c = resolve_config('smoke', data=f"udiat:{root}:splits={sp}", out_dir=str(tmp_path/'runs'), path='none', fold=1, n_folds=2, val_frac=0.25)
    folds = check_run(c)
    assert [f.test.tolist() for f in folds] == [[0, 2, 4], [1, 3, 5]]
    sp.write_text('case,fold\n000001,0\n000002,7\n')
    with pytest.raises(DataError, match=r"folds.csv: .*4 image\(s\) of the data set are not listed"):
        run_experiment(c, progress=False)
    sp.write_text('case,fold\n' + ''.join(f"{i:06d},0\n" for i in range(1, 4)) + ''.join(f"{i:06d},1\n" for i in range(4, 7)) + '000003,1\n')
    with pytest.raises(DataError, match=r"line 8: case '000003' is listed again \(first on line 4\)"):
        run_experiment(c, progress=False)
    assert not (tmp_path/'runs').exists()
