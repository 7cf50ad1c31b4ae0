"Tests of the training recipe: collapse detection end to end (metrics.json, the grid, Table 4), selection on scripted histories, the schedule."
import json, math, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import kdbus.experiment as experiment
from kdbus.config import LEGACY_FIELDS, RunConfig, resolve_config
from kdbus.runfolder import is_collapsed
from kdbus.results import collect, run_summary
from kdbus.report import table4, table4_markdown
from kdbus.publish import write_report
from kdbus.train import Selector, build_step, lr_at

DATA = 'synth:n=24'


def _empty_mask_step(cfg, teacher=None, device='cpu'):
    "`build_step` whose model is pinned to predict background everywhere (head weights 0, lesion bias -20, learning rate ~0)."
    step = build_step(cfg, teacher, device)
    head = step.student.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_(); head.bias.copy_(torch.tensor([20.0, -20.0]))
    return step


@pytest.fixture(scope='module')
def collapsed_run(tmp_path_factory):
    "A smoke Student run whose model predicts no lesion anywhere: it can only keep a collapsed model."
    out = tmp_path_factory.mktemp('collapsed')
    cfg = resolve_config('smoke', path='none', data=DATA, out_dir=str(out))
    mp = pytest.MonkeyPatch(); mp.setattr(experiment, 'build_step', _empty_mask_step)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            m = experiment.run_experiment(cfg, progress=False)
    finally: mp.undo()
    return out, cfg, m


def test_a_collapsed_run_says_so_in_metrics_and_history(collapsed_run):
    out, cfg, m = collapsed_run
    assert m['collapsed'] is True and m['select'] == 'val_dice'
    assert json.loads((cfg.run_dir/'metrics.json').read_text())['collapsed'] is True
    h = pd.read_csv(cfg.run_dir/'history.csv')
    assert (h.val_nonempty == 0).all() and (h.val_dice == 0).all()
    assert m['dice_mean'] == 0.0


def test_a_segmenting_run_is_not_collapsed(smoke_student):
    _, m = smoke_student
    assert m['collapsed'] is False
    assert 'best_val_dice' in m


def test_the_grid_and_table4_mark_a_collapsed_run(collapsed_run, smoke_student):
    out, cfg, _ = collapsed_run
    assert is_collapsed(cfg.run_dir) and not is_collapsed(smoke_student[0]/'Student'/'fold0')
    t = table4(collect(out))
    row = t.set_index('model').loc['Student']
    assert row.collapsed_folds == '0' and 'collapsed in fold(s) 0' in row.note
    md = table4_markdown(t, runs=run_summary(out))
    assert '| Student (collapsed) ' in md and '1 collapsed' in md and 'Collapsed: Student fold 0' in md


def test_the_grid_reports_collapsed_runs(tmp_path, monkeypatch):
    from kdbus.grid import run_grid
    from kdbus.config import resolve_config as rc
    monkeypatch.setattr(experiment, 'build_step', _empty_mask_step)
    execute = lambda job, out: experiment.run_experiment(rc(**job.params), progress=False)
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = run_grid('smoke', DATA, folds=(0,), out=tmp_path, labels=('Student',), execute=execute, report=False, log=lines.append)
    assert res.collapsed == [('Student', 0)]
    assert any('Student/fold0: done in' in l and 'COLLAPSED' in l for l in lines)
    assert 'COLLAPSED Student/fold0' in res.summary()
    again = run_grid('smoke', DATA, folds=(0,), out=tmp_path, labels=('Student',), execute=execute, report=False, log=lines.append)
    assert again.skipped == [('Student', 0)] and again.collapsed == [('Student', 0)]  # reported for skipped runs too


def test_run_summary_counts_convergence(smoke_student):
    r = run_summary(smoke_student[0])
    assert list(r.columns) == ['label', 'fold', 'epochs', 'best_epoch', 'epochs_run', 'stopped', 'converged', 'collapsed', 'minutes', 'commit', 'dirty']
    row = r.iloc[0]
    assert row.epochs == 2 and row.collapsed == False and len(row.commit) in (0, 7)


@pytest.mark.parametrize('best,run,stopped,converged', [
    (54, 60, 'max_epochs', True),    # best at 90 % of the 60-epoch budget: converged
    (55, 60, 'max_epochs', False),   # best at epoch 55 of 60 (91.7 %): still improving when the budget ran out
    (59, 60, 'max_epochs', False),
    (58, 59, 'early', True),         # stopped by patience: converged wherever its best epoch is
])
def test_convergence_on_hand_made_runs(smoke_student, tmp_path, best, run, stopped, converged):
    "A run folder whose metrics.json is edited by hand: the 90 %-of-budget rule, decided case by case, not by its formula."
    import shutil
    out = Path(shutil.copytree(smoke_student[0], tmp_path/'out'))
    cfg = out/'Student'/'fold0'/'config.json'
    c = json.loads(cfg.read_text()); c['config']['epochs'] = 60; cfg.write_text(json.dumps(c))
    m = out/'Student'/'fold0'/'metrics.json'
    m.write_text(json.dumps({**json.loads(m.read_text()), 'best_epoch': best, 'epochs_run': run, 'stopped': stopped}))
    row = run_summary(out).iloc[0]
    assert (row.epochs, row.best_epoch, row.converged) == (60, best, converged)



# ------------------------------------------------------------ selection on scripted histories
def _rows(loss, dice, found):
    return [dict(epoch=i + 1, val_loss=l, val_dice=d, val_nonempty=f) for i, (l, d, f) in enumerate(zip(loss, dice, found))]


@pytest.mark.parametrize('rule', ['val_loss', 'val_dice'])
def test_selection_never_keeps_a_collapsed_model_when_one_segments(rule):
    # the case: empty masks for 23 epochs with the lowest loss at epoch 16, then Dice 0.33-0.49
    n = 31
    loss = [0.30 - 0.005 * min(e, 16) + (0.002 * (e - 16) if e > 16 else 0) for e in range(1, n + 1)]
    loss[23:] = [0.25 + 0.001 * i for i in range(n - 23)]
    dice = [0.0] * 23 + [0.33, 0.40, 0.49, 0.45, 0.41, 0.44, 0.42, 0.43]
    found = [0.0] * 23 + [1.0] * 8
    s = Selector(rule, patience=15, warmup_epochs=3)
    for r in _rows(loss, dice, found): s.update(r)
    assert not s.collapsed and s.best['epoch'] >= 24
    assert not s.stop  # patience did not run out in the empty-mask phase (23 epochs > 15)
    if rule == 'val_dice': assert s.best['epoch'] == 26


def test_a_model_no_better_than_the_full_mask_is_collapsed():
    "Scripted with a non-zero full-mask Dice (0.14, as on busi-163's validation parts): an epoch-1 model at 0.139 does not segment."
    s = Selector('val_dice', patience=5, warmup_epochs=0, full_dice=0.14)
    for r in _rows([0.5, 0.4, 0.35, 0.3], [0.139, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]): s.update(r)
    assert s.collapsed and s.best['epoch'] == 1 and s.bad == 0  # collapsed: no patience counted yet
    for r in _rows([0.3, 0.29], [0.15, 0.30], [1.0, 1.0]): s.update({**r, 'epoch': r['epoch'] + 4})
    assert not s.collapsed and s.best['epoch'] == 6  # 0.15 > 0.14 segments, 0.30 is better
    t = Selector('val_dice', patience=5, warmup_epochs=0, full_dice=0.0)
    for r in _rows([0.5], [0.139], [1.0]): t.update(r)
    assert not t.collapsed  # the same model counts as segmenting where the full mask scores 0


def test_patience_counts_only_after_warmup_and_once_a_model_segments():
    s = Selector('val_dice', patience=3, warmup_epochs=2)
    for r in _rows([0.3] * 10, [0.0] * 10, [0.0] * 10): s.update(r)
    assert s.collapsed and s.bad == 0 and not s.stop
    s = Selector('val_dice', patience=3, warmup_epochs=2)
    for r in _rows([0.3] * 6, [0.5, 0.4, 0.4, 0.4, 0.4, 0.4], [1.0] * 6): s.update(r)
    assert s.best['epoch'] == 1 and s.bad == 4 and s.stop  # epoch 2 was warm-up, not counted; 3 to 6 were


# ------------------------------------------------------------ the schedule
@pytest.mark.parametrize('epoch,expected', [
    (1, 3e-3 * 1 / 42),  # warm-up: the first step of 3 x 14
    (3, 3e-3 * 29 / 42),  # still warming up
    (4, 3e-3),  # warm-up over: the peak
    (32, 3e-3 * 0.5 * (1 + math.cos(math.pi * 28 / 57))),  # cosine, about half-way
    (60, 3e-3 * 0.5 * (1 + math.cos(math.pi * 56 / 57))),  # the last epoch: nearly 0
])
def test_schedule_values_at_chosen_epochs(epoch, expected):
    q = resolve_config('quick').replace(lr=3e-3, warmup_epochs=3, epochs=60, lr_schedule='cosine')
    assert math.isclose(lr_at(q, (epoch - 1) * 14, 14), expected, rel_tol=1e-12)
    assert 0 < lr_at(q, 60 * 14 - 1, 14) < 1e-4 * 3e-3  # the last step
    assert lr_at(q.replace(lr_schedule='constant', warmup_epochs=0), (epoch - 1) * 14, 14) == 3e-3


def test_history_records_the_schedule(smoke_student):
    out, _ = smoke_student
    h = pd.read_csv(out/'Student'/'fold0'/'history.csv')
    cfg = RunConfig.from_dict(json.loads((out/'Student'/'fold0'/'config.json').read_text())['config'])
    per = math.ceil(len(json.loads((out/'Student'/'fold0'/'config.json').read_text())['split']['train']) / cfg.batch_size)
    for e, lr in zip(h.epoch, h.lr): assert math.isclose(lr, lr_at(cfg, (e - 1) * per, per))


def test_old_configs_read_back_with_the_rules_they_used():
    d = resolve_config('quick').to_dict()
    for k in LEGACY_FIELDS: d.pop(k)
    c = RunConfig.from_dict(d)
    assert (c.lr_schedule, c.warmup_epochs, c.select) == ('constant', 0, 'val_loss')


def test_bad_recipe_values_are_refused():
    with pytest.raises(ValueError, match="select='dice' is not valid; expected one of: 'val_loss', 'val_dice'"): resolve_config(select='dice')
    with pytest.raises(ValueError, match="lr_schedule='poly'"): resolve_config(lr_schedule='poly')
    with pytest.raises(ValueError, match=r'warmup_epochs=61 is out of range.*at most epochs=60'): resolve_config(data='busi:/data/BUSI', warmup_epochs=61)


def test_paper_profile_keeps_the_papers_rule():
    p = resolve_config('paper')
    assert (p.select, p.lr_schedule, p.warmup_epochs, p.patience, p.lr) == ('val_loss', 'constant', 0, 50, 1e-4)


def test_patience_waits_while_the_validation_loss_still_falls():
    # measured on BUSI: a KD student with Dice ~0 for 22 epochs while its validation loss fell; it must not stop there
    n = 30
    loss = [0.47 - 0.012 * e for e in range(n)]
    dice = [0.006] + [0.0] * 22 + [0.3, 0.45, 0.5, 0.52, 0.5, 0.5, 0.5, 0.5]
    s = Selector('val_dice', patience=20, warmup_epochs=3)
    for r in _rows(loss, dice, [1.0] * n): s.update(r)
    assert not s.stop and s.best['epoch'] == 27
    s = Selector('val_dice', patience=3, warmup_epochs=0)
    for r in _rows([0.3, 0.2, 0.25, 0.26, 0.27], [0.5, 0.4, 0.4, 0.4, 0.4], [1.0] * 5): s.update(r)
    assert s.stop and s.bad == 3  # epoch 2 lowered the loss (reset); 3, 4, 5 improved nothing


# ------------------------------------------------------------ duplicate groups in runs and grids
def _busi_with_a_copy(root, n=14):
    "A BUSI tree of n distinct textured cases, plus benign (99): a byte copy of benign (1)."
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        cls = 'benign' if i % 3 else 'malignant'
        img = (np.clip(rng.normal(128, 40, (48, 64)), 0, 255)).astype(np.uint8)
        img = np.asarray(Image.fromarray(img).resize((32, 24)).resize((64, 48), Image.BILINEAR))  # smooth: a scan-like texture
        (root/cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root/cls/f"{cls} ({i}).png")
        m = np.zeros((48, 64), np.uint8); m[10 + i % 5:30, 15:40 + i % 7] = 255
        Image.fromarray(m).save(root/cls/f"{cls} ({i})_mask.png")
    for suffix in ('', '_mask'): (root/'benign'/f"benign (99){suffix}.png").write_bytes((root/'benign'/f"benign (1){suffix}.png").read_bytes())
    return root


def test_runs_keep_duplicate_groups_whole_and_record_them(tmp_path):
    root = _busi_with_a_copy(tmp_path/'B')
    data = f"busi:{root}"
    c = resolve_config('smoke', path='teacher', data=data, out_dir=str(tmp_path/'runs'), epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        experiment.run_experiment(c, progress=False)
    split = json.loads((c.run_dir/'config.json').read_text())['split']
    assert split['duplicate_groups'] == [['benign (1)', 'benign (99)']]
    part = {i: k for k in ('train', 'val', 'test') for i in split[k]}
    assert part['benign (1)'] == part['benign (99)']


def test_a_views_spec_keeps_views_of_one_lesion_in_one_part_and_records_them(tmp_path):
    import cv2
    from PIL import Image
    root = _busi_with_a_copy(tmp_path/'B')
    yy, xx = np.mgrid[:48, :64]
    shapes = 0.8 * np.linspace(1, 0.2, 48)[:, None] - 0.6 * np.exp(-((yy - 24) / 9) ** 2 - ((xx - 32) / 12) ** 2)
    for k in (50, 51):  # one lesion seen twice: the same large shapes, new speckle (thumbnails alike, detail not)
        a = shapes + 0.15 * cv2.GaussianBlur(np.random.default_rng(k).normal(size=(48, 64)).astype(np.float32), (0, 0), 1.0)
        Image.fromarray((255 * (a - a.min()) / (a.max() - a.min())).astype(np.uint8)).save(root/'benign'/f"benign ({k}).png")
        (root/'benign'/f"benign ({k})_mask.png").write_bytes((root/'benign'/"benign (2)_mask.png").read_bytes())
    records = {}
    for data in (f"busi:{root}", f"busi:{root}:views"):
        c = resolve_config('smoke', path='teacher', data=data, out_dir=str(tmp_path/'runs'), epochs=1)
        experiment.check_run(c)
        records[data] = experiment.split_record(c, *experiment.run_data(c))
    plain, views = records.values()
    assert plain['duplicate_groups'] == [['benign (1)', 'benign (99)']]
    assert views['duplicate_groups'] == [['benign (1)', 'benign (99)'], ['benign (50)', 'benign (51)']]
    part = {i: k for k in ('train', 'val', 'test') for i in views[k]}
    assert part['benign (50)'] == part['benign (51)']

def test_the_grid_refuses_to_mix_grouped_and_ungrouped_folds(tmp_path):
    from kdbus.grid import grid_jobs
    from kdbus.jobs import check_compatible
    root = _busi_with_a_copy(tmp_path/'B')
    out = tmp_path/'runs'
    job = grid_jobs('smoke', f"busi:{root}", (0,), out, labels=('Teacher',))[0]
    d = job.run_dir(out); d.mkdir(parents=True)
    saved = dict(config=resolve_config(**job.params).to_dict(), split=dict(train=[], val=[], test=[]))  # made before grouping: no duplicate_groups
    (d/'config.json').write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"folds that ignore duplicates .* keeps 1 duplicate group\(s\) .* another --out folder"):
        check_compatible(job, out)
    saved['split']['duplicate_groups'] = [['benign (1)', 'benign (99)']]
    (d/'config.json').write_text(json.dumps(saved))
    check_compatible(job, out)  # the same groups: fine


def test_the_grid_refuses_to_mix_training_recipes(tmp_path):
    "A results folder made with the earlier recipe (no recipe fields saved: constant rate, lowest validation loss) takes no runs of the new one."
    from kdbus.grid import grid_jobs
    from kdbus.jobs import check_compatible
    job = grid_jobs('smoke', DATA, (0,), tmp_path, labels=('Student',))[0]
    d = job.run_dir(tmp_path); d.mkdir(parents=True)
    old = resolve_config(**job.params).to_dict()
    for k in LEGACY_FIELDS: old.pop(k)
    (d/'config.json').write_text(json.dumps(dict(config=old, split=dict(duplicate_groups=[]))))
    with pytest.raises(ValueError, match=r"was made with lr_schedule='constant', but this grid asks for lr_schedule='cosine'"):
        check_compatible(job, tmp_path)
    (d/'config.json').write_text(json.dumps(dict(config=resolve_config(**job.params).to_dict(), split=dict(duplicate_groups=[]))))
    check_compatible(job, tmp_path)
    (d/'config.json').write_text(json.dumps(dict(config={**resolve_config(**job.params).to_dict(), 'epochs': 5}, split=dict(duplicate_groups=[]))))
    with pytest.raises(ValueError, match=r"epochs=5, but this grid asks for epochs=2"): check_compatible(job, tmp_path)


def test_replaying_a_history_through_the_selector_gives_the_run_s_own_choice(script, smoke_student, collapsed_run):
    "tools/replay_selection.py recomputes the kept epoch, stop and collapsed flag from history.csv alone: for runs made with today's rule, unchanged."
    mod = script('tools/replay_selection.py')
    for run_dir in (smoke_student[0]/'Student'/'fold0', collapsed_run[1].run_dir):
        r = mod.replay(run_dir)
        assert r is not None and (r['best'], r['stop'], r['collapsed']) == (r['best_now'], r['stop_now'], r['collapsed_now']), r
        assert 0 < r['full_mask_dice'] < 1
    assert mod.replay(collapsed_run[1].run_dir)['collapsed_now'] is True


def test_the_grid_refuses_to_mix_supervised_losses(tmp_path):
    "A folder of cross-entropy runs (saved before `sup_loss` existed, or with 'ce') takes no run with sup_loss='dice_ce', and the reverse."
    from kdbus.grid import grid_jobs
    from kdbus.jobs import check_compatible
    ce, dice = (grid_jobs('smoke', DATA, (0,), tmp_path, labels=('Student',), sup_loss=s)[0] for s in (None, 'dice_ce'))
    assert (resolve_config(**ce.params).sup_loss, resolve_config(**dice.params).sup_loss) == ('ce', 'dice_ce')
    d = ce.run_dir(tmp_path); d.mkdir(parents=True)
    old = {k: v for k, v in resolve_config(**ce.params).to_dict().items() if k != 'sup_loss'}  # before the field
    (d/'config.json').write_text(json.dumps(dict(config=old, split=dict(duplicate_groups=[]))))
    check_compatible(ce, tmp_path)
    with pytest.raises(ValueError, match=r"was made with sup_loss='ce', but this grid asks for sup_loss='dice_ce'"): check_compatible(dice, tmp_path)
    (d/'config.json').write_text(json.dumps(dict(config=resolve_config(**dice.params).to_dict(), split=dict(duplicate_groups=[]))))
    with pytest.raises(ValueError, match=r"was made with sup_loss='dice_ce', but this grid asks for sup_loss='ce'"): check_compatible(ce, tmp_path)


def test_dice_ce_trains_every_run_type_with_its_soft_dice_term(tmp_path):
    "sup_loss='dice_ce': the Teacher, the Student and a KD run train on cross-entropy + soft Dice (a larger L_sup than the cross-entropy alone)."
    from kdbus.train import fit
    from kdbus.experiment import run_data
    torch.set_num_threads(1)
    base = resolve_config('smoke', data=DATA, epochs=1, out_dir=str(tmp_path))
    for kw in (dict(path='teacher', loss=None, teacher_aug=None), dict(path='none', loss=None, teacher_aug=None), {}):
        sup = {}
        for s in ('ce', 'dice_ce'):
            c = base.replace(sup_loss=s, out_dir=str(tmp_path/s), **kw)
            data, fold = run_data(c)
            teacher = build_step(c.teacher_config()).student if c.is_kd else None
            step = build_step(c, teacher)
            assert step.sup == s
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                r = fit(step, c, data.subset(fold.train), data.subset(fold.val), progress=False)
            sup[s] = r.history.train_sup[0]
            assert math.isfinite(r.history.val_loss[0])
        assert sup['dice_ce'] > sup['ce'] + 0.05, (kw, sup)  # the same seed and batches: the Dice term (0..1) adds to the cross-entropy
    from kdbus.train import Baseline
    with pytest.raises(ValueError, match="sup='dice' is not valid; expected one of: 'ce', 'dice_ce'"): Baseline(torch.nn.Identity(), 'dice')
