"Tests of kdbus.bench and `kdbus bench`: the cost table's counts, files, int8 Dice, memory, the Dice-vs-cost plot, bad input."
import json, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import kdbus.bench
from kdbus.bench import BENCH_MODELS, bench, count_macs, peak_memory, preset_models, time_interleaved
from kdbus.results import results_preset
from conftest import kdbus_main as cli
from kdbus.models import PRESETS, build_model, count_params, resolve_specs

FAST = ['--size', '64', '--batch', '2', '--warmup', '0', '--repeats', '2', '--batch-repeats', '1', '--threads', '1']


@pytest.fixture(scope='module')
def results(smoke_student):
    "A results folder with one trained smoke Student run (30 synthetic images, fold 0; `conftest.smoke_student`)."
    return smoke_student




@pytest.fixture(scope='module')
def table(results, tmp_path_factory):
    "`kdbus bench` on the smoke preset with the trained student, the results folder and tiny repeat counts; and the order of the timed calls."
    res, _ = results
    out = tmp_path_factory.mktemp('bench')
    series, real = [], kdbus.bench.time_interleaved
    def spy(fns, *args, **kwargs):  # each series: its names, and the name of every call in the order they were made
        keys, order = list(fns), []
        series.append((keys, order))
        return real({k: (lambda k=k, f=f: (order.append(k), f())) for k, f in fns.items()}, *args, **kwargs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kdbus.bench, 'time_interleaved', spy)
        rc, stdout, stderr = cli('bench', '--preset', 'smoke', '--out', out, '--results', res, '--student', res/'Student'/'fold0'/'best.pt', '--no-memory', *FAST)
    assert rc == 0, stderr
    return out, pd.read_csv(out/'bench.csv'), stdout, series


def test_paper_preset_counts_match_the_paper():
    "Parameters and MACs at 224 px, computed on the real modules (no timing): the student is ~0.82 M, the teacher ~100x."
    t, s = (build_model(spec, 'meta') for spec in resolve_specs('paper'))  # shapes only: FlopCounterMode works on meta tensors
    ns, nt = count_params(s), count_params(t)
    assert 0.80e6 < ns < 0.85e6 and 80 < nt / ns < 130
    x = torch.zeros(1, 3, 224, 224, device='meta')
    ms, mt = count_macs(s, x), count_macs(t, x)
    assert mt / ms > 20, (mt, ms)


def test_macs_are_counted_as_multiply_accumulates():
    conv = torch.nn.Conv2d(3, 16, 3, padding=1, bias=False)
    assert count_macs(conv, torch.zeros(1, 3, 32, 32)) == 16 * 32 * 32 * 3 * 9
    lin = torch.nn.Linear(100, 10)
    assert count_macs(lin, torch.zeros(4, 100)) == 4 * 100 * 10


def test_bench_files_and_columns(table):
    out, df, stdout, _ = table
    assert (out/'bench.csv').is_file() and (out/'bench.md').is_file() and (out/'bench.png').stat().st_size > 10_000
    assert df.model.tolist() == ['teacher', 'student', 'student_int8', 'student_int8_static', 'regressor']
    for c in ('params', 'checkpoint_MB', 'onnx_MB', 'MACs_G', 'FLOPs_G', 'cpu_ms_torch', 'cpu_ms_torch_iqr', 'cpu_ms_ort', 'cpu_ips_torch',
              'cpu_ips_ort', 'threads', 'ort_speedup'):
        assert c in df.columns, c
    models = preset_models('smoke', 64)
    rows = df.set_index('model')
    for role in BENCH_MODELS: assert rows.loc[role, 'params'] == count_params(models[role][0])
    assert (df.threads == 1).all() and (df.cpu_ms_ort > 0).all() and (rows.loc[['teacher', 'student', 'regressor'], 'cpu_ms_torch'] > 0).all()
    np.testing.assert_allclose(df.FLOPs_G, 2 * df.MACs_G)
    assert rows.loc[['student_int8', 'student_int8_static'], 'onnx_MB'].lt(rows.loc['student', 'onnx_MB']).all()
    assert rows.loc['student_int8_static', 'int8_over_fp32'] > 0 and 'static QDQ' in (out/'bench.md').read_text()
    md = (out/'bench.md').read_text()
    assert '| smoke | student |' in md and 'CPU ms, PyTorch' in md and 'multiply-accumulates' in md
    assert 'Repeats are interleaved across models and runtimes' in md and 'same load' in md
    if not torch.cuda.is_available(): assert 'No GPU on this machine: the GPU columns were skipped.' in md
    assert 'Ratios:' in stdout and 'wrote' in stdout


def test_all_models_and_runtimes_are_timed_in_the_same_rounds(table):
    "One series for the whole preset (not one per model), and within it the calls alternate: every pair once per round."
    _, df, _, series = table
    pairs = {(m, e) for m in BENCH_MODELS for e in ('torch', 'ort')} | {('student_int8', 'ort'), ('student_int8_static', 'ort')}
    (one_keys, one_order), (batch_keys, batch_order) = series[:2]  # CPU: one image, then the batch (a GPU adds its own after)
    assert set(one_keys) == pairs and set(batch_keys) == pairs, (one_keys, batch_keys)
    assert one_order == one_keys * 2  # --warmup 0 --repeats 2: two rounds of all eight pairs
    assert batch_order == batch_keys * 1  # --batch-repeats 1
    assert (df.repeats == 2).all() and (df.batch_repeats == 1).all()


def test_rounds_alternate_and_the_budget_sets_their_number(monkeypatch):
    "A fake clock: the teacher takes 2 s, the student 0.05 s; rounds = budget / the last warm-up round, within [min_rounds, repeats]."
    clock, calls = [0.0], []
    monkeypatch.setattr(time, 'perf_counter', lambda: clock[0])
    def call(name, seconds):
        def f(): calls.append(name); clock[0] += seconds
        return f
    fns = dict(teacher=call('teacher', 2.0), student=call('student', 0.05))
    ts = time_interleaved(fns, warmup=2, repeats=10, budget=10)
    assert calls == ['teacher', 'student'] * (2 + 4)  # 2 warm-up rounds, then int(10 s / 2.05 s) = 4 timed rounds
    np.testing.assert_allclose(ts['teacher'], [2.0] * 4); np.testing.assert_allclose(ts['student'], [0.05] * 4)
    assert len(time_interleaved(fns, warmup=1, repeats=10, budget=1)['teacher']) == 3  # over budget: min_rounds
    assert len(time_interleaved(fns, warmup=1, repeats=10, budget=1, min_rounds=1)['teacher']) == 1
    assert len(time_interleaved(fns, warmup=1, repeats=10, budget=1000)['teacher']) == 10  # at most repeats
    assert len(time_interleaved(fns, warmup=1, repeats=10)['teacher']) == 10  # no budget
    calls.clear()
    assert len(time_interleaved(fns, warmup=0, repeats=10, budget=9)['student']) == 4  # no warm-up: the first timed round prices it
    assert calls == ['teacher', 'student'] * 4
    with pytest.raises(ValueError, match='min_rounds=0'): time_interleaved(fns, min_rounds=0)


def test_int8_dice_is_measured_on_the_runs_test_part(table, results):
    _, df, _, _ = table
    _, metrics = results
    for q in ('student_int8', 'student_int8_static'):  # dynamic, and static calibrated on the run's training images
        r = df.set_index('model').loc[q]
        # the float32 ONNX student scores what the PyTorch evaluation scored (same masks, parity)
        assert abs(r.dice_fp32 - 100 * metrics['dice_mean']) < 0.5, (r.dice_fp32, metrics['dice_mean'])
        assert r.n_test == metrics['n_test'] and abs(r.dice_change - (r.dice_int8 - r.dice_fp32)) < 1e-9
        assert 0.9 < r.mask_agree_int8 <= 1 and 'Student fold 0 test part' in r.dice_set, (q, r.mask_agree_int8)


def test_static_calibration_never_uses_test_images(results):
    from kdbus.bench import calibration_images
    from kdbus.figures import load_run_images
    from kdbus.augment import normalize
    out, _ = results
    ck = next(out.rglob('best.pt'))
    cfg = json.loads((ck.parent / 'config.json').read_text())
    x = calibration_images(ck, 64, n=4)
    want = np.stack([normalize(im) for im in load_run_images(ck.parent, cfg['split']['train'][:4]).images])
    np.testing.assert_array_equal(x, want)  # the first training images, normalised as in training
    assert not set(cfg['split']['train'][:4]) & set(cfg['split']['test'])


def test_peak_memory_sees_the_activations():
    "At 512 px the smoke student's first stage alone holds 16 x 256 x 256 float32 values (4 MB), and so does its output head."
    m = peak_memory('torch', (1, 3, 512, 512), preset='smoke', role='student', threads=1)
    assert 4 < m['mem_MB'] < m['peak_MB'] < m['rss_MB'] < 4000, m
    with pytest.raises(ValueError, match="engine='tf'"): peak_memory('tf', (1, 3, 64, 64))


def test_bad_input_fails_before_measuring(results, tmp_path):
    res, _ = results
    rc, _, err = cli('bench', '--preset', 'tiny', '--out', tmp_path)
    assert rc == 2 and "preset='tiny'" in err
    rc, _, err = cli('bench', '--preset', 'smoke', '--out', tmp_path, '--results', tmp_path/'none')
    assert rc == 2 and 'none' in err
    rc, _, err = cli('bench', '--preset', 'smoke', '--out', tmp_path, '--size', '70')
    assert rc == 2 and 'size=70' in err
    teacher = build_model(PRESETS['quick']['student'])
    torch.save(dict(model=teacher.state_dict(), spec=teacher.kdbus_spec.to_dict()), tmp_path/'quick.pt')
    rc, _, err = cli('bench', '--preset', 'smoke', '--out', tmp_path, '--student', tmp_path/'quick.pt', *FAST)
    assert rc == 2 and 'quick.pt' in err and 'it is the student of: quick (its own student)' in err
    (tmp_path/'junk.pt').write_bytes(b'\x00' * 100)
    rc, _, err = cli('bench', '--preset', 'smoke', '--out', tmp_path, '--student', tmp_path/'junk.pt', *FAST)
    assert rc == 2 and 'junk.pt: not a readable PyTorch checkpoint' in err
    assert not (tmp_path/'bench.csv').exists()
    assert results_preset(res) == 'smoke'


def test_student_sizes_are_benched_each_beside_the_teacher(tmp_path):
    "`--student-sizes`: one teacher, student and regressor row per size, timed in one run each; the sizes' own parameter counts."
    from kdbus.models import student_size
    rc, out, err = cli('bench', '--preset', 'smoke', '--student-sizes', 'xs,m', '--out', tmp_path, '--no-memory', '--no-int8', '--budget', '0', *FAST)
    assert rc == 0, err
    df = pd.read_csv(tmp_path/'bench.csv')
    assert list(zip(df.student_size, df.model)) == [(s, m) for s in ('xs', 'm') for m in BENCH_MODELS]
    for s in ('xs', 'm'):
        row = df[(df.student_size == s) & (df.model == 'student')].iloc[0]
        assert row.params == count_params(build_model(student_size(s, 'smoke'), 'meta'))
        assert row.encoder == student_size(s, 'smoke').encoder
    assert df[df.model == 'teacher'].params.nunique() == 1                     # the same teacher beside each size
    md = (tmp_path/'bench.md').read_text()
    assert '| student size |' in md and "`smoke`, student size `xs`: student 0." in md and "`smoke`, student size `m`: student 0.8" in md
    assert kdbus.bench.ratios(df).student_size.tolist() == ['xs', 'm']

def test_memory_jobs_build_the_named_student_size():
    "A memory job of `--student-sizes` builds that size's student and regressor, not the preset's own (the regressor's input is the size's hidden width)."
    from kdbus.bench import _job_model
    from kdbus.models import student_size
    for s in ('xs', 'l'):
        m, _ = _job_model(dict(preset='quick', role='student', student_size=s, shape=[1, 3, 64, 64]))
        assert count_params(m) == count_params(build_model(student_size(s, 'quick'), 'meta'))
        feat = preset_models('quick', 64, s)['regressor'][1]
        reg, _ = _job_model(dict(preset='quick', role='regressor', student_size=s, shape=list(feat.shape)))
        with torch.inference_mode(): reg(feat)                                 # the preset's own regressor refused xs's 176 channels
    m = peak_memory('torch', tuple(feat.shape), preset='quick', role='regressor', student_size='l', threads=1)
    assert 0 < m['peak_MB'] < 4000, m

def test_student_sizes_are_refused_before_measuring(results, tmp_path):
    res, _ = results
    rc, _, err = cli('bench', '--preset', 'smoke', '--student-sizes', 'xs,xxl', '--out', tmp_path)
    assert rc == 2 and "'xs,xxl': expected comma-separated student sizes among xs, s, m, l" in err
    with pytest.raises(ValueError, match="'xxl' is not a student size; expected some of: xs, s, m, l"): bench(['smoke'], tmp_path, student_sizes=['xxl'])
    rc, _, err = cli('bench', '--preset', 'smoke', '--student-sizes', 'xs,m', '--out', tmp_path, '--student', res/'Student'/'fold0'/'best.pt', *FAST)
    assert rc == 2 and 'is not the student of any preset and size benched here (smoke (size xs), smoke (size m))' in err  # neither
    assert not (tmp_path/'bench.csv').exists()

def test_cli_leaves_the_settings_to_bench_preset_and_states_its_defaults():
    "`kdbus bench` passes a setting only when given (bench_preset's defaults are the only ones); its help states them."
    import argparse, inspect, re
    from kdbus.bench import bench_preset
    from kdbus.cli import BENCH_SETTINGS, make_parser
    parser = make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices['bench']
    assert not set(BENCH_SETTINGS) & set(vars(parser.parse_args(['bench'])))  # nothing set unless given
    defaults = inspect.signature(bench_preset).parameters
    for a in (a for a in sub._actions if a.dest in BENCH_SETTINGS):
        stated = re.search(r'\(default: ([\d.]+)\)', a.help)
        assert stated and float(stated[1]) == defaults[a.dest].default, (a.dest, a.help, defaults[a.dest].default)


def test_gpu_device_check_dry_run_on_the_cpu(tmp_path, script, capsys):
    "`bash bench/gpu.sh --dry-run` exercises everything but CUDA (tiny sizes) and writes gpu.md and gpu.csv; without CUDA and without --dry-run it refuses."
    import subprocess, sys
    root = Path(__file__).resolve().parents[1]
    env = {**__import__('os').environ, 'PYTHON': sys.executable, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(["bash", str(root / "bench" / "gpu.sh"), "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(tmp_path / "gpu.csv")
    assert sorted(set(df.amp)) == ["bfloat16", "float32"] and len(df) == 10 and (df.images_per_s > 0).all()
    assert set(df.step) == {"teacher", "student", "L_KLD_WAug", "H_KLD_WAug", "HReg_KLD_WAug"}
    md = (tmp_path / "gpu.md").read_text()
    assert "dry run" in md and "Data pipeline" in md and "h with 1 at once" in md and "2 student(s) at once" in md
    if not torch.cuda.is_available():  # the refusal, in this process
        capsys.readouterr()
        assert script('bench/gpu.py').main([]) == 2 and "no CUDA device here" in capsys.readouterr().err


BUSI163 = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'busi-163'

def _slow_start(script, monkeypatch, *argv):
    "Run bench/slow_start.py's main with `argv`."
    mod = script('bench/slow_start.py')
    monkeypatch.setattr('sys.argv', ['slow_start.py', *map(str, argv)])
    mod.main()

def test_slow_start_probe_refuses_a_missing_folder(script, monkeypatch, capsys, tmp_path):
    with pytest.raises(SystemExit) as e: _slow_start(script, monkeypatch, tmp_path / 'nowhere')
    assert e.value.code == 2 and 'nowhere: no such folder; expected a BUSI folder' in capsys.readouterr().err

@pytest.mark.skipif(not BUSI163.is_dir(), reason="needs ../shared/data/busi-163 beside the project")
def test_slow_start_probe_reports_dice_and_dead_channels(script, monkeypatch, capsys):
    _slow_start(script, monkeypatch, BUSI163, '--epochs', 4)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines[0].split(':')[1].split()) == 4 and 'kept epoch' in lines[1]
    assert sum('decoder block' in l for l in lines) == 5  # the quick student's 5 decoder blocks


def _fake_run(root, name, fold, dice=None, val_dice=None):
    "A run folder with per_image.csv (ids a, b, c) and/or history.csv (one epoch per validation Dice)."
    d = Path(root) / name / f"fold{fold}"; d.mkdir(parents=True, exist_ok=True)
    if dice is not None:
        pd.DataFrame(dict(id=list("abc"), **{"class": ["benign"] * 3}, dice=dice, iou=dice, pred_area=1, gt_area=1)).to_csv(d / "per_image.csv", index=False)
    if val_dice is not None:
        pd.DataFrame(dict(epoch=range(1, len(val_dice) + 1), val_dice=val_dice)).to_csv(d / "history.csv", index=False)

def test_paired_runs_pairs_images_and_averages_a_group_of_seeds(script, tmp_path):
    "bench/paired_runs.py: means on the images both folders tested; a comma-separated group is averaged per image first."
    mod = script('bench/paired_runs.py')
    _fake_run(tmp_path / "a", "Student", 0, [0.2, 0.4, 0.6]); _fake_run(tmp_path / "a", "Student+seed=1", 0, [0.4, 0.4, 0.4])
    _fake_run(tmp_path / "b", "Student", 0, [0.1, 0.3, 0.5]); _fake_run(tmp_path / "b", "Student+seed=1", 0, [0.1, 0.1, 0.1])
    r = mod.compare(tmp_path / "a", tmp_path / "b", "Student")
    assert (round(r['a'], 6), round(r['b'], 6), r['n'], r['folds']) == (40.0, 30.0, 3, '0')
    r = mod.compare(tmp_path / "a", tmp_path / "b", "Student,Student+seed=1")
    assert (round(r['a'], 6), round(r['b'], 6)) == (40.0, 20.0)  # per image: (0.3, 0.4, 0.5) against (0.1, 0.2, 0.3)

def test_plain_split_pairs_the_plain_run_of_a_fold_with_each_kdbus_seed(script, tmp_path):
    "bench/plain_split.py: the plain run of a fold (found by its test ids, in its own order) beside every kdbus seed; bad JSONs named."
    mod = script('bench/plain_split.py')
    _fake_run(tmp_path, "Student", 0, [0.2, 0.4, 0.6]); _fake_run(tmp_path, "Student+seed=1", 0, [0.4, 0.4, 0.4])
    _fake_run(tmp_path, "Teacher", 0, [0.5, 0.5, 0.5])
    plain = tmp_path / "plain0.json"
    plain.write_text(json.dumps(dict(test_ids=list("cab"), student=[0.3, 0.1, 0.2], teacher=[0.6] * 3, L_KLD=[0.0] * 3)))
    text = mod.main([str(tmp_path), str(plain), "--rows", "Student", "Teacher"])
    assert "| Student | 2 | 40.00 | Student | 1 | 20.00 | +20.00 [" in text   # (0.4 per image) - (0.1, 0.2, 0.3)
    assert "| Teacher | 1 | 50.00 | Teacher | 1 | 60.00 | -10.00 (no CI: one run per fold) | - |" in text
    text = mod.main([str(tmp_path), str(plain), "--rows", "Student", "--per-seed"])
    assert "| Student, seed 1 | 1 | 40.00 | Student | 1 | 20.00 | +20.00 (no CI" in text and "| Student, seed 0 | 1 | 40.00 |" in text
    (tmp_path / "bad.json").write_text(json.dumps(dict(student=[0.1] * 3)))
    with pytest.raises(SystemExit, match="bad.json: no test_ids"): mod.main([str(tmp_path), str(tmp_path / "bad.json")])
    (tmp_path / "other.json").write_text(json.dumps(dict(test_ids=list("xyz"), student=[0.1] * 3, teacher=[0.1] * 3, L_KLD=[0.1] * 3)))
    with pytest.raises(SystemExit, match="other.json: its test ids are no fold"): mod.main([str(tmp_path), str(tmp_path / "other.json")])
    with pytest.raises(SystemExit, match="both test fold 0"): mod.main([str(tmp_path), str(plain), str(plain)])

def test_first_segmenting_epoch_of_each_student_run(script, tmp_path, capsys):
    "bench/first_segmenting.py: the first epoch above the threshold per run (Teachers left out), and the runs that never got there."
    mod = script('bench/first_segmenting.py')
    _fake_run(tmp_path, "Teacher", 0, val_dice=[0.5, 0.6])
    _fake_run(tmp_path, "Student", 0, val_dice=[0.14, 0.0, 0.25, 0.5])  # a full mask (0.14) first does not count
    _fake_run(tmp_path, "H_MSE+seed=1", 0, val_dice=[0.0, 0.1])
    df = mod.main([str(tmp_path)]).set_index("run")
    assert df.loc["Student", "first"] == 3 and pd.isna(df.loc["H_MSE+seed=1", "first"]) and "Teacher" not in df.index
    assert "2 student runs" in capsys.readouterr().out
    assert list(mod.main([str(tmp_path), "--runs", "Student"]).run) == ["Student"]
    capsys.readouterr(); mod.main([str(tmp_path), "--runs", "Student", "--each"])
    assert capsys.readouterr().out.splitlines()[-1].split() == ["Student", "fold0", "3", "4"]
    _fake_run(tmp_path, "Student+student=m+seed=1", 0, val_dice=[0.3])
    _fake_run(tmp_path, "Student+T=2", 0, val_dice=[0.3])  # another setting: in no size's count
    assert list(mod.main([str(tmp_path), "--student", "m"]).run) == ["Student+student=m+seed=1"]
    assert sorted(mod.main([str(tmp_path), "--student", "s"]).run) == ["H_MSE+seed=1", "Student"]


def test_epoch_profile_splits_an_epoch_into_its_parts(script, tmp_path):
    "bench/epoch_profile.py: the parts of an epoch add up to it, the teacher's forward is timed only in KD runs, fit is left unwrapped after."
    import kdbus.train as kt
    from kdbus.augment import KDDataset
    prof = script('bench/epoch_profile.py')
    before = (kt.validate, kt.atomic_save, KDDataset.__getitem__, kt.Selector.update)
    df = prof.main(['--data', 'synth:n=30', '--epochs', '1', '--runs', 'Student,H_KLD', '--out', str(tmp_path / 'p.md')]).set_index('run')
    parts = df[list(prof.PARTS)]
    assert (parts.sum(axis=1) - df.seconds).abs().max() < 1e-9 and (parts[['data', 'validate', 'save']] > 0).all().all()
    assert df.loc['Student', 'teacher'] == 0 and df.loc['H_KLD', 'teacher'] > 0
    assert (kt.validate, kt.atomic_save, KDDataset.__getitem__, kt.Selector.update) == before  # the wrappers are gone
    assert '| H_KLD |' in (tmp_path / 'p.md').read_text()
    with pytest.raises(SystemExit, match='--epochs 0'): prof.main(['--epochs', '0'])


def test_layouts_bench_times_each_model_both_ways(script, tmp_path):
    "bench/layouts.py: one row per model and role, both layouts timed, the ratio their quotient; a bad size is refused."
    mod = script('bench/layouts.py')
    df = mod.main(['--rounds', '1', '--warmup', '0', '--size', '64', '--batch', '2', '--out', str(tmp_path)])
    assert list(df.model) == ['Teacher', 'Teacher', 'student xs', 'student s', 'student m', 'student l']
    assert (df[['contiguous_s', 'channels_last_s']] > 0).all().all()
    assert ((df.contiguous_s / df.channels_last_s).round(2) - df.ratio).abs().max() <= 0.011
    assert '| student m' in (tmp_path / 'layouts.md').read_text() and (tmp_path / 'layouts.csv').is_file()
    with pytest.raises(SystemExit): mod.main(['--size', '8', '--out', str(tmp_path)])

def test_grid_rerun_compares_seed_0_beside_the_seed_spread(script, tmp_path):
    "bench/grid_rerun.py: seed 0's Dice and cost per row in two folders, the before folder's seed SD; other settings and other splits refused."
    from kdbus.synth import write_synth
    from kdbus.testing import fake_results
    mod = script('bench/grid_rerun.py')
    data = f"udiat:{write_synth(tmp_path / 's', n=20, seed=0)}"
    labels = ['Teacher', 'Teacher+seed=1', 'Teacher+seed=2', 'Student', 'L_KLD_WAug+T=2', 'H_MSE']  # H_MSE: not rerun
    before = fake_results(tmp_path / 'before', data, labels=labels)
    after = fake_results(tmp_path / 'after', data, labels=['Teacher', 'Student'])
    for label, dice in (('Student', 1.0), ('Teacher', 0.0)):  # the rerun's Student: every image perfect; its Teacher: none
        for f in (after / label).glob('fold*/per_image.csv'): f.write_text(pd.read_csv(f).assign(dice=dice).to_csv(index=False))
    run_dice = lambda root, label: [pd.read_csv(f).dice.mean() for f in sorted((root / label).glob('fold*/per_image.csv'))]
    mod.main([str(before), str(after), '--md', str(tmp_path / 'rerun.md')])
    t = mod.compare(mod.runs(str(before)), mod.runs(str(after))).set_index('row')
    assert list(t.index) == ['Teacher', 'Student']                  # the +T=2 run is another question
    assert abs(t.loc['Teacher', 'diff'] + 100 * np.mean(run_dice(before, 'Teacher'))) < 1e-9 and t.loc['Teacher', 'seeds'] == 3
    seed_means = [100 * np.mean(run_dice(before, l)) for l in labels[:3]]
    assert abs(t.loc['Teacher', 'seed_sd'] - np.std(seed_means, ddof=1)) < 1e-9
    assert abs(t.loc['Student', 'diff'] - (100 - 100 * np.mean(run_dice(before, 'Student')))) < 1e-9
    text = (tmp_path / "rerun.md").read_text()
    assert "Rows whose Dice moved by at most one seed SD: 0 of 1 (1 row(s) with one seed before: no SD)" in text
    assert "| n/a (1) |" in text and text.count("(4 runs)") == 2  # totals over the compared runs only (not H_MSE)
    assert "Lower after than before: 1 of 2 rows that moved (two-sided sign test p = 1;" in text  # the Teacher down, the Student up
    assert "below all its seeds in 1 of 1 rows, above all in 0, within their range in 0" in text  # the Student: one seed, not placed
    other = fake_results(tmp_path / 'other', data, labels=['Teacher'], k_folds=4)
    with pytest.raises(SystemExit, match="do not share one split .*k_folds"): mod.main([str(before), str(other)])
    with pytest.raises(SystemExit, match="nope: not a folder"): mod.main([str(before), str(tmp_path / 'nope')])

def test_layout_precision_measures_both_layouts_against_float64(script):
    "bench/layout_precision.py: a contiguous float32 step within float32's rounding of float64's; a bad size refused."
    mod = script('bench/layout_precision.py')
    res = mod.errors('s')  # the quick student, batch 8 at 128 px (about 5 s)
    assert set(res) == {'contiguous', 'channels_last'} and all(m <= p90 <= mx for m, p90, mx in res.values())
    assert res['contiguous'][0] < 1e-4
    with pytest.raises(SystemExit): mod.main(['--student', 'xxl'])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit): mod.main(['--device', 'cuda'])
