"""The committed results recomputed from their run folders' files: every table4.csv / table4.md and table4_seeds.csv /
table4_seeds.md of results/ must be what `kdbus report` makes of the per-image CSVs next to them, every column."""
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbus.config import ALL_RUNS
from kdbus.results import ReportWarning, collect
from kdbus.report import table4, table4_markdown
from kdbus.publish import table4_table
from kdbus.sweeps import seeds_markdown, seeds_table

ROOT = Path(__file__).resolve().parents[1]
TABLE4 = sorted(p.parent for p in (ROOT / 'results').glob('*/table4.csv'))
SEEDS = sorted(p.parent for p in (ROOT / 'results').glob('*/table4_seeds.csv'))


def _same_name(a, b) -> bool:
    "The data of two specs by name (kind, folder name, options): a clone elsewhere cannot resolve '../shared/...' to the folder the runs saw."
    from dataclasses import replace
    from kdbus.data import parse_spec
    name = lambda s: replace(parse_spec(s), **{k: Path(v).name for k in ('root', 'mask_root', 'splits') if (v := getattr(parse_spec(s), k)) is not None})
    return name(a) == name(b)


def _collect(folder):
    "`collect` of a committed folder, its runs' data compared by name (the split guard itself is tested in test_report.py)."
    import kdbus.results as kr
    real = kr.same_data
    try:
        kr.same_data = _same_name
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', ReportWarning)
            return collect(folder)
    finally: kr.same_data = real


def _same(ours: pd.DataFrame, committed: pd.DataFrame, folder):
    "Every column equal: numbers to 1e-9 relative (float sums may differ in the last bits between CPUs), the rest exactly."
    assert list(ours.columns) == list(committed.columns), folder
    for c in ours.columns:
        a, b = ours[c], committed[c]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            assert np.allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-9, atol=1e-12, equal_nan=True), (folder.name, c)
        else:
            text = lambda x: ['' if pd.isna(v) else str(v) for v in x]
            assert text(a) == text(b), (folder.name, c)


def test_there_are_committed_tables_to_check():
    assert {p.name for p in TABLE4} >= {'quick-busi163', 'quick-synth'} and {p.name for p in SEEDS} >= {'quick-busi163', 'quick-synth'}


@pytest.mark.parametrize('folder', TABLE4, ids=lambda p: p.name)
def test_table4_is_recomputed_from_the_per_image_csvs(folder):
    df = _collect(folder)
    ours = table4(df[df.label.isin(ALL_RUNS)])
    committed = pd.read_csv(folder / 'table4.csv')
    _same(ours, committed, folder)
    table = next(b for b in table4_markdown(ours).split('\n\n') if b.startswith('| model'))
    assert table + '\n' == table4_table(folder), folder  # the Markdown table, every column


@pytest.mark.parametrize('folder', SEEDS, ids=lambda p: p.name)
def test_seed_table_is_recomputed_from_the_per_image_csvs(folder):
    ours = seeds_table(_collect(folder))
    committed = pd.read_csv(folder / 'table4_seeds.csv', dtype={'seeds': str, 'folds': str})
    _same(ours.astype({'seeds': str, 'folds': str}), committed, folder)
    table = next(b for b in seeds_markdown(ours).split('\n\n') if b.startswith('| model'))
    assert table + '\n' == table4_table(folder, 'table4_seeds.md'), folder


def _anchors(md: Path) -> set:
    "GitHub's anchors of a Markdown file's headings (outside code fences)."
    import re
    out, fence = set(), False
    for line in md.read_text().splitlines():
        if line.startswith('```'): fence = not fence
        elif not fence and re.match(r'#{1,6} ', line):
            out.add(re.sub(r'[^\w\- ]', '', line.lstrip('#').strip().lower()).replace(' ', '-'))
    return out


def test_every_local_link_of_the_markdown_files_resolves():
    "README.md, CONTRIBUTING.md, docs/ and results/*/README.md: every relative link names a file that exists, and its #anchor a heading there."
    import re
    files = [ROOT/'README.md', ROOT/'CONTRIBUTING.md', *sorted((ROOT/'docs').glob('*.md')), *sorted((ROOT/'results').glob('*/README.md')), ROOT/'results'/'README.md']
    bad = []
    for md in files:
        text = re.sub(r'```.*?```', '', md.read_text(), flags=re.S)
        for target in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'^[a-z]+:', target): continue
            path, _, anchor = target.partition('#')
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists(): bad.append(f"{md.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == '.md' and anchor not in _anchors(dest): bad.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, '\n'.join(bad)
