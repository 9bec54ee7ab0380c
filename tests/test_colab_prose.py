"""The chapters read the same on Colab as in the book (issue 11).

The paragraphs about a run's numbers are *prose cells*: code cells that format the text from the variables the cells
above computed and show it with ``lt.show_markdown``. The book hides their code (tag ``remove-input``) and renders the
Markdown they output; Colab collapses them to their ``#@title`` (``cellView: form``). No Markdown cell keeps a myst-nb
``{glue:}`` role, which Colab would show as raw text. The Colab setup cell keeps the results cache on Google Drive, so
that every chapter, opened in a fresh runtime, reuses the runs of the chapters before it."""
import ast
import builtins
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import book_tools  # noqa: E402
from code_names import cells as _cells
from code_names import names
from code_names import source as _source

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
CHAPTERS = book_tools.toc_notebooks()
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))  # the toc's and the template
WIDTH = 88  # the longest source line of a prose cell or the setup cell


def _is_prose(cell) -> bool:
    return cell["cell_type"] == "code" and "lt.show_markdown(" in _source(cell)


def _prose(path):
    return [c for c in _cells(path) if _is_prose(c)]


def _setup(path):
    return next(c for c in _cells(path) if "remove-cell" in c["metadata"].get("tags", []))


def test_the_notebooks_are_found():
    assert len(CHAPTERS) >= 6 and any(p.name == "results.ipynb" for p in CHAPTERS)


@pytest.mark.parametrize("path", book_tools.toc_files(), ids=lambda p: p.name)
def test_no_glue_role_in_any_markdown(path):
    """A {glue:} role is raw text on Colab (and lt.glue is gone): numbers in the text come from prose cells."""
    if path.suffix == ".md":
        texts = [path.read_text()]
    else:
        texts = [_source(c) for c in _cells(path) if c["cell_type"] == "markdown"]
        assert not any("lt.glue(" in _source(c) for c in _cells(path) if c["cell_type"] == "code")
    assert not any("{glue" in text for text in texts), f"{path.name}: a {{glue:}} role in a Markdown cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prose_cells_are_hidden_in_the_book_and_collapsed_on_colab(path):
    for cell in _cells(path):
        hidden = "remove-input" in cell["metadata"].get("tags", [])
        if not (_is_prose(cell) or hidden):
            continue
        source = _source(cell)
        assert _is_prose(cell), f"{path.name}: only prose cells hide their code in the book:\n{source[:200]}"
        assert hidden, f"{path.name}: a prose cell is tagged remove-input (the book shows only its text)"
        assert cell["metadata"].get("cellView") == "form", f"{path.name}: a prose cell is a Colab form"
        assert source.startswith("#@title ") and len(source.split("\n", 1)[0]) > len("#@title "), \
            f"{path.name}: a prose cell starts with its Colab form title (#@title ...)"


@pytest.mark.parametrize("path", [p for p in CHAPTERS if p.stem[:2].isdigit()], ids=lambda p: p.name)
def test_every_numbered_chapter_states_its_numbers_in_prose_cells(path):
    titles = [_source(c).split("\n", 1)[0] for c in _prose(path)]
    assert any("shows" in t for t in titles), f"{path.name}: a 'What this run shows' prose cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_outputs_are_committed(path):
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: cell {i} has outputs"


LAB_PHRASES = ("the lab shows", "lab numbers", "in the lab")  # sentences true of the lab profile only
LAB_TESTS = ("cfg.name", "true")  # a branch on the profile, or on the true prior existing (only the lab knows it)


def _lab_only_texts(tree, guarded=False):
    """(text, guarded?) of every string constant of a prose cell; guarded: inside a branch on LAB_TESTS."""
    if isinstance(tree, (ast.If, ast.IfExp)):
        branch = guarded or any(t in ast.unparse(tree.test) for t in LAB_TESTS)
        yield from _lab_only_texts(tree.test, guarded)
        for part in (tree.body, tree.orelse):
            for child in (part if isinstance(part, list) else [part]):
                yield from _lab_only_texts(child, branch)
        return
    if isinstance(tree, ast.Constant) and isinstance(tree.value, str):
        yield " ".join(tree.value.split()).lower(), guarded
    for child in ast.iter_child_nodes(tree):
        yield from _lab_only_texts(child, guarded)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_wording_follows_the_profile(path):
    """'What the lab shows', 'lab numbers', 'in the lab ...' only in a branch on the profile (or on the true prior)."""
    found = 0
    for cell in _prose(path):
        for text, guarded in _lab_only_texts(ast.parse(_source(cell))):
            for phrase in LAB_PHRASES:
                if phrase in text:
                    found += 1
                    assert guarded, f"{path.name}: '{phrase}' must depend on the profile: {text[:120]}"
    assert found or not _prose(path), "the check sees the prose cells' strings"


def test_the_lab_wording_check_catches_an_unconditional_sentence():
    bad = ast.parse('lt.show_markdown(f"""\n**What the lab\nshows.** {x}\n""")')
    good = ast.parse('shows = "What the lab shows" if cfg.name == "lab" else "What this run shows"')
    assert [g for t, g in _lab_only_texts(bad) if "the lab shows" in t] == [False]
    assert [g for t, g in _lab_only_texts(good) if "the lab shows" in t] == [True]




@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prose_cells_read_only_what_the_cells_above_define(path):
    """Without running a chapter: every name a prose cell reads is bound above it (or by the cell itself)."""
    defined = set(dir(builtins)) | {"display"}  # IPython's display() is a builtin in a kernel
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse(_source(cell))
        bound, read = names(tree)
        if _is_prose(cell):
            missing = read - defined - bound
            assert not missing, f"{path.name}: prose cell {i} reads {sorted(missing)}, which no cell above defines"
            for line in _source(cell).splitlines():
                assert len(line) <= WIDTH, f"{path.name}: prose cell {i} has a line over {WIDTH} columns:\n{line}"
        defined |= bound


# --- the Colab setup cell: results kept on Google Drive, lt_utils at the release


def _run_setup(source, monkeypatch, keep=True, mount_fails=False):
    """Execute the setup cell as on Colab (a fake google.colab with a recording drive); return what it did."""
    events = []
    drive = types.ModuleType("google.colab.drive")

    def mount(folder):
        if mount_fails:
            raise RuntimeError("access declined")
        events.append(("mount", folder))

    drive.mount = mount
    colab = types.ModuleType("google.colab")
    colab.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    for name in ("LT_CACHE_DIR", "LT_DATA_ROOT"):  # recorded, so the test restores them whatever the cell sets
        monkeypatch.setenv(name, "unset-by-test")
        monkeypatch.delenv(name)
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: events.append(
        ("pip", args[-1], os.environ.get("LT_CACHE_DIR"), os.environ.get("LT_DATA_ROOT"))))
    if not keep:
        assert source.count("KEEP_ON_DRIVE = True") == 1
        source = source.replace("KEEP_ON_DRIVE = True", "KEEP_ON_DRIVE = False", 1)
    exec(compile(source, "setup-cell", "exec"), {})
    return events


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_setup_cell_keeps_results_on_drive_before_lt_utils_is_imported(path, monkeypatch):
    source = _source(_setup(path))
    assert source.startswith("KEEP_ON_DRIVE = True  #"), "the switch, with a comment, opens the setup cell"
    assert "import lt_utils" not in source  # the config cell imports it, after the environment is set
    assert all(len(line) <= WIDTH for line in source.splitlines())
    spec = book_tools.install_spec(CONFIG)

    events = _run_setup(source, monkeypatch)
    assert events == [("mount", "/content/drive"),
                      ("pip", spec, "/content/drive/MyDrive/lt_cache", "/content/drive/MyDrive/lt_data")]
    # the switch off: no Drive, the runtime's own folders
    assert _run_setup(source, monkeypatch, keep=False) == [("pip", spec, None, None)]
    # access declined: the chapter still runs, without the Drive folders
    assert _run_setup(source, monkeypatch, mount_fails=True) == [("pip", spec, None, None)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_config_cell_text_mentions_the_drive_switch(path):
    cells = _cells(path)
    config_at = next(i for i, c in enumerate(cells) if c["cell_type"] == "code" and "cfg = lt.profile(" in _source(c))
    text = _source(cells[config_at + 1])
    assert cells[config_at + 1]["cell_type"] == "markdown" and "`KEEP_ON_DRIVE" in text and "Google Drive" in text


def test_the_book_renders_the_prose_as_myst():
    """The prose cells output Markdown with $math$: myst-nb's default (CommonMark) would leave it as raw text."""
    assert CONFIG["sphinx"]["config"]["nb_render_markdown_format"] == "myst"
    assert {"dollarmath", "amsmath"} <= set(CONFIG["parse"]["myst_enable_extensions"])


def test_readme_and_intro_explain_running_on_colab():
    for path in (ROOT / "README.md", ROOT / "book" / "intro.md"):
        text = " ".join(path.read_text().split())
        assert "KEEP_ON_DRIVE" in text and "Google Drive" in text, path.name
        assert "release" in text, path.name  # Colab installs the release the book was built from
