"Tests of kdbus.config: profiles, resolution, validation before any data is read, identity, JSON."
import json
from dataclasses import fields

import pytest

from kdbus.config import (ALL_RUNS, PROFILES, RUN_PATHS, RUNTIME_FIELDS, RunConfig, label_params, resolve_config, run_label)
from kdbus.distill import TABLE3

FIELDS = [f.name for f in fields(RunConfig)]


def test_every_profile_sets_every_field():
    for name, p in PROFILES.items():
        assert sorted(p) == sorted(f for f in FIELDS if f != 'profile'), name
        assert resolve_config(name).profile == name


def test_paper_profile_is_the_papers_protocol():
    p = resolve_config('paper')
    assert (p.size, p.batch_size, p.epochs, p.patience, p.lr) == (224, 64, 500, 50, 1e-4)
    assert (p.model_preset, p.encoder_weights, p.n_folds, p.alpha) == ('paper', 'imagenet', 3, 0.5)


def test_quick_and_smoke_are_cheaper_than_paper():
    p, q, s = (resolve_config(n) for n in ('paper', 'quick', 'smoke'))
    assert s.size < q.size < p.size and s.epochs < q.epochs < p.epochs
    assert q.encoder_weights is None and s.encoder_weights is None  # offline: no download


def test_none_means_the_profiles_value_and_overrides_win():
    c = resolve_config('smoke', lr=None, epochs=7, fold=None)
    assert c.lr == PROFILES['smoke']['lr'] and c.epochs == 7 and c.fold == 0


def test_labels_and_params_round_trip():
    assert [resolve_config('smoke', **label_params(n)).label for n in ALL_RUNS] == list(ALL_RUNS)
    assert ALL_RUNS[:2] == ('Teacher', 'Student') and ALL_RUNS[2:] == TABLE3
    assert set(RUN_PATHS) == {'teacher', 'none', 'logits', 'hidden', 'hidden_regressor'}
    assert run_label('hidden_regressor', 'kld', 'weak') == 'HReg_KLD_WAug'


def test_loss_and_augmentation_do_not_apply_to_models_trained_alone():
    for path in ('teacher', 'none'):
        c = resolve_config('smoke', path=path, loss='mse', teacher_aug='strong')
        assert (c.loss, c.teacher_aug) == (None, None)
    with pytest.raises(ValueError, match="loss='nope'"): resolve_config(path='teacher', loss='nope')  # still checked


@pytest.mark.parametrize('kw, msg', [
    (dict(path='student'), "path='student' is not valid; expected one of: 'teacher', 'none'"),
    (dict(loss='kl'), "loss='kl' is not valid; expected one of: 'mse', 'kld'"),
    (dict(teacher_aug='none'), "teacher_aug='none' is not valid"),
    (dict(fold=3), 'fold=3 is out of range: expected an integer in 0..2'),
    (dict(fold=4, n_folds=5), None),  # valid: a 4th and 5th fold exist when asked for
    (dict(n_folds=6), 'n_folds=6 is out of range'),
    (dict(k_folds=1), 'k_folds=1'),
    (dict(size=0), 'size=0'),
    (dict(size=130), 'size=130 must be a multiple of 32'),
    (dict(batch_size=-1), 'batch_size=-1'),
    (dict(epochs=0), 'epochs=0'),
    (dict(patience=True), 'patience=True must be an integer'),
    (dict(lr=0), 'lr=0 is out of range'),
    (dict(lr='1e-3'), "lr='1e-3' must be a finite number"),
    (dict(val_frac=0.0), 'val_frac=0.0'),
    (dict(val_frac=1.0), 'val_frac=1.0 must be < 1'),
    (dict(alpha=1.5), 'alpha=1.5'),
    (dict(T=0), 'T=0'),
    (dict(stage=6), 'stage=6'),
    (dict(seed=-1), 'seed=-1'),
    (dict(data='synth:n=0'), "data='synth:n=0'"),
    (dict(data='busi'), 'names 0 folder(s)'),
    (dict(model_preset='huge'), "model_preset='huge'"),
    (dict(encoder_weights='instagram'), "encoder_weights='instagram' for 'tu-mobilenetv3_small_075'"),
    (dict(model_preset='quick', encoder_weights='instagram'), "encoder_weights='instagram' is not available for 'resnet18'"),
    (dict(device='tpu9'), "device='tpu9'"),
    (dict(num_workers=-1), 'num_workers=-1'),
    (dict(out_dir=''), "out_dir=''"),
])
def test_bad_values_fail_with_the_parameter_and_the_choices(kw, msg):
    if msg is None:
        assert resolve_config('smoke', **kw)
        return
    with pytest.raises(ValueError) as e: resolve_config('smoke', **kw)
    assert msg in str(e.value)


def test_unknown_profile_and_parameter():
    with pytest.raises(ValueError, match="'paper', 'quick', 'smoke'"): resolve_config('slow')
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['epoch'\]"): resolve_config(epoch=3)
    with pytest.raises(TypeError): resolve_config('smoke', profile='paper')  # one profile only


def test_validation_reads_no_data(tmp_path):
    "A data folder that does not exist is not an error of the config (check_run finds it); the spec's syntax is."
    c = resolve_config('smoke', data=f'udiat:{tmp_path/"missing"}')
    assert c.data.endswith('missing') and not (tmp_path/'missing').exists()


def test_json_round_trip_and_checked_on_read(tmp_path):
    c = resolve_config('paper', path='hidden', loss='mse', teacher_aug='strong', fold=1, out_dir=tmp_path)
    p = tmp_path/'c.json'; p.write_text(c.to_json())
    back = RunConfig.from_json(p.read_text())
    assert back == c and back.out_dir == str(tmp_path)
    d = json.loads(p.read_text()); d['size'] = 100
    with pytest.raises(ValueError, match='size=100'): RunConfig.from_dict(d)
    d = json.loads(p.read_text()); del d['seed']
    with pytest.raises(ValueError, match=r"missing \['seed'\]"): RunConfig.from_dict(d)


def test_identity_ignores_where_a_run_executes_and_unused_settings():
    a = resolve_config('smoke', path='teacher')
    assert a.identity() == a.replace(out_dir='x', device='cpu', num_workers=2, alpha=0.1, T=3.0).identity()
    assert not set(RUNTIME_FIELDS) & set(a.identity())
    for k, v in dict(size=96, lr=0.01, seed=1, fold=1, data='synth:n=40', epochs=3, model_preset='quick').items():
        assert a.identity() != a.replace(**{k: v}).identity(), k
    kd = resolve_config('smoke', path='logits', loss='kld', teacher_aug='weak')
    assert kd.identity() != kd.replace(alpha=0.1).identity()


def test_all_kd_runs_of_a_fold_share_one_teacher_config():
    cs = [resolve_config('quick', fold=1, **label_params(n)) for n in TABLE3]
    ts = {c.teacher_config() for c in cs}
    assert len(ts) == 1
    t = ts.pop()
    assert t.label == 'Teacher' and t.fold == 1 and str(t.run_dir).endswith('Teacher/fold1')
    assert t.identity() == resolve_config('quick', path='teacher', fold=1).identity()


# ---------------------------------------------------------------- the student size (issue: where does distillation pay?)
def test_student_size_is_part_of_a_runs_identity_and_name_but_not_its_teachers():
    from kdbus.models import STUDENT_SIZES
    c = resolve_config('quick', path='hidden', loss='mse', teacher_aug='weak', student='m')
    assert c.name == 'H_MSE_WAug+student=m' and c.identity()['student'] == 'm'
    assert c.specs()[1].encoder == STUDENT_SIZES['m']['encoder'] and c.specs()[0] == resolve_config('quick').specs()[0]  # the same teacher
    assert c.teacher_config().name == 'Teacher' and c.teacher_config().identity() == resolve_config('quick', path='teacher').identity()
    assert resolve_config('quick', student='s').student is None and resolve_config('quick', student='s').name == 'L_KLD_WAug'  # the preset's own: one folder
    assert resolve_config('paper', student='m').student is None and resolve_config('paper', student='s').name == 'L_KLD_WAug+student=s'
    assert 'student' not in resolve_config('quick', path='teacher', student='l').identity()
    assert RunConfig.from_json(c.to_json()) == c
    old = {k: v for k, v in resolve_config('quick').to_dict().items() if k != 'student'}  # a run saved before the field existed
    assert RunConfig.from_dict(old).student is None


@pytest.mark.parametrize('bad', ['xxl', 'M', ''])
def test_a_bad_student_size_is_refused_with_the_sizes(bad):
    with pytest.raises(ValueError, match=r"student='.*' is not valid; expected one of: 'xs', 's', 'm', 'l'"): resolve_config('quick', student=bad)
