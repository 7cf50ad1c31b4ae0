"""`make docs`: a static site of the executed notebooks, built with nbconvert (Quarto, which nbdev_docs needs,
cannot be installed offline), into a folder that is not committed (default `_site/`).

The index page holds the paper in one paragraph, the two commands, Table 4 and Figure 2 of the committed
busi-163 grid, and the notebooks in reading order; each notebook page links back to it and to its neighbours.
Everything is local: no CDN script or font, images embedded (notebook outputs) or copied beside the pages.
Every page carries a small script that counts its images that failed to load into `<body data-images>`,
which is what tests/test_site.py reads from headless Chromium's DOM.

    python tools/docsite.py                 # into _site/
    python tools/docsite.py --out /tmp/s    # elsewhere
"""
from __future__ import annotations
import argparse, html, json, re, shutil, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
RESULTS = ROOT / 'results' / 'quick-busi163'  # the grid the index shows: real data, complete
CHECK = """<script>
window.addEventListener('load', () => {  // what tests/test_site.py reads: images that did not load, out of all
  const imgs = [...document.images], bad = imgs.filter(i => !i.complete || i.naturalWidth === 0);
  document.body.dataset.images = `${imgs.length - bad.length}/${imgs.length}`;
  document.body.dataset.broken = bad.map(i => (i.getAttribute('src') || '').slice(0, 80)).join(' ');
});
</script>"""
CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
line-height:1.5;color:#222}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.88rem}
pre{background:#f6f8fa;padding:.6rem .8rem;overflow-x:auto;border-radius:4px}table{border-collapse:collapse;font-size:.9rem}
td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}th{background:#f0f0f0}img{max-width:100%}
nav{display:flex;gap:1.5rem;border-bottom:1px solid #ddd;padding-bottom:.5rem;margin-bottom:1rem}
.jp-InputArea,.input{margin:.5rem 0}.jp-OutputArea,.output{margin:.2rem 0 1rem 1rem}.jp-InputPrompt,.jp-OutputPrompt{display:none}
"""


def notebooks() -> list[Path]:
    "The notebooks in reading order (their numbered names), the experiment and Table 4 notebooks last."
    return sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))


def title_of(nb: dict, fallback: str) -> tuple[str, str]:
    "(title, one-line description) from the notebook's first `# Title` and `> description` lines."
    for c in nb['cells']:
        if c['cell_type'] != 'markdown': continue
        src = ''.join(c['source'])
        t = re.search(r'^#\s+(.+)$', src, re.M)
        if t:
            d = re.search(r'^>\s*(.+)$', src, re.M)
            return t.group(1).strip(), (d.group(1).strip() if d else '')
    return fallback, ''


def page(title: str, body: str, nav: str = '') -> str:
    pyg = __import__('pygments.formatters', fromlist=['HtmlFormatter']).HtmlFormatter().get_style_defs('.highlight')
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)} - kdbus</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}{pyg}</style></head>\n"
            f"<body>{nav}\n{body}\n{CHECK}\n</body></html>\n")


def notebook_page(p: Path, prev: Path | None, nxt: Path | None) -> str:
    "One notebook as HTML (nbconvert's `basic` template: no external script), with a navigation bar."
    from nbconvert import HTMLExporter
    import nbformat
    nb = nbformat.read(str(p), as_version=4)
    cells = []
    for c in nb.cells:  # as nbdev's docs show them: `#| hide` cells left out, the `#|` directive lines dropped
        if c.cell_type == 'code':
            if re.search(r'^#\|\s*hide\s*$', c.source, re.M): continue
            c.source = re.sub(r'^#\|.*\n?', '', c.source, flags=re.M)
        cells.append(c)
    nb.cells = cells
    # nbconvert passes every highlighted code cell through bleach (`clean_html`), although Pygments has escaped it
    # already: for these notebooks (our own, trusted) the pages come out byte for byte the same without it, in 60 % of
    # the time (17.0 s -> 10.3 s for the whole site on 2 cores).
    ex = HTMLExporter(template_name='basic', exclude_input_prompt=True, exclude_output_prompt=True,
                      filters={'clean_html': lambda s: s.decode() if isinstance(s, bytes) else str(s)})
    body, _ = ex.from_notebook_node(nb)
    link = lambda q, s: f'<a href="{q.stem}.html">{s} {html.escape(q.stem)}</a>' if q else '<span></span>'
    nav = f'<nav><a href="index.html">kdbus: index</a>{link(prev, "previous:")}{link(nxt, "next:")}</nav>'
    return page(title_of(json.loads(p.read_text()), p.stem)[0], body, nav)


def index_page(paths: list[Path], out: Path) -> str:
    import mistune
    md = mistune.create_markdown(plugins=['table'])
    rows = []
    for p in paths:
        t, d = title_of(json.loads(p.read_text()), p.stem)
        rows.append(f'<li><a href="{p.stem}.html">{html.escape(t)}</a> <code>{p.name}</code>'
                    + (f'<br><small>{html.escape(d)}</small>' if d else '') + '</li>')
    table4 = re.sub(r'^#.*\n', '', (RESULTS / 'table4.md').read_text(), count=1)  # its own title: the heading below says it
    (out / 'img').mkdir(exist_ok=True)
    shutil.copy(RESULTS / 'figure2.png', out / 'img' / 'figure2.png')
    body = f"""<h1>kdbus</h1>
<p>Knowledge distillation for breast-ultrasound lesion segmentation: a reproducible, Jupyter-first companion to
Behboodi B., Brooks R., Rivaz H. <em>Optimizing knowledge distillation for efficient breast ultrasound image
segmentation: insights and performance enhancement.</em> Artificial Intelligence in Health 2(2), 2025.
The paper distils a large U-Net teacher into a U-Net student of about 0.82 M parameters along three paths
(the logits <code>L</code>, a hidden layer <code>H</code>, a hidden layer through a regressor <code>HReg</code>), with MSE or
KL divergence, and with weak or strong augmentation of the teacher's view: the twelve experiments of its Table 3,
beside the teacher and the student trained alone (Table 4). kdbus runs each of them as one execution of a
notebook, on the paper's data (UDIAT, from your folder), BUSI, or an embedded synthetic set.</p>
<h2>The two commands</h2>
<pre><code>make run     # one experiment: papermill nbs/run.ipynb runs/run.ipynb -p loss kld (the paper's best student, L_KLD_WAug)
make test    # the test command (CI runs exactly this)</code></pre>
<h2>Table 4 on real data (busi-163, quick CPU profile, 3 folds)</h2>
<p>From <code>results/quick-busi163/table4.md</code> (<code>kdbus report results/quick-busi163</code>).</p>
{md(table4)}
<h2>Figure 2</h2>
<p>Contours of the teacher, the student and the KD students on test images (drawn without the images: BUSI's
images are not redistributed here).</p>
<img src="img/figure2.png" alt="Figure 2: predicted contours of each model">
<h2>The notebooks, in reading order</h2>
<ol>{''.join(rows)}</ol>"""
    return page('kdbus', body)


def build(out: Path) -> list[Path]:
    "Write the site into `out` (replaced whole); return the pages written."
    paths = notebooks()
    missing = [p.name for p in paths if not any(c.get('outputs') for c in json.loads(p.read_text())['cells'] if c['cell_type'] == 'code')]
    if missing: raise SystemExit(f"docsite.py: {', '.join(missing)} have no outputs: run `make book` first")
    if out.exists():
        if not (out / 'index.html').exists() and any(out.iterdir()):
            raise SystemExit(f"docsite.py: {out} exists and is not a site built by this script (no index.html): choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    written = [out / 'index.html']
    written[0].write_text(index_page(paths, out))
    for i, p in enumerate(paths):
        f = out / f'{p.stem}.html'
        f.write_text(notebook_page(p, paths[i - 1] if i else None, paths[i + 1] if i + 1 < len(paths) else None))
        written.append(f)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', type=Path, default=ROOT / '_site', help='folder of the site (default: _site/, not committed)')
    a = ap.parse_args(argv)
    pages = build(a.out)
    print(f"{len(pages)} pages in {a.out}: open {a.out / 'index.html'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
