"""The executed notebooks (`make book`): every notebook committed with its outputs, none stale, within the size budget;
and the staleness check itself catches what it is for."""
import json, shutil, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import book  # noqa: E402  (tools/ is not a package)


def test_every_notebook_is_executed_up_to_date_and_shows_its_figures():
    problems = book.check(book.notebooks())
    assert not problems, "\n".join(problems) + "\nrun `make book` and commit the notebooks"


def test_a_changed_code_cell_or_lost_outputs_are_caught(tmp_path):
    src = book.NBS / "04_losses.ipynb"
    nb = json.loads(src.read_text())
    stale, bare = tmp_path / "04_losses.ipynb", tmp_path / "bare" / "04_losses.ipynb"
    code = next(c for c in nb["cells"] if c["cell_type"] == "code" and c["outputs"])
    code["source"] = ["x = 1  # an edit after make book\n"] + list(code["source"])
    stale.write_text(json.dumps(nb))
    bare.parent.mkdir()
    for c in nb["cells"]:
        if c["cell_type"] == "code": c["outputs"] = []
    bare.write_text(json.dumps(nb))
    assert [p for p in book.check([stale]) if p.startswith("04_losses")] == ["04_losses.ipynb: stale (its code or inputs changed since `make book`)"]
    assert "04_losses.ipynb: not executed (no outputs): run `make book`" in book.check([bare])
    fresh = tmp_path / "fresh" / "04_losses.ipynb"; fresh.parent.mkdir(); shutil.copy(src, fresh)
    assert not [p for p in book.check([fresh]) if p.startswith("04_losses")]


def test_a_changed_input_file_makes_its_notebook_stale(monkeypatch, tmp_path):
    nb = json.loads((book.NBS / "04_losses.ipynb").read_text())
    before = book.code_hash(nb, "04_losses.ipynb")
    (tmp_path / "t.csv").write_text("a\n1\n")
    monkeypatch.setattr(book, "ROOT", tmp_path)
    monkeypatch.setitem(book.INPUTS, "04_losses.ipynb", ["t.csv"])
    h1 = book.code_hash(nb, "04_losses.ipynb")
    (tmp_path / "t.csv").write_text("a\n2\n")
    assert len({before, h1, book.code_hash(nb, "04_losses.ipynb")}) == 3


def test_flagged_cells_are_skipped_like_nbdev_test():
    cell = lambda s, t="code": {"cell_type": t, "source": s}
    assert book.skipped(cell("#| notest\nslow_thing()")) and book.skipped(cell("#| slow\nx"))
    assert book.skipped(cell("#| eval: false\nx")) and book.skipped(cell("# Title", "markdown"))
    assert book.skipped(cell("import nbdev; nbdev.nbdev_export()"))
    assert not book.skipped(cell("#| export\ndef f(): pass")) and not book.skipped(cell("x = 1  # notest in a comment"))


def test_outputs_are_scrubbed_of_what_differs_between_machines():
    outs = [{"output_type": "stream", "name": "stderr", "text": "100%|####| 3/3 [00:01<00:00]"},
            {"output_type": "stream", "name": "stdout", "text": f"wrote {book.ROOT}/results/x.csv\n"},
            {"output_type": "execute_result", "data": {"text/plain": "<Foo at 0x7f3a2b1c4d50>"}, "metadata": {}}]
    got = book.scrub(outs)
    assert [o["output_type"] for o in got] == ["stream", "execute_result"]
    assert got[0]["text"] == "wrote .../results/x.csv\n" and got[1]["data"]["text/plain"] == "<Foo at 0x...>"
