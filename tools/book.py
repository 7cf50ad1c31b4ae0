"""`make book`: execute the notebooks of nbs/ in place, so that each is committed with its figures and tables.

Each notebook runs as `nbdev_test` runs it (execnb's shell, IN_TEST=1: the smoke profile; cells flagged
`notest`/`slow` or `eval: false` are skipped and keep no output), from nbs/, on cached synthetic data and the
committed results/. Outputs are made reproducible before they are written: absolute paths become `...`, memory
addresses `0x...`, progress bars and other stderr streams are dropped, and figures are plain PNG at 72 dpi.
Each executed notebook records, in its metadata (`kdbus.book`), the SHA-256 of its code cells and of the
files it declares as inputs, so `book.py --check` (and tests/test_book.py) can tell a stale notebook from a
fresh one without running it.

    python tools/book.py               # the notebooks not executed yet or stale (the others are left as committed)
    python tools/book.py --all         # every notebook
    python tools/book.py 02_augment     # some, by name
    python tools/book.py --check        # exit 1, naming each notebook without outputs or stale
"""
from __future__ import annotations
import argparse, hashlib, json, os, re, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
SKIP_FLAGS = {'notest', 'slow'}  # settings.ini's tst_flags: cells nbdev_test skips, so does the book
# files a notebook reads besides the package: they decide its outputs, so their hashes are stored with them
INPUTS = {'table4.ipynb': ['results/quick-synth/table4.csv']}  # its Table 4, Figure 2 and learning curves: that grid's
REAL_IMAGES = 'real-images'  # the tag of a cell that draws images of real data (../shared/data): they are never committed
NOT_COMMITTED = ("(a figure of real BUSI images, drawn where `../shared/data` exists beside the project: images of that "
                 "data are not committed; run the notebook to see it)")
FIGURES = {'00_synth', '01_data', '01a_duplicates', '02_augment', '04_losses', '07_train', '09b_figures', '13_bench', 'run', 'table4'}  # notebooks whose lessons are pictures
MAX_BYTES = 6_000_000  # budget for all of nbs/ with outputs (kept light: PNG at 72 dpi, no retina; 3.8 MB when set)
PRELUDE = "import matplotlib; matplotlib.rcParams.update({'figure.dpi': 72, 'savefig.dpi': 72})"


def notebooks(names=()) -> list[Path]:
    "The notebooks of nbs/ (or those named, with or without .ipynb), in reading order."
    every = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))
    if not names: return every
    by = {p.stem: p for p in every}
    missing = [n for n in names if n.removesuffix('.ipynb') not in by]
    if missing: raise SystemExit(f"book.py: no notebook {', '.join(map(repr, missing))} in {NBS}; expected one of: {', '.join(by)}")
    return [by[n.removesuffix('.ipynb')] for n in names]


def skipped(cell: dict) -> bool:
    "True for a cell the book does not run: markdown, the export call, flagged `notest`/`slow`, `eval: false`."
    if cell['cell_type'] != 'code': return True
    src = ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']
    if 'nbdev_export' + '(' in src: return True
    from nbdev.process import extract_directives  # nbdev's own reading of `#|` lines, as nbdev_test uses it
    from fastcore.basics import AttrDict
    d = extract_directives(AttrDict(source=src), remove=False)
    return bool(SKIP_FLAGS & d.keys()) or str(d.get('eval:', [''])[0]).lower() == 'false'


def code_hash(nb: dict, name: str) -> str:
    "SHA-256 of the notebook's code cells and of its declared input files: what its outputs depend on besides kdbus."
    h = hashlib.sha256()
    for c in nb['cells']:
        if c['cell_type'] == 'code': h.update((''.join(c['source']) if isinstance(c['source'], list) else c['source']).encode() + b'\0')
    for f in INPUTS.get(name, []):
        p = ROOT / f
        h.update(f.encode() + b'\0' + (p.read_bytes() if p.exists() else b'(missing)') + b'\0')
    return h.hexdigest()


_ADDR = re.compile(r'0x[0-9a-f]{6,}')
def _scrub_text(s: str) -> str:
    "Machine-specific parts of a text output: absolute paths of this checkout, home and temp folders; memory addresses."
    for p in sorted({str(ROOT), str(Path.home()), os.environ.get('TMPDIR', '/tmp')}, key=len, reverse=True):
        s = s.replace(p, '...')
    s = re.sub(r'\.\.\./(?:kdbus-run-|tmp)[\w-]*', '.../tmp', s)  # a temporary folder's random name
    return _ADDR.sub('0x...', s)


def scrub(outputs: list) -> list:
    "Outputs as they are committed: no stderr (warnings, progress bars: timings), no machine-specific text."
    keep = []
    for o in outputs:
        if o.get('output_type') == 'stream':
            if o.get('name') == 'stderr': continue
            o['text'] = _scrub_text(''.join(o['text']) if isinstance(o['text'], list) else o['text'])
        for k in ('data',):
            if k in o:
                for mime in list(o[k]):
                    if mime.startswith('text/'):
                        v = o[k][mime]
                        o[k][mime] = _scrub_text(''.join(v) if isinstance(v, list) else v)
        if o.get('output_type') == 'error': raise RuntimeError(f"an error output: {o.get('ename')}: {o.get('evalue')}")
        keep.append(o)
    return keep


def without_images(outputs: list) -> list:
    "The outputs of a `real-images` cell as committed: each figure replaced by a line saying why it is not there."
    out = []
    for o in outputs:
        if any(m.startswith('image/') for m in o.get('data', {})):
            o = {'output_type': 'display_data', 'metadata': {}, 'data': {'text/plain': NOT_COMMITTED}}
        out.append(o)
    return out


def execute(path: Path) -> dict:
    "Run `path` as nbdev_test does, and return the notebook (read as JSON) with scrubbed outputs and its book hash."
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    os.environ['IN_TEST'] = '1'
    nb = read_nb(path)
    sys.path.insert(0, str(ROOT))
    sh = CaptureShell(path, mpl_format='png')
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        sh.run(PRELUDE)
        sh.run_all(nb, exc_stop=True, preproc=lambda c: skipped(c))
    except Exception as e:
        raise SystemExit(f"book.py: {path.name} failed: {sh.prettytb(fname=path) if hasattr(sh, 'prettytb') else e}")
    finally: os.chdir(cwd)
    raw = json.loads(path.read_text())
    assert len(raw['cells']) == len(nb.cells), path
    for c, done in zip(raw['cells'], nb.cells):
        if c['cell_type'] != 'code': continue
        c['outputs'] = [] if skipped(c) else scrub([dict(o) for o in done.get('outputs', [])])
        if REAL_IMAGES in c.get('metadata', {}).get('tags', []): c['outputs'] = without_images(c['outputs'])
        c['execution_count'] = None
    raw['metadata'].setdefault('kdbus', {})['book'] = {'sha256': code_hash(raw, path.name)}
    return raw


def check(paths: list[Path], budget: bool = True) -> list[str]:
    "What is wrong with the committed notebooks: no outputs, a figure missing, stale (code or inputs changed), the size budget."
    problems = []
    for p in paths:
        nb = json.loads(p.read_text())
        stored = nb['metadata'].get('kdbus', {}).get('book', {}).get('sha256')
        outs = [o for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])]
        if not stored or not outs: problems.append(f"{p.name}: not executed (no outputs): run `make book`"); continue
        if stored != code_hash(nb, p.name): problems.append(f"{p.name}: stale (its code or inputs changed since `make book`)")
        real = [i for i, c in enumerate(nb['cells']) if REAL_IMAGES in c.get('metadata', {}).get('tags', [])
                and any(m.startswith('image/') for o in c.get('outputs', []) for m in o.get('data', {}))]
        if real: problems.append(f"{p.name}: cells {real} (tagged {REAL_IMAGES!r}) hold images of real data: they must not be committed")
        if p.stem in FIGURES and not any('image/png' in o.get('data', {}) for o in outs):
            problems.append(f"{p.name}: no figure among its outputs")
    size = sum(p.stat().st_size for p in NBS.glob('*.ipynb'))
    if budget and size > MAX_BYTES: problems.append(f"nbs/ is {size / 1e6:.1f} MB with outputs: over the {MAX_BYTES / 1e6:.0f} MB budget")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('names', nargs='*', help='notebooks to run (default: all of nbs/)')
    ap.add_argument('--check', action='store_true', help='run nothing: list notebooks without outputs or stale, exit 1 if any')
    ap.add_argument('--all', action='store_true', help='run every notebook, fresh ones too (their timings will change)')
    ap.add_argument('--jobs', type=int, default=2, help='notebooks run at once (default: 2)')
    ap.add_argument('--one', action='store_true', help=argparse.SUPPRESS)  # internal: run the one named notebook here
    a = ap.parse_args(argv)
    paths = notebooks(a.names)
    if a.check:
        problems = check(paths)
        print('\n'.join(problems) or f"{len(paths)} notebooks executed and up to date")
        return 1 if problems else 0
    if a.one: return write(paths[0])
    if not a.names and not a.all:  # only what is missing or stale: outputs of fresh notebooks (timings) do not churn
        paths = [p for p in paths if check([p], budget=False)]
        if not paths: print("every notebook is executed and up to date (--all runs them anyway)"); return 0
    import subprocess
    from concurrent.futures import ThreadPoolExecutor
    one = lambda p: subprocess.run([sys.executable, __file__, '--one', p.stem], capture_output=True, text=True)
    failed = 0
    with ThreadPoolExecutor(a.jobs) as ex:  # one process a notebook, as nbdev_test: no state carried between them
        for p, r in zip(paths, ex.map(one, paths)):
            print(r.stdout.strip() or r.stderr.strip()[-3000:], flush=True)
            failed += r.returncode != 0
    return 1 if failed else 0


def write(p: Path) -> int:
    "Execute one notebook and replace it with its executed copy (whole, by rename: never a half-written notebook)."
    t = time.time()
    nb = execute(p)
    tmp = p.with_name(f'.{p.name}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    tmp.replace(p)
    print(f"{p.name}: {time.time() - t:.0f} s, {p.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == '__main__':
    sys.exit(main())
