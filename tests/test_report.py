"""kdbus.report on fake results folders written here: Table 4 and its statistics, Figure 2's choice, the written files, bad input."""
import json, shutil, warnings
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kdbus.distill import TABLE3
from kdbus.evaluate import load_predictions
from kdbus.data import data_citation
from kdbus.stats import stars
from kdbus.results import ReportWarning, collect, find_runs
from kdbus.figures import (choose_figure2_image, dice_distribution, figure2, learning_curves, loss_terms, plot_dice,
                           plot_history, plot_overlays)
from kdbus.report import ALL_RUNS, MIN_PAIRS, PAPER_TABLE4, table4, table4_markdown
from kdbus.publish import REPORT_FILES, write_report
from kdbus.synth import write_synth
from kdbus.testing import fake_results

PAPER_MD = Path(__file__).resolve().parents[1].parent / 'shared/paper/PAPER.md'

# Table 4 as PAPER.md prints it, copied by hand (independently of the module's constants)
PAPER_ROWS = """\
| Teacher | 81.50 +- 18.40 | - | 0.0048 |
| Student (no KD) | 73.16 +- 23.78 | 0.0048 | - |
| L_MSE | 77.75 +- 22.55 | 0.1414 | 0.0227 |
| L_MSE_WAug | 77.52 +- 17.61 | 0.1565 | 0.0948 |
| L_KLD | 78.00 +- 22.05 | 0.0950 | 0.0037 |
| L_KLD_WAug | 80.00 +- 18.86 | 0.2075 | 0.0012 |
| H_MSE | 77.50 +- 21.49 | 0.0645 | 0.0215 |
| H_MSE_WAug | 77.85 +- 20.06 | 0.0341 | 0.0125 |
| H_KLD | 79.00 +- 20.45 | 0.1320 | 0.0067 |
| H_KLD_WAug | 78.50 +- 19.83 | 0.1417 | 0.0316 |
| HReg_MSE | 78.06 +- 19.25 | 0.0325 | 0.0201 |
| HReg_MSE_WAug | 77.63 +- 19.97 | 0.0402 | 0.0269 |
| HReg_KLD | 79.00 +- 20.37 | 0.2132 | 0.0021 |
| HReg_KLD_WAug | 79.31 +- 19.33 | 0.1247 | 0.0068 |"""

# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return f"udiat:{write_synth(tmp_path_factory.mktemp('synth') / 'set', n=24, seed=0)}"

@pytest.fixture(scope='module')
def full(tmp_path_factory, data):
    "14 runs x 2 folds, all complete; never written into by the tests (they copy it)."
    return fake_results(tmp_path_factory.mktemp('full') / 'OUT', data, size=64, n_folds=2)

@pytest.fixture(scope='module')
def df(full):
    return collect(full)

@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close('all')

def copy_of(full, tmp_path):
    return Path(shutil.copytree(full, tmp_path / 'OUT'))

def quiet_collect(path):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ReportWarning)
        return collect(path)

# ---------------------------------------------------------------- collect
def test_collect_has_every_test_image_of_every_run(full, df):
    test_eq_cols = ['label', 'fold', 'id', 'class', 'dice', 'iou', 'pred_area', 'gt_area']
    assert list(df.columns[:8]) == test_eq_cols
    assert df.attrs['incomplete'] == []
    for label in ALL_RUNS:
        for k in (0, 1):
            csv = pd.read_csv(full / label / f'fold{k}' / 'per_image.csv', dtype={'id': str})
            rows = df[(df.label == label) & (df.fold == k)]
            assert list(rows.id) == list(csv.id) and np.allclose(rows.dice, csv.dice)
    assert df.id.str.fullmatch(r'\d{6}').all(), "image ids lost their leading zeros"
    assert (df[df.label == 'Teacher'].params == 82_000_000).all() and (df[df.label == 'Student'].params == 820_000).all()
    # the two folds test different images, and both models of a fold test the same ones
    f0, f1 = (set(df.id[(df.label == 'Teacher') & (df.fold == k)]) for k in (0, 1))
    assert f0 and f1 and not f0 & f1
    assert f0 == set(df.id[(df.label == 'HReg_KLD') & (df.fold == 0)])

# ---------------------------------------------------------------- Table 4
def test_table4_rows_numbers_and_params(df):
    t = table4(df)
    assert list(t.model) == list(ALL_RUNS)
    assert t.dsc_mean.between(0, 100).all() and t.dsc_std.between(0, 100).all()
    for label in ('Teacher', 'L_KLD_WAug'):
        dice = 100 * df[df.label == label].dice
        row = t[t.model == label].iloc[0]
        assert row.dsc_mean == pytest.approx(dice.mean()) and row.dsc_std == pytest.approx(dice.std(ddof=1))
        assert row['DSC (%)'] == f"{dice.mean():.2f} ± {dice.std(ddof=1):.2f}"
        assert row.n_images == len(dice) and row.folds == 2 and row.fold_ids == '0,1'
    assert t['params (M)'].tolist() == [82.0] + [0.82] * 13
    assert t.loc[t.model == 'Teacher', 'p vs Teacher'].isna().all() and t.loc[t.model == 'Student', 'p vs Student'].isna().all()

def wilcoxon_by_hand(df, label, ref):
    "scipy's p on the (fold, id) pairs of two runs, joined here independently of kdbus.report."
    a = df[df.label == label][['fold', 'id', 'dice']]
    b = df[df.label == ref][['fold', 'id', 'dice']]
    m = a.merge(b, on=['fold', 'id'], suffixes=('_a', '_b'))
    if np.count_nonzero(m.dice_a - m.dice_b) < MIN_PAIRS: return float('nan'), len(m)
    return stats.wilcoxon(m.dice_a, m.dice_b).pvalue, len(m)

def test_p_values_are_scipys_on_the_same_pairs(df):
    t = table4(df).set_index('model')
    finite = 0
    for label in ALL_RUNS:
        for ref in ('Teacher', 'Student'):
            if label == ref: continue
            p, n = wilcoxon_by_hand(df, label, ref)
            ours = t.loc[label, f'p vs {ref}']
            assert t.loc[label, f'n_pairs_{ref.lower()}'] == n == 10
            if np.isnan(p): assert np.isnan(ours)
            else:
                assert 0 <= ours <= 1 and ours == pytest.approx(p, rel=1e-12); finite += 1
    assert finite >= 20, "too few finite p-values for this test to mean anything"

def test_pairs_are_matched_by_fold_and_image_not_by_row_order(df):
    shuffled = df.sample(frac=1, random_state=0)
    a, b = table4(df), table4(shuffled)
    assert np.allclose(a['p vs Teacher'], b['p vs Teacher'], equal_nan=True)
    # renaming the Student's images breaks every pair: no pairs, no p-value
    broken = df.copy()
    broken.loc[broken.label == 'Student', 'id'] = 'x' + broken.loc[broken.label == 'Student', 'id']
    t = table4(broken).set_index('model')
    assert t['p vs Student'].drop('Student').isna().all() and (t['n_pairs_student'] == 0).all()
    assert 'no shared (fold, image) pairs' in t.loc['L_MSE', 'note']

@pytest.mark.parametrize("p,mark", [(0.0012, '**'), (0.00999, '**'), (0.01, '*'), (0.0499, '*'), (0.05, ''), (0.9, ''),
                                    (float('nan'), ''), (None, '')])
def test_stars_rule(p, mark):
    assert stars(p) == mark

def test_star_columns_follow_the_p_values_and_carry_the_sign(df):
    t = table4(df)
    for ref in ('Teacher', 'Student'):
        mean = df[df.label == ref].set_index(['fold', 'id']).dice
        diff = [100 * (df[df.label == l].set_index(['fold', 'id']).dice - mean).mean() for l in t.model]
        expected = ['' if not p < 0.05 else ('↑' if d > 0 else '↓') + ('**' if p < 0.01 else '*') for p, d in zip(t[f'p vs {ref}'].fillna(1.0), diff)]
        assert t[f'sig vs {ref}'].tolist() == expected
        assert np.allclose(t[f'diff vs {ref}'].fillna(0), np.nan_to_num(diff) * (t.model != ref))
    below = t.set_index('model').loc['Student', 'sig vs Teacher']  # the fake Student is far below the fake Teacher
    assert below.startswith('↓')

def test_identical_runs_and_too_few_pairs_give_no_p_value(df):
    d = df.copy()
    student = d[d.label == 'Student'].set_index(['fold', 'id']).dice
    same = d.label == 'L_MSE'
    d.loc[same, 'dice'] = [student[(f, i)] for f, i in zip(d.fold[same], d.id[same])]  # L_MSE == Student, image by image
    few = (d.label == 'L_KLD') & (d.index.isin(d[d.label == 'L_KLD'].index[:MIN_PAIRS - 1]))
    d = d[(d.label != 'L_KLD') | few]
    t = table4(d).set_index('model')
    assert np.isnan(t.loc['L_MSE', 'p vs Student']) and 'all 10 paired differences are zero' in t.loc['L_MSE', 'note']
    assert np.isfinite(t.loc['L_MSE', 'p vs Teacher'])
    assert np.isnan(t.loc['L_KLD', 'p vs Teacher']) and np.isnan(t.loc['L_KLD', 'p vs Student'])
    assert f'fewer than {MIN_PAIRS}' in t.loc['L_KLD', 'note'] and t.loc['L_KLD', 'n_images'] == MIN_PAIRS - 1

def test_paper_columns_match_paper_md(df):
    if PAPER_MD.is_file():  # the hand copy above is PAPER.md's text
        text = PAPER_MD.read_text()
        for line in PAPER_ROWS.splitlines(): assert line in text, line
    t = table4(df).set_index('model')
    for line in PAPER_ROWS.splitlines():
        name, dsc, pt, ps = [c.strip() for c in line.strip('|').split('|')]
        label = 'Student' if name.startswith('Student') else name
        mean, std = (float(v) for v in dsc.split('+-'))
        num = lambda s: None if s == '-' else float(s)
        assert PAPER_TABLE4[label] == (mean, std, num(pt), num(ps))
        assert t.loc[label, 'paper DSC (%)'] == f"{mean:.2f} ± {std:.2f}"
        for col, v in (('paper p vs Teacher', num(pt)), ('paper p vs Student', num(ps))):
            assert (np.isnan(t.loc[label, col]) if v is None else t.loc[label, col] == v)
    assert list(PAPER_TABLE4) == list(ALL_RUNS) and ALL_RUNS[2:] == TABLE3

# ---------------------------------------------------------------- missing and incomplete runs
def test_incomplete_run_is_left_out_and_reported(full, tmp_path):
    out = copy_of(full, tmp_path)
    (out / 'H_KLD' / 'fold1' / 'metrics.json').unlink()
    done, todo = find_runs(out)
    assert todo == [out / 'H_KLD' / 'fold1'] and len(done) == 27
    with pytest.warns(ReportWarning, match='H_KLD/fold1'):
        d = collect(out)
    assert d.attrs['incomplete'] == ['H_KLD/fold1'] and set(d.fold[d.label == 'H_KLD']) == {0}
    t = table4(d).set_index('model')
    assert t.loc['H_KLD', 'n_images'] == 5 and t.loc['H_KLD', 'fold_ids'] == '0'
    with pytest.warns(ReportWarning):
        paths = write_report(out, out=tmp_path / 'rep')
    md = paths[1].read_text()
    assert 'left out' in md and 'H_KLD/fold1' in md
    assert 'fold 0' in md  # no fold-1 image was predicted by every run, so Figure 2 shows a fold-0 image

def test_missing_runs_leave_rows_out_and_panels_not_run(full, tmp_path):
    out = copy_of(full, tmp_path)
    shutil.rmtree(out / 'Teacher'); shutil.rmtree(out / 'HReg_KLD_WAug')
    d = quiet_collect(out)
    t = table4(d)
    assert list(t.model) == [l for l in ALL_RUNS if l not in ('Teacher', 'HReg_KLD_WAug')]
    assert t['p vs Teacher'].isna().all() and t.note.str.contains('no Teacher run').iloc[1:].all()
    assert t['p vs Student'].notna().sum() >= 5
    # without a Teacher the Student is the reference of the Figure 2 rule
    fold, image = choose_figure2_image(d)
    s = d[d.label == 'Student']
    assert abs(s.set_index(['fold', 'id']).dice[(fold, image)] - s.dice.median()) == pytest.approx((s.dice - s.dice.median()).abs().min())
    fig = figure2(d)
    texts = {ax.get_title().split('\n')[0]: [x.get_text() for x in ax.texts] for ax in fig.axes}
    assert texts['(B) Teacher'] == ['not run'] and texts['(O) HReg_KLD_WAug'] == ['not run'] and texts['(C) Student'] != ['not run']
    md = write_report(out, out=tmp_path / 'rep')[1].read_text()
    assert '**not run**: Teacher, HReg_KLD_WAug' in md

def test_report_files_do_not_disturb_the_folder(full, tmp_path):
    out = copy_of(full, tmp_path)
    paths = write_report(out)  # into the results folder itself
    assert [p.parent for p in paths] == [out] * len(REPORT_FILES) and [p.name for p in paths] == list(REPORT_FILES)
    assert not list(out.glob('.*tmp*')), "temporary files left behind"
    again = quiet_collect(out)
    assert len(again) == len(collect(full)) and again.attrs['incomplete'] == []

# ---------------------------------------------------------------- written files
def test_write_report_writes_every_file(full, tmp_path, df):
    before = sorted(p.relative_to(full) for p in full.rglob('*'))
    paths = write_report(full, out=tmp_path / 'rep')
    assert sorted(p.relative_to(full) for p in full.rglob('*')) == before, "the results folder was written into"
    assert [p.name for p in paths] == list(REPORT_FILES) and all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    for p in paths:
        head = p.read_bytes()[:8]
        if p.suffix == '.png': assert head == b'\x89PNG\r\n\x1a\n', p
        if p.suffix == '.pdf': assert head[:4] == b'%PDF', p
    csv = pd.read_csv(paths[0])
    assert list(csv.model) == list(ALL_RUNS)
    assert np.allclose(csv.dsc_mean, table4(df).dsc_mean) and csv['test'].str.contains('Wilcoxon').all()
    md = paths[1].read_text()
    lines = md.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith('| '))
    rows = lines[start:lines.index('', start)]  # the first table: header, rule, then one line per model
    assert [r.split('|')[1].strip() for r in rows[2:]] == list(ALL_RUNS)  # the paper's labels, in its order
    assert "## The paper's findings, checked" in md and '| the Teacher beats the Student trained alone' in md
    assert 'Wilcoxon signed-rank' in md and 'made-up placeholders' in md and '81.50 ± 18.40' in md

# ---------------------------------------------------------------- Figure 2
def test_figure2_choice_is_the_documented_rule(df):
    fold, image = choose_figure2_image(df)
    assert (fold, image) == choose_figure2_image(df.sample(frac=1, random_state=3))
    tea = df[df.label == 'Teacher']
    dist = (tea.dice - tea.dice.median()).abs()
    best = tea[np.isclose(dist, dist.min())].sort_values(['fold', 'id']).iloc[0]
    assert (fold, image) == (best.fold, best.id)
    fig = figure2(df)
    assert fig.figure2_image == (fold, image) and len(fig.axes) == 15
    titles = [ax.get_title().split('\n')[0] for ax in fig.axes]
    assert titles[0].startswith('(A) image') and titles[1:] == [f"({chr(66 + i)}) {l}" for i, l in enumerate(ALL_RUNS)]
    dice = df[(df.label == 'L_KLD') & (df.fold == fold) & (df.id == image)].dice.item()
    assert fig.axes[1 + ALL_RUNS.index('L_KLD')].get_title().endswith(f"DSC {100 * dice:.1f} %")

def test_figure2_given_image(df, full):
    image = df[(df.label == 'Teacher') & (df.fold == 1)].id.iloc[2]
    fig = figure2(df, image=image)
    assert fig.figure2_image == (1, image)
    assert figure2(full, image=image, fold=1).figure2_image == (1, image)
    with pytest.raises(ValueError, match="'999999' is not a test image"): figure2(df, image='999999')
    with pytest.raises(ValueError, match=r"fold\(s\) \[1\], not fold=0"): figure2(df, image=image, fold=0)
    with pytest.raises(ValueError, match='fold is given without image'): figure2(df, fold=1)

def test_figure2_without_the_data_set_still_draws(full, tmp_path):
    out = copy_of(full, tmp_path)
    for cfg in out.glob('*/fold*/config.json'):
        c = json.loads(cfg.read_text()); c['data'] = f"udiat:{tmp_path / 'gone'}"; cfg.write_text(json.dumps(c))
    with pytest.warns(ReportWarning, match='not available'):
        fig = figure2(quiet_collect(out))
    assert len(fig.axes) == 15 and 'image not available' in fig.axes[0].get_title()

# ---------------------------------------------------------------- bad input
def test_bad_results_folders(full, tmp_path):
    with pytest.raises(FileNotFoundError, match='is not a folder'): collect(tmp_path / 'nope')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no complete run'): write_report(tmp_path / 'empty')
    assert list((tmp_path / 'empty').iterdir()) == [], "files written for an empty folder"

@pytest.mark.parametrize("case,error,match", [
    ('no per_image', FileNotFoundError, r"L_MSE/fold0/per_image\.csv: file not found"),
    ('dice out of range', ValueError, r"per_image\.csv: dice of image '\d{6}' is 1\.5; expected a number in \[0, 1\]"),
    ('missing column', ValueError, r"per_image\.csv: missing column\(s\) iou"),
    ('run mismatch', ValueError, r"metrics\.json: run='H_MSE'.*but the folder is L_MSE/fold0"),
    ('label mismatch', ValueError, r"metrics\.json: label='H_MSE'.*but the folder is L_MSE/fold0"),  # a run made before `run` was recorded
    ('bad json', ValueError, r"metrics\.json: not valid JSON"),
    ('n_test mismatch', ValueError, r"n_test=99 but per_image\.csv has 5 rows"),
])
def test_broken_run_files_are_named(full, tmp_path, case, error, match):
    out = copy_of(full, tmp_path)
    run = out / 'L_MSE' / 'fold0'
    pi, m = run / 'per_image.csv', run / 'metrics.json'
    if case == 'no per_image': pi.unlink()
    elif case == 'dice out of range':
        d = pd.read_csv(pi, dtype={'id': str}); d.loc[2, 'dice'] = 1.5; d.to_csv(pi, index=False)
    elif case == 'missing column': pd.read_csv(pi, dtype={'id': str}).drop(columns='iou').to_csv(pi, index=False)
    elif case == 'run mismatch': m.write_text(json.dumps({**json.loads(m.read_text()), 'run': 'H_MSE'}))
    elif case == 'label mismatch': m.write_text(json.dumps({**{k: v for k, v in json.loads(m.read_text()).items() if k != 'run'}, 'label': 'H_MSE'}))
    elif case == 'bad json': m.write_text('{"label": ')
    elif case == 'n_test mismatch': m.write_text(json.dumps({**json.loads(m.read_text()), 'n_test': 99}))
    with pytest.raises(error, match=match): collect(out)

def test_broken_predictions_are_named(full, tmp_path):
    out = copy_of(full, tmp_path)
    run = out / 'Student' / 'fold0'
    ids, masks = load_predictions(run/"predictions.npz")
    np.savez(run / 'predictions.npz', ids=np.array(ids), masks=np.packbits(masks), shape=np.array([len(ids) + 1, 64, 64]))
    with pytest.raises(ValueError, match=r"Student/fold0/predictions\.npz: shape .* do not agree"): load_predictions(run/"predictions.npz")
    (run / 'predictions.npz').unlink()
    with pytest.raises(FileNotFoundError, match='predictions.npz: file not found'): plot_overlays(run)

# ---------------------------------------------------------------- figures
def test_report_figures(df):
    fig = dice_distribution(df)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(ALL_RUNS)
    assert fig.axes[0].get_ylabel() == 'DSC (%) per test image'
    assert len(learning_curves(df).axes) == 4  # (val loss, val DSC) x 2 folds
    lt = loss_terms(df)
    assert [ax.get_title() for ax in lt.axes] == list(TABLE3)
    assert len(loss_terms(df[df.label.isin(['Teacher', 'Student'])]).axes[0].texts) == 1  # 'no distillation run'

def test_run_plots(full):
    kd, teacher = full / 'H_MSE_WAug' / 'fold1', full / 'Teacher' / 'fold0'
    assert len(plot_history(kd).axes[0].get_lines()) == 4 + 1       # train total, CE, KD, val CE + best epoch
    assert len(plot_history(teacher).axes[0].get_lines()) == 3 + 1  # no KD term
    fig = plot_dice(kd)
    assert fig.axes[0].get_title().startswith('H_MSE_WAug, fold1: DSC')
    pi = pd.read_csv(kd / 'per_image.csv', dtype={'id': str}).sort_values('dice')
    fig = plot_overlays(kd, n=3)
    assert len(fig.axes) == 3
    assert [ax.get_title().split(' ')[0] for ax in fig.axes] == [pi.id.iloc[0], pi.id.iloc[2], pi.id.iloc[4]]
    assert len(plot_overlays(kd, n=50).axes) == 5  # no more than the fold's test images
    with pytest.raises(ValueError, match='n=0'): plot_overlays(kd, n=0)

def test_findings_compare_like_the_paper(df):
    from kdbus.report import findings
    d = df.copy()
    mse = d.set_index(['label', 'fold', 'id']).dice
    for kld in [l for l in TABLE3 if 'KLD' in l]:  # make every KLD student the MSE twin plus 0.05 (capped at 1)
        rows = d.label == kld
        twin = kld.replace('KLD', 'MSE')
        d.loc[rows, 'dice'] = [min(1.0, mse[(twin, f, i)] + 0.05) for f, i in zip(d.fold[rows], d.id[rows])]
    c = findings(d).set_index('finding (the paper)')
    ours = "ours: the paper's protocol (one seed, per image)"
    assert c.loc['KLD beats MSE on every path (same teacher augmentation)', ours] == '6 of 6'
    assert (c.verdict == 'not shown').all()  # one seed per fold: no verdict, however clear the per-image test
    t = table4(d).set_index('model')
    best = t.dsc_mean[list(TABLE3)].idxmax()
    assert c.loc['the best KD student is within 1.5 points of the Teacher', ours].startswith(f"{best}: ")
    up = int((t.dsc_mean[list(TABLE3)] > t.dsc_mean['Student']).sum())
    assert c.loc['every KD student beats the Student', ours].startswith(f"{up} of 12 higher")


def replicated(d, seeds=(1, 2), noise=0.02, seed=0):
    "`d` (one seed) plus replicates `<label>+seed=S`: each run's Dice moved by a run effect and per-image noise."
    rng, out = np.random.default_rng(seed), [d.assign(seed=0)]
    for s in seeds:
        r = d.assign(seed=s, label=d.label + f'+seed={s}')
        shift = {(l, f): rng.normal(0, noise) for l, f in set(zip(r.label, r.fold))}
        r['dice'] = np.clip(r.dice + [shift[(l, f)] for l, f in zip(r.label, r.fold)] + rng.normal(0, noise, len(r)), 0, 1)
        out.append(r)
    return pd.concat(out, ignore_index=True)


def test_findings_verdicts_are_run_level_and_signed(df):
    "With replicates: a clear KLD-over-MSE lift is reproduced; KLD made worse is contradicted; the per-image column stays seed 0."
    from kdbus.report import findings
    claim = 'KLD beats MSE on every path (same teacher augmentation)'
    for shift, want in ((0.15, 'reproduced'), (-0.15, 'contradicted')):
        d = df.copy()
        mse = d.set_index(['label', 'fold', 'id']).dice
        for kld in [l for l in TABLE3 if 'KLD' in l]:
            rows = d.label == kld
            d.loc[rows, 'dice'] = [float(np.clip(mse[(kld.replace('KLD', 'MSE'), f, i)] + shift, 0, 1)) for f, i in zip(d.fold[rows], d.id[rows])]
        c = findings(replicated(d)).set_index('finding (the paper)')
        assert c.loc[claim, 'verdict'] == want, c.loc[claim].to_dict()
        assert c.loc[claim, 'ours: run-level (seeds x folds)'].startswith('6 of 6 higher' if shift > 0 else '0 of 6 higher, 6 lower')
        assert c.loc[claim, "ours: the paper's protocol (one seed, per image)"] == ('6 of 6' if shift > 0 else '0 of 6')


def test_figure2_can_leave_the_image_out_and_cites_the_data(full, df):
    with_image = figure2(df)
    a = with_image.axes[0].images[0].get_array()
    assert np.ptp(np.asarray(a)) > 0  # the image is drawn
    without = figure2(df, show_image=False)
    b = np.asarray(without.axes[0].images[0].get_array())
    assert np.ptp(b) == 0 and 'image not shown' in without.axes[0].get_title()  # a plain background, said so
    assert len(without.axes[1].collections) == len(with_image.axes[1].collections)  # the same contours
    assert data_citation('busi:/data/BUSI').startswith('Al-Dhabyani') and data_citation('synth') == ''
    md = table4_markdown(table4(df), data='busi:/data/BUSI')
    assert '- **data**: `busi:/data/BUSI`; Al-Dhabyani W.' in md


MARKDOWN = lambda root: [root/'README.md', *sorted((root/'docs').glob('*.md')), *sorted((root/'results').glob('*/README.md'))]

def test_readme_tables_are_the_committed_results():
    "Every '<!-- table4: DIR -->' and '<!-- seeds: DIR -->' block of README.md, docs/ and results/*/README.md is DIR's report table."
    import re
    from kdbus.publish import README_BLOCK, sync_readme
    root = Path(__file__).resolve().parents[1]
    blocks = [(p, m['kind']) for p in MARKDOWN(root) for m in README_BLOCK.finditer(p.read_text())]
    assert sum(k == 'table4' for _, k in blocks) >= 3 and sum(k == 'seeds' for _, k in blocks) >= 3, blocks
    for p in MARKDOWN(root):
        text = p.read_text()
        assert not re.search(r'<!-- (table4|seeds): \S+ -->\n(?!(.|\n)*?<!-- /\1 -->)', text), f"{p}: a block without its closing line"
        assert sync_readme(p, check=True) == [], f"{p}: stale table block (kdbus report DIR --readme {p.relative_to(root)})"


def test_figures_name_the_runs_own_loss_and_checkpoint_rule(full, tmp_path):
    "learning_curves and loss_terms read sup_loss and select from the runs' config.json: a dice_ce, val_loss folder is labelled so."
    from kdbus.figures import learning_curves, loss_terms
    res = copy_of(full, tmp_path)
    for cfg in res.glob('*/fold*/config.json'):
        c = json.loads(cfg.read_text())
        c.get('config', c).update(sup_loss='dice_ce', select='val_loss')  # a grid's config.json nests the RunConfig, the fake one not
        cfg.write_text(json.dumps(c))
    df = quiet_collect(res)
    fig = learning_curves(df)
    assert fig._suptitle.get_text().endswith('the epoch with the lowest validation loss)') and fig.axes[0].get_ylabel() == 'validation loss (Dice + CE)'
    legend = [t.get_text() for t in loss_terms(df).axes[0].get_legend().get_texts()]
    assert legend == ['L_sup (Dice + CE)', 'L_distill (KD)']
