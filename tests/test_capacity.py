"The student-size curve: `kdbus report` writes capacity.csv/md/png for a folder with runs of several student sizes."
import warnings

import pandas as pd
import pytest

from kdbus.capacity import CAPACITY_FILES, CAPACITY_ROWS, capacity_table
from conftest import kdbus_main as cli
from kdbus.models import build_model, count_params, student_size
from kdbus.results import collect
from kdbus.stats import run_lift
from kdbus.synth import write_synth
from kdbus.testing import fake_results




@pytest.fixture(scope='module')
def sizes_folder(tmp_path_factory):
    "Made-up runs: the Teacher and the plan's rows at sizes xs, s (no student setting) and l, seeds 0-1, folds 0-1."
    tmp = tmp_path_factory.mktemp('capacity')
    data = f"udiat:{write_synth(tmp/'synth', n=20, seed=0)}"
    names = [f"{r}{'' if s == 's' else '+student=' + s}{'' if seed == 0 else f'+seed={seed}'}" for r in CAPACITY_ROWS for s in ('xs', 's', 'l') for seed in (0, 1)]
    return fake_results(tmp/'results', data, size=64, labels=['Teacher', 'Teacher+seed=1', *names])


def test_the_table_pairs_each_kd_row_with_the_student_of_its_size(sizes_folder):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        df = collect(sizes_folder)
    t = capacity_table(df).set_index(['size', 'model'])
    assert list(dict.fromkeys(t.index.get_level_values(0))) == ['xs', 's', 'l']          # smallest first
    for s in ('xs', 'l'):
        assert t.loc[(s, 'Student'), 'params'] == count_params(build_model(student_size(s, 'smoke'), 'meta'))
    pick = lambda label: df[df.label == label][['fold', 'seed', 'id', 'dice']]
    both = lambda label: pd.concat([pick(label), pick(label.replace('+student=l', '+student=l+seed=1') if '+' in label else label + '+seed=1')])
    want = run_lift(both('H_MSE_WAug+student=l'), both('Student+student=l'))        # the same-size Student, not another size's
    assert t.loc[('l', 'H_MSE_WAug'), 'lift'] == pytest.approx(want['lift']) and t.loc[('l', 'H_MSE_WAug'), 'p'] == pytest.approx(want['p'])
    kd = t[t.index.get_level_values(1) != 'Student']
    assert kd.p_holm.notna().all() and (kd.p_holm >= kd.p - 1e-12).all()              # Holm over the plan's family of 8
    assert t.loc[('xs', 'Student'), 'teacher_lead'] > 0


def test_kdbus_report_writes_the_capacity_files_with_the_costs(sizes_folder, tmp_path):
    bench = pd.DataFrame([dict(student_size=s, model=m, cpu_ms_ort=v, cpu_ms_torch=2 * v)
                          for s, v in (('xs', 1.0), ('s', 2.0), ('l', 4.0)) for m, v in (('teacher', 20.0), ('student', v), ('student_int8_static', v / 2))])
    bench.to_csv(tmp_path/'bench.csv', index=False)
    rc, out, err = cli('report', sizes_folder, '--out', tmp_path/'rep', '--no-image', '--bench', tmp_path/'bench.csv')
    assert rc == 0, err
    for name in CAPACITY_FILES: assert (tmp_path/'rep'/name).stat().st_size > 0 and f"wrote {tmp_path/'rep'/name}" in out
    md = (tmp_path/'rep'/'capacity.md').read_text()
    assert '| xs | 0.185 | Student |' in md and '| l | 2.675 | H_MSE_WAug |' in md and '20.0x |' in md   # the teacher 20 ms, xs 1 ms
    assert "**The Teacher's lead** over each size's Student: xs +" in md
    assert pd.read_csv(tmp_path/'rep'/'capacity.csv').speedup_vs_teacher.tolist()[:3] == [20.0] * 3
    bench.assign(preset='paper').to_csv(tmp_path/'other.csv', index=False)     # another preset's teacher: refused
    rc, _, err = cli('report', sizes_folder, '--out', tmp_path/'rep2', '--no-image', '--bench', tmp_path/'other.csv')
    assert rc == 2 and "bench: the table benches preset 'paper', but the runs used" in err, err


def test_a_folder_of_one_size_writes_no_curve_and_a_missing_bench_is_refused(tmp_path):
    data = f"udiat:{write_synth(tmp_path/'synth', n=20, seed=0)}"
    res = fake_results(tmp_path/'results', data, size=64, labels=('Teacher', 'Student', 'L_KLD_WAug'))
    rc, out, err = cli('report', res, '--no-image')
    assert rc == 0, err
    assert not any((res/n).exists() for n in CAPACITY_FILES)
    rc, _, err = cli('report', res, '--no-image', '--bench', tmp_path/'nope.csv')
    assert rc == 2 and 'nope.csv: bench table not found' in err
