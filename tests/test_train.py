"Tests of kdbus.train: one loop for all runs, reproducibility, resumption, early stopping, failure injection."
import math, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import kdbus.distill
import kdbus.train as kt
from kdbus.config import resolve_config
from kdbus.data import SegData, load_data
from kdbus.folds import make_folds
from kdbus.evaluate import dice_iou
from kdbus.files import atomic_save
from kdbus.train import (Baseline, NonFiniteLoss, build_step, fit, load_model, pick_device, weights_hash)

DATA = 'synth:n=24'


@pytest.fixture(scope='module')
def parts():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        d = load_data(DATA, size=64)
    f = make_folds(d.labels, k=5, seed=0)[0]
    return d.subset(f.train), d.subset(f.val)  # 16 training, 3 validation images


def cfg_for(tmp_path, **kw):
    return resolve_config('smoke', data=DATA, out_dir=str(tmp_path), **{'path': 'teacher', **kw})


@pytest.fixture(scope='module')
def teacher(parts, tmp_path_factory):
    c = resolve_config('smoke', path='teacher', data=DATA, out_dir=str(tmp_path_factory.mktemp('t')))
    return fit(build_step(c), c, *parts, progress=False).model


def test_same_config_same_history_and_weights(parts, tmp_path, teacher):
    for kw in (dict(path='teacher', epochs=3), dict(path='hidden_regressor', loss='kld', teacher_aug='weak')):
        runs = []
        for sub in ('a', 'b'):
            c = cfg_for(tmp_path/sub, **kw)
            runs.append(fit(build_step(c, teacher), c, *parts, progress=False))
        a, b = runs
        pd.testing.assert_frame_equal(a.history.drop(columns='seconds'), b.history.drop(columns='seconds'))
        assert weights_hash(a.model) == weights_hash(b.model)
    assert a.regressor_params > 0 and a.history.train_kd.notna().all()  # the KD run logs its KD term
    c = cfg_for(tmp_path/'seed1', path='hidden_regressor', loss='kld', teacher_aug='weak', seed=1)
    other = fit(build_step(c, teacher), c, *parts, progress=False)
    assert weights_hash(other.model) != weights_hash(a.model)


def test_history_and_checkpoint(parts, tmp_path):
    c = cfg_for(tmp_path, epochs=3, patience=3, select='val_loss', lr_schedule='constant', warmup_epochs=0)
    r = fit(build_step(c), c, *parts, progress=False)
    h = pd.read_csv(c.run_dir/'history.csv')
    assert h.epoch.tolist() == [1, 2, 3] and h.train_kd.isna().all()
    assert (h.lr == c.lr).all() and (h.seconds > 0).all() and h.val_dice.between(0, 1).all() and h.val_nonempty.between(0, 1).all()
    assert r.best_epoch == int(h.epoch[h.val_loss.idxmin()]) and r.stopped == 'max_epochs' and r.epochs_run == 3
    ck = torch.load(c.run_dir/'best.pt', weights_only=True)
    assert ck['epoch'] == r.best_epoch and math.isclose(ck['val_loss'], r.best_val_loss)
    assert weights_hash(load_model(c.run_dir/'best.pt')) == weights_hash(r.model)
    assert not list(c.run_dir.glob('.*.tmp'))  # no temporary file left behind


def test_early_stopping_on_validation_loss(parts, tmp_path, monkeypatch):
    losses = iter([1.0, 0.5, 0.7, 0.6, 0.9, 0.1])
    monkeypatch.setattr(kt, 'validate', lambda model, loader, sup='ce': (next(losses), 0.5, 1.0))
    c = cfg_for(tmp_path, epochs=6, patience=3, select='val_loss', warmup_epochs=0)
    r = fit(build_step(c), c, *parts, progress=False)
    assert (r.stopped, r.best_epoch, r.epochs_run, r.best_val_loss) == ('early', 2, 5, 0.5)
    assert torch.load(c.run_dir/'best.pt', weights_only=True)['epoch'] == 2


def test_resume_continues_at_the_next_epoch_with_the_same_results(parts, tmp_path):
    "A run interrupted in the middle of its schedule (warm-up then cosine) resumes with the history and weights of an uninterrupted run."
    c = cfg_for(tmp_path/'a', epochs=4, patience=4, warmup_epochs=1, lr_schedule='cosine')
    whole = fit(build_step(c), c, *parts, progress=False)
    c2 = c.replace(out_dir=str(tmp_path/'b'))
    step, batches = build_step(c2), math.ceil(len(parts[0]) / c2.batch_size)
    forward, calls = step.forward, []
    def dies_in_epoch_3(batch):  # the process "dies" at the first batch of epoch 3
        calls.append(1)
        if len(calls) == 2 * batches + 1: raise KeyboardInterrupt
        return forward(batch)
    step.forward = dies_in_epoch_3
    with pytest.raises(KeyboardInterrupt): fit(step, c2, *parts, progress=False)
    first = pd.read_csv(c2.run_dir/'history.csv')
    assert first.epoch.tolist() == [1, 2] and torch.load(c2.run_dir/'last.pt', weights_only=True)['epoch'] == 2
    resumed = fit(build_step(c2), c2, *parts, progress=False)
    assert resumed.history.epoch.tolist() == [1, 2, 3, 4]
    assert resumed.history.seconds[:2].tolist() == first.seconds.tolist()  # epochs 1-2 kept, not trained again
    assert resumed.history.lr.nunique() == 4  # the schedule moved every epoch
    pd.testing.assert_frame_equal(whole.history.drop(columns='seconds'), resumed.history.drop(columns='seconds'))
    assert weights_hash(whole.model) == weights_hash(resumed.model)
    again = fit(build_step(c2), c2, *parts, progress=False)  # finished: nothing more
    assert again.epochs_run == 4


def test_resume_refuses_another_runs_checkpoint(parts, tmp_path):
    c = cfg_for(tmp_path, epochs=1)
    fit(build_step(c), c, *parts, progress=False)
    other = c.replace(lr=0.01)
    with pytest.raises(ValueError, match=r"belongs to a different run \(differs in \['lr'\]\)"):
        fit(build_step(other), other, *parts, progress=False)
    (c.run_dir/'best.pt').unlink()
    with pytest.raises(FileNotFoundError, match='best.pt is missing'):
        fit(build_step(c.replace(epochs=1)), c, *parts, progress=False)


def test_nan_supervised_loss_stops_with_epoch_batch_and_term(parts, tmp_path, monkeypatch):
    calls = {'n': 0}
    real = kt.sup_loss
    def poisoned(logits, mask, kind='ce'):  # per epoch: 2 training batches + 1 validation batch
        calls['n'] += 1
        out = real(logits, mask, kind)
        return out * float('nan') if calls['n'] == 5 else out
    monkeypatch.setattr(kt, 'sup_loss', poisoned)
    c = cfg_for(tmp_path, epochs=3, patience=3)
    with pytest.raises(NonFiniteLoss) as e: fit(build_step(c), c, *parts, progress=False)
    msg = str(e.value)
    assert 'non-finite loss at epoch 2, batch 2: sup=nan' in msg and 'last.pt (epoch 1)' in msg and c.label in msg
    ck = torch.load(c.run_dir/'last.pt', weights_only=True)
    assert ck['epoch'] == 1 and all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())
    assert pd.read_csv(c.run_dir/'history.csv').epoch.tolist() == [1]
    monkeypatch.setattr(kt, 'sup_loss', real)  # the fault is gone: the run resumes from epoch 2
    r = fit(build_step(c), c, *parts, progress=False)
    assert r.history.epoch.tolist() == [1, 2, 3]


def test_nan_kd_term_is_named_and_nothing_is_saved(parts, tmp_path, monkeypatch, teacher):
    monkeypatch.setattr(kdbus.distill, 'distill_loss', lambda *a, **k: torch.tensor(float('inf')))
    c = cfg_for(tmp_path, path='logits', loss='mse', teacher_aug='weak')
    with pytest.raises(NonFiniteLoss, match=r'epoch 1, batch 1: kd=inf .*no epoch had finished'):
        fit(build_step(c, teacher), c, *parts, progress=False)
    assert not (c.run_dir/'last.pt').exists() and not (c.run_dir/'best.pt').exists()


def test_nan_validation_loss_is_named(parts, tmp_path, monkeypatch):
    monkeypatch.setattr(kt, 'validate', lambda model, loader, sup='ce': (float('nan'), 0.0, 0.0))
    c = cfg_for(tmp_path)
    with pytest.raises(NonFiniteLoss, match='epoch 1, validation: val=nan'): fit(build_step(c), c, *parts, progress=False)


def test_one_loop_for_every_run_type(parts, tmp_path, teacher):
    for kw in (dict(path='none'), dict(path='logits', loss='kld', teacher_aug='strong'), dict(path='hidden', loss='mse', teacher_aug='weak')):
        c = cfg_for(tmp_path, epochs=1, **kw)
        step = build_step(c, teacher)
        r = fit(step, c, *parts, progress=False)
        assert r.model is step.student and r.params == sum(p.numel() for p in step.student.parameters())
        assert r.history.train_kd.isna().all() == (kw['path'] == 'none')


def test_a_single_image_last_batch_is_dropped(parts, tmp_path, monkeypatch):
    train, val = parts
    seen = []
    real = Baseline.forward
    monkeypatch.setattr(Baseline, 'forward', lambda self, batch: (seen.append(len(batch['mask'])), real(self, batch))[1])
    for n in (17, 18):
        seen.clear()
        idx = np.arange(n) % len(train)
        sub = SegData(train.images[idx], train.masks[idx], [f"i{i}" for i in range(n)], [None] * n)
        c = cfg_for(tmp_path/str(n), epochs=1)
        fit(build_step(c), c, sub, val, progress=False)
        assert seen == ([8, 8] if n == 17 else [8, 8, 2]), seen


def test_dice_iou_empty_convention():
    z = torch.zeros(2, 4, 4, dtype=torch.bool); one = z.clone(); one[:, 0, 0] = True
    assert dice_iou(z, z)[0].tolist() == [1.0, 1.0] and dice_iou(z, z)[1].tolist() == [1.0, 1.0]
    assert dice_iou(one, z)[0].tolist() == [0.0, 0.0] and dice_iou(z, one)[1].tolist() == [0.0, 0.0]
    assert dice_iou(one, one)[0].tolist() == [1.0, 1.0]


def test_device_choice():
    assert pick_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda:0'"): pick_device('cuda:0')


def test_the_paper_profiles_code_path_trains_on_the_cpu(parts, tmp_path):
    "The paper preset (ResNeXt-101 teacher, its 0.83 M student, the HR regressor of 2048 channels) trains one epoch per KD path."
    from kdbus.models import build_model, resolve_specs
    base = dict(data=DATA, out_dir=str(tmp_path), size=64, batch_size=8, epochs=1, encoder_weights='none', device='cpu')  # random weights: no download
    tspec, _ = resolve_specs('paper', None)
    torch.manual_seed(0)
    teacher = build_model(tspec).eval()  # untrained: the cost and the code path do not depend on its weights
    for path in ('logits', 'hidden', 'hidden_regressor'):
        c = resolve_config('paper', path=path, loss='kld', teacher_aug='weak', **base)
        assert (c.select, c.lr_schedule, c.patience, c.model_preset) == ('val_loss', 'constant', 50, 'paper')
        step = build_step(c, teacher)
        r = fit(step, c, *parts, progress=False)
        assert r.epochs_run == 1 and np.isfinite(r.history.train_kd).all() and np.isfinite(r.history.val_loss).all()
        assert 0.8e6 < r.params < 0.9e6  # the paper's student: 0.82 M
        assert (r.regressor_params > 2e6) == (path == 'hidden_regressor')  # R maps 432 -> 2048 channels
        if path == 'hidden_regressor': assert type(step.regressor[-1]).__name__ == 'ReLU'  # ResNeXt's output is >= 0: the paper's R, ReLU kept


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    "tools/cpu_reference.py, the committed reference, and the plain CPU run (AMP off, no workers, each run's layout spelled out) made here."
    import importlib.util, json
    spec = importlib.util.spec_from_file_location('cpu_reference', Path(__file__).resolve().parents[1]/'tools'/'cpu_reference.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    plain = mod.train_reference(tmp_path_factory.mktemp('plain'), amp='off', layouts=mod.PLAIN_LAYOUTS)
    return mod, json.loads(mod.OUT.read_text()), plain


def _bit_identical(got, want):
    for name in want:
        pd.testing.assert_frame_equal(pd.DataFrame(got[name]['history']), pd.DataFrame(want[name]['history']), check_exact=True)
        assert got[name]['weights'] == want[name]['weights'], name


@pytest.mark.parametrize('settings', [dict(), dict(num_workers=2)])
def test_gpu_settings_leave_the_cpu_path_bit_identical(reference, tmp_path, settings):
    "On this machine: AMP ('auto') is a no-op on the CPU, channels-last ('auto') is contiguous, and persistent DataLoader workers draw the same augmentation, bit for bit."
    mod, _, plain = reference
    _bit_identical(mod.train_reference(tmp_path, **settings), plain)


def _within_tolerance(got_runs: dict, want_runs: dict, tol: dict):
    "Every history of `got_runs` within `tol` of `want_runs` (tools/cpu_reference.py's TOLERANCE), else AssertionError."
    for name, want in want_runs.items():
        got, want = pd.DataFrame(got_runs[name]['history']), pd.DataFrame(want['history'])
        assert list(got.columns) == list(want.columns) and list(got.epoch) == list(want.epoch), name
        for c in ('train_loss', 'train_sup', 'train_kd', 'val_loss', 'lr'):
            np.testing.assert_allclose(got[c], want[c], rtol=tol['rtol'], atol=tol['atol'], equal_nan=True, err_msg=f"{name} {c}")
        for c in ('val_dice', 'val_nonempty'):
            np.testing.assert_allclose(got[c], want[c], rtol=0, atol=tol['dice_atol'], err_msg=f"{name} {c}")


def test_cpu_results_match_the_committed_reference(reference):
    "The plain CPU run against tests/data/cpu_reference.json, made on another machine: within its tolerance, never bit for bit."
    mod, ref, plain = reference
    assert set(ref) == {'machine', 'tolerance', 'runs'} and ref['tolerance'] == mod.TOLERANCE and ref['machine']['cpu']
    _within_tolerance(plain, ref['runs'], mod.TOLERANCE)


def test_the_reference_tolerance_catches_a_real_change(reference):
    "A history one epoch behind (every loss a step later) is outside the tolerance: it is tighter than training itself moves."
    import copy
    mod, ref, plain = reference
    late = copy.deepcopy(plain)
    for r in late.values():
        h = r['history']
        for now, before in zip(h[1:], h[:-1]): now['train_loss'] = before['train_loss']
    with pytest.raises(AssertionError, match='train_loss'): _within_tolerance(late, ref['runs'], mod.TOLERANCE)


def _reference_runs(script, tmp_path, **settings):
    "The smoke runs of tools/cpu_reference.py retrained with `settings`, beside the committed reference's runs."
    import json
    mod = script('tools/cpu_reference.py')
    return mod.train_reference(tmp_path, **settings), json.loads(mod.OUT.read_text())['runs']


def test_mixed_precision_and_channels_last_train_and_change_the_numbers(script, tmp_path):
    "Forced on the CPU (bf16 autocast, channels-last models and batches), every run type trains to finite losses, and not to the reference's bits: the switches act."
    got, ref = _reference_runs(script, tmp_path, amp='bf16', channels_last='on')
    for name in ref:
        h = pd.DataFrame(got[name]['history'])
        assert np.isfinite(h[['train_loss', 'val_loss']].to_numpy()).all() and got[name]['weights'] != ref[name]['weights']
        np.testing.assert_allclose(h.train_loss, pd.DataFrame(ref[name]['history']).train_loss, rtol=0.02)  # bf16 moves the 3rd digit at most


def test_precision_and_layout_choices():
    c = resolve_config('smoke', path='none')
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    assert (c.amp, c.channels_last) == ('auto', 'auto') and kt.amp_dtype(c, cpu) is None
    # on the CPU contiguous for every run: channels-last batch norm trains imprecisely there (nbs/07_train.ipynb)
    runs = [c, c.replace(path='teacher'), *(resolve_config('smoke', path=p, loss='kld') for p in ('logits', 'hidden', 'hidden_regressor'))]
    assert all(kt.memory_format(r, cpu) == torch.contiguous_format for r in runs)
    assert kt.memory_format(c.replace(path='teacher', channels_last='on'), cpu) == torch.channels_last
    assert kt.memory_format(c.replace(channels_last='off'), cpu) == torch.contiguous_format
    assert kt.memory_format(c, cuda) == kt.memory_format(c.replace(path='teacher'), cuda) == torch.channels_last
    assert kt.memory_format(c.replace(channels_last='off'), cuda) == torch.contiguous_format
    with pytest.raises(ValueError, match="channels_last='yes' is not valid; expected one of: 'auto', 'on', 'off'"): c.replace(channels_last='yes')
    assert kt.amp_dtype(c.replace(amp='fp16'), cpu) == torch.float16 and kt.amp_dtype(c.replace(amp='off'), cuda) is None
    assert 'amp' not in c.identity() and 'channels_last' not in c.identity()  # like `device`: a run resumes on another device
    with pytest.raises(ValueError, match="amp='fp8' is not valid; expected one of: 'auto', 'off', 'bf16', 'fp16'"): c.replace(amp='fp8')


def test_a_kd_runs_teacher_takes_the_runs_layout(parts, tmp_path, teacher):
    "The frozen teacher is no sub-module of the step: fit sets its layout too, both ways (the fixture's teacher is shared)."
    conv = lambda m: next(p for p in m.parameters() if p.ndim == 4)
    for layout, fmt in (('on', torch.channels_last), ('auto', torch.contiguous_format), ('off', torch.contiguous_format)):
        c = cfg_for(tmp_path/layout, path='logits', loss='kld', epochs=1, channels_last=layout)
        r = fit(build_step(c, teacher), c, *parts, progress=False)
        assert conv(teacher).is_contiguous(memory_format=fmt) and conv(r.model).is_contiguous(memory_format=fmt), layout
    teacher.to(memory_format=torch.contiguous_format)


def test_off_the_cpu_the_losses_are_read_back_once_per_epoch(parts, tmp_path, monkeypatch):
    "Where values are not checked per step (a GPU), the loop never reads a step's losses back; the epoch's mean is checked instead, and a NaN is still caught."
    monkeypatch.setattr(kt, 'check_values', lambda x: False)
    monkeypatch.setattr(kt.KDLosses, 'log', lambda self: pytest.fail('a per-step read-back'))
    c = cfg_for(tmp_path/'a', epochs=2)
    r = fit(build_step(c), c, *parts, progress=False)
    monkeypatch.undo()
    c2 = cfg_for(tmp_path/'b', epochs=2)
    per_step = fit(build_step(c2), c2, *parts, progress=False)
    np.testing.assert_allclose(r.history.train_loss, per_step.history.train_loss, rtol=1e-6)  # float32 sums on the device
    assert weights_hash(r.model) == weights_hash(per_step.model)
    monkeypatch.setattr(kt, 'check_values', lambda x: False)
    real = kt.sup_loss
    monkeypatch.setattr(kt, 'sup_loss', lambda logits, mask, kind='ce': real(logits, mask, kind) * float('nan'))
    c3 = cfg_for(tmp_path/'c', epochs=2)
    with pytest.raises(NonFiniteLoss, match=r'epoch 1, the mean of its batches \(KDBUS_CHECK_VALUES=1 names the batch\): sup=nan'):
        fit(build_step(c3), c3, *parts, progress=False)
    assert not (c3.run_dir/'last.pt').exists()


def test_full_mask_dice_is_the_dice_of_marking_every_pixel():
    m = np.zeros((3, 4, 4), np.uint8); m[0, :2] = 1; m[1, :, :1] = 1  # a half and a quarter of the image; an image without lesion
    assert abs(kt.full_mask_dice(m) - np.mean([2 * 8 / 24, 2 * 4 / 20, 0.0])) < 1e-12
