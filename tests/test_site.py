"""`make docs`: the site of the executed notebooks. Every page is written, every local link and image resolves, and
headless Chromium (Debian's `chromium`; skipped where it is not installed) renders the index and a notebook page
with all their images loaded."""
import re, shutil, subprocess, sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import docsite as kdsite  # noqa: E402  (tools/ is not a package)

class Refs(HTMLParser):
    "The href and src values of a page."
    def __init__(self):
        super().__init__(); self.refs = []
    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("href", "src") and v]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "_site"
    return out, kdsite.build(out)


def test_every_notebook_has_a_page_and_every_local_reference_resolves(site):
    out, pages = site
    assert {p.name for p in pages} == {"index.html"} | {f"{p.stem}.html" for p in kdsite.notebooks()}
    for page in pages:
        parser = Refs(); parser.feed(page.read_text())
        for ref in parser.refs:
            if re.match(r"(https?:|data:|mailto:|#)", ref): continue
            assert (page.parent / ref.split("#")[0]).is_file(), f"{page.name}: broken reference {ref!r}"
        assert "cdn" not in page.read_text().lower() or page.name != "index.html"


def test_index_holds_the_paper_commands_table4_figure2_and_the_reading_order(site):
    out, _ = site
    text = (out / "index.html").read_text()
    for needle in ("Behboodi", "make run", "make test", "<table", "L_KLD_WAug", 'src="img/figure2.png"', "02_augment.html"):
        assert needle in text, needle
    order = [m for m in re.findall(r'href="(\w+)\.html"', text)]
    assert order == [p.stem for p in kdsite.notebooks()]


def test_a_site_folder_of_something_else_is_not_deleted(tmp_path):
    keep = tmp_path / "mine"; keep.mkdir(); (keep / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not a site built by this script"):
        kdsite.build(keep)
    assert (keep / "notes.txt").read_text() == "mine"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

def render(page: Path, tmp: Path) -> tuple[str, Path]:
    "Headless Chromium's DOM of `page` after its load event, and a screenshot of it."
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}",
            "--virtual-time-budget=8000", "--window-size=1200,1800"]
    shot = tmp / f"{page.stem}.png"
    dom = subprocess.run(args + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    subprocess.run(args + [f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    return dom, shot


@pytest.mark.skipif(not CHROMIUM, reason="headless Chromium not installed (Debian: apt install chromium)")
@pytest.mark.parametrize("name", ["index", "02_augment"])
def test_chromium_renders_the_page_with_every_image(site, name, tmp_path):
    out, _ = site
    dom, shot = render(out / f"{name}.html", tmp_path)
    m = re.search(r'<body[^>]*data-images="(\d+)/(\d+)"', dom)
    assert m, f"{name}: the page's load event never ran: {dom[:500]!r}"
    loaded, total = map(int, m.groups())
    broken = re.search(r'data-broken="([^"]*)"', dom)
    assert total > 0 and loaded == total, f"{name}: {total - loaded} of {total} images did not load: {broken and broken.group(1)}"
    assert shot.is_file() and shot.stat().st_size > 20_000  # a rendered page, not a blank one
