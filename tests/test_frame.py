"""The book's frame: the toc, the chapter shape every notebook follows, the citations, and the build helpers."""
import ast
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import book_tools  # noqa: E402

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = book_tools.toc_notebooks()
SHAPED = CHAPTERS + [ROOT / "book" / "_template.ipynb"]
# the config cell's variable: not `P`, the letter of the priors P_D, P_P in the prose
CONFIG_VARIABLE = "cfg"
BADGE = re.compile(r"\[!\[Open In Colab\]\((?P<image>[^)]+)\)\]\((?P<link>[^)]+)\)")
CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")


def _cells(path):
    return nbformat.read(path, as_version=4).cells


def _setup_cell(cells):
    tagged = [c for c in cells if "remove-cell" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell is tagged remove-cell (the Colab setup cell)"
    return tagged[0]


def _config_cell_index(cells):
    """Index of the visible code cell that does `import lt_utils as lt`, `cfg = lt.profile(...)` and shows `cfg`."""
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or "remove-cell" in cell.metadata.get("tags", []):
            continue
        tree = ast.parse(cell.source)
        imports = any(isinstance(n, ast.Import) and any(a.name == "lt_utils" and a.asname == "lt" for a in n.names)
                      for n in tree.body)
        assigns = any(isinstance(n, ast.Assign) and [getattr(t, "id", None) for t in n.targets] == [CONFIG_VARIABLE]
                      and isinstance(n.value, ast.Call) and ast.unparse(n.value.func) == "lt.profile"
                      for n in tree.body)
        shows = bool(tree.body) and isinstance(tree.body[-1], ast.Expr) and ast.unparse(tree.body[-1]) == CONFIG_VARIABLE
        if imports and assigns and shows:
            return i
    raise AssertionError("no config cell: `import lt_utils as lt`, `cfg = lt.profile()`, `cfg`")


# --- toc and config


def test_every_toc_file_exists_and_lives_in_book():
    entries = book_tools.toc_entries(TOC)
    assert entries[0] == "book/intro"
    for entry in entries:
        assert entry.startswith("book/"), entry
        assert any((ROOT / f"{entry}{ext}").is_file() for ext in (".ipynb", ".md")), f"{entry} is missing"
    assert len(set(entries)) == len(entries), "a file is listed twice"


def test_every_page_in_book_is_in_the_toc():
    listed = {(ROOT / e).with_suffix("") for e in book_tools.toc_entries(TOC)}
    pages = [p for p in (ROOT / "book").glob("*") if p.suffix in (".ipynb", ".md") and not p.name.startswith("_")]
    orphans = [p.name for p in pages if p.with_suffix("") not in listed]
    assert not orphans, f"pages missing from _toc.yml (they would be neither built nor tested): {orphans}"


def test_config_fails_on_errors_and_builds_only_the_toc():
    execute = CONFIG["execute"]
    assert execute["allow_errors"] is False and execute["raise_on_error"] is True
    assert execute["execute_notebooks"] in ("force", "cache", "auto")
    assert CONFIG["only_build_toc_files"] is True
    for pattern in ("_build", ".venv", "**/_template.ipynb"):
        assert pattern in CONFIG["exclude_patterns"]
    assert {"dollarmath", "amsmath"} <= set(CONFIG["parse"]["myst_enable_extensions"])
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert (ROOT / CONFIG["bibtex_bibfiles"][0]).is_file()
    book_tools.repository(CONFIG)  # a github URL


# --- chapter shape


@pytest.mark.parametrize("path", SHAPED, ids=lambda p: p.name)
def test_chapter_has_title_badge_and_abstract(path):
    first = _cells(path)[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "the first cell starts with the title"
    badge = BADGE.search(first.source)
    assert badge, "the title cell has an Open-in-Colab badge"
    assert badge["image"] == book_tools.BADGE_IMAGE
    assert badge["link"] == book_tools.colab_link(path.relative_to(ROOT), CONFIG), \
        "the badge must point at this notebook in _config.yml's repository: run `make sync-colab`"
    abstract = BADGE.sub("", first.source.split("\n", 1)[1])
    assert len(abstract.split()) >= 15, "a short abstract follows the badge"


@pytest.mark.parametrize("path", SHAPED, ids=lambda p: p.name)
def test_setup_cell_installs_lt_utils_only_on_colab(path, monkeypatch):
    cells = _cells(path)
    setup = _setup_cell(cells)
    assert cells.index(setup) == 1, "the setup cell comes right after the title"
    assert not any(line.lstrip().startswith(("!", "%")) for line in setup.source.splitlines()), "plain Python"
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: calls.append((a, kw)))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(setup.source, "setup-cell", "exec"), {})
    assert calls == [], "outside Colab the setup cell does nothing"

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(compile(setup.source, "setup-cell", "exec"), {})
    assert len(calls) == 1
    args = calls[0][0][0]
    assert args[1:4] == ["-m", "pip", "install"]
    assert args[-1] == book_tools.install_spec(CONFIG), "installs lt_utils from _config.yml's repository"
    assert calls[0][1].get("check") is True, "a failed install must stop the notebook"


@pytest.mark.parametrize("path", SHAPED, ids=lambda p: p.name)
def test_config_cell_summary_and_exercises(path):
    cells = _cells(path)
    config_at = _config_cell_index(cells)
    assert config_at == 2, "the config cell follows the setup cell"
    headings = [line.strip() for c in cells[config_at:] if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("## ")]
    assert "## Summary" in headings and "## Exercises" in headings
    assert headings.index("## Summary") < headings.index("## Exercises") == len(headings) - 1, \
        "Summary, then Exercises, closes the chapter"


@pytest.mark.parametrize("path", SHAPED, ids=lambda p: p.name)
def test_notebook_is_valid_and_uses_python3_kernel(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_colab_links_are_in_sync_with_config():
    assert book_tools.sync_colab(check=True) == [], "run `make sync-colab`"


# --- citations


def _bib():
    from pybtex.database import parse_file

    return parse_file(str(ROOT / "references.bib"))


def test_bibliography_entries_are_complete():
    bib = _bib()
    assert len(bib.entries) >= 14
    for key, entry in bib.entries.items():
        assert entry.fields.get("title"), key
        assert entry.fields.get("year", "").isdigit(), key
        assert entry.persons.get("author"), key
    for key in ("chen2025rethinking", "shi2024lift", "zhu2023gla", "menon2021logit", "radford2021clip",
                "ilharco2021openclip", "xu2024metaclip", "chen2022adaptformer", "jia2022vpt", "hu2022lora",
                "tang2020tde", "liu2019oltr", "ren2020balanced", "pearl2009causality"):
        assert key in bib.entries, key


def test_every_citation_in_the_book_exists():
    keys = set(_bib().entries)
    used = {}
    for path in sorted((ROOT / "book").glob("*")):
        if path.suffix == ".md":
            texts = [path.read_text()]
        elif path.suffix == ".ipynb":
            texts = [c.source for c in _cells(path) if c.cell_type == "markdown"]
        else:
            continue
        for text in texts:
            for group in CITE.findall(text):
                for key in group.split(","):
                    used.setdefault(key.strip(), path.name)
    assert used, "the book cites something"
    missing = {k: where for k, where in used.items() if k not in keys}
    assert not missing, f"cited but not in references.bib: {missing}"


# --- the build helpers behind the Makefile


def _mini_book(root):
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text((ROOT / "_config.yml").read_text())
    (root / "references.bib").write_text("")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/b\n  - file: book/a\n")
    (root / "book" / "intro.md").write_text("# Intro\n")
    for name in ("a", "b"):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {name}"),
                                             nbformat.v4.new_code_cell("1 + 1")])
        nbformat.write(nb, root / "book" / f"{name}.ipynb")
    return root


def test_toc_notebooks_follow_toc_order_and_missing_files_are_named(tmp_path):
    root = _mini_book(tmp_path)
    assert [p.name for p in book_tools.toc_notebooks(root)] == ["b.ipynb", "a.ipynb"]
    (root / "book" / "a.ipynb").unlink()
    with pytest.raises(FileNotFoundError, match="book/a"):
        book_tools.toc_notebooks(root)


def test_stage_turns_execution_off_and_check_catches_stale_or_unexecuted_copies(tmp_path):
    root = _mini_book(tmp_path)
    dest = book_tools.stage(root / "_build" / "executed", root)
    staged = yaml.safe_load((dest / "_config.yml").read_text())
    assert staged["execute"]["execute_notebooks"] == "off"
    assert staged["execute"]["raise_on_error"] is True
    assert (dest / "book" / "intro.md").is_file() and (dest / "_toc.yml").is_file()

    problems = book_tools.check_executed(dest, root)
    assert len(problems) == 2 and all("not executed" in p for p in problems)

    for name in ("a", "b"):  # what nbmake --overwrite leaves behind
        path = dest / "book" / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        nb.cells[1].execution_count = 1
        nb.cells[1].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
        nbformat.write(nb, path)
    assert book_tools.check_executed(dest, root) == []

    nb = nbformat.read(root / "book" / "a.ipynb", as_version=4)
    nb.cells[1].source = "1 + 2"
    nbformat.write(nb, root / "book" / "a.ipynb")
    assert book_tools.check_executed(dest, root) == ["book/a.ipynb: changed since it was executed."]


def test_stage_refuses_a_folder_outside_the_repository(tmp_path):
    root = _mini_book(tmp_path / "repo")
    with pytest.raises(ValueError, match="inside the repository"):
        book_tools.stage(tmp_path / "elsewhere", root)


def test_sync_colab_rewrites_badges_and_install_lines(tmp_path):
    root = _mini_book(tmp_path)
    config = (root / "_config.yml").read_text().replace(
        "https://github.com/lt-bias-book/foundation-lt-book", "https://github.com/someone/fork")
    (root / "_config.yml").write_text(config)
    template = nbformat.read(ROOT / "book" / "_template.ipynb", as_version=4)
    nbformat.write(template, root / "book" / "c.ipynb")

    assert [p.name for p in book_tools.sync_colab(root, check=True)] == ["c.ipynb"]
    book_tools.sync_colab(root)
    cells = _cells(root / "book" / "c.ipynb")
    release = CONFIG["repository"]["release"]  # the badge and the install are pinned to the release
    assert f"https://colab.research.google.com/github/someone/fork/blob/{release}/book/c.ipynb" in cells[0].source
    assert f"lt_utils @ git+https://github.com/someone/fork@{release}" in _setup_cell(cells).source
    assert book_tools.sync_colab(root, check=True) == []


def test_sync_colab_points_an_old_badge_at_the_books_own_image(tmp_path):
    root = _mini_book(tmp_path)
    template = nbformat.read(ROOT / "book" / "_template.ipynb", as_version=4)
    template.cells[0].source = template.cells[0].source.replace(
        book_tools.BADGE_IMAGE, "https://colab.research.google.com/assets/colab-badge.svg")
    nbformat.write(template, root / "book" / "c.ipynb")
    book_tools.sync_colab(root)
    assert f"[![Open In Colab]({book_tools.BADGE_IMAGE})](" in _cells(root / "book" / "c.ipynb")[0].source


def test_the_badge_image_is_in_the_book_and_is_an_svg():
    """The badge is served by the book itself (a page read offline shows it, `make check-html` loads it)."""
    image = ROOT / "book" / book_tools.BADGE_IMAGE
    assert image.is_file() and image.read_text().lstrip().startswith("<svg")


def test_repository_url_must_be_github():
    with pytest.raises(ValueError, match="repository.url"):
        book_tools.repository({"repository": {"url": "https://example.org/x"}})


def _glue_output(name: str, value: str):
    return nbformat.v4.new_output("display_data", data={"application/papermill.record/text/plain": value},
                                  metadata={"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}})


def test_glued_values_of_two_builds_are_compared(tmp_path, capsys, monkeypatch):
    root = _mini_book(tmp_path)
    monkeypatch.setattr(book_tools, "ROOT", root)
    builds = []
    for value in ("'1.0'", "'2.0'"):
        dest = book_tools.stage(tmp_path / f"build{value[1]}", root)
        copy = dest / "book" / "a.ipynb"
        nb = nbformat.read(copy, as_version=4)
        nb.cells[1].outputs = [_glue_output("gain", value), _glue_output("groups", "'35/35/30'")]
        nbformat.write(nb, copy)
        builds.append(dest)
    assert book_tools.glued_values(builds[0], root) == {"a:gain": "'1.0'", "a:groups": "'35/35/30'"}
    assert book_tools.main(["glued", str(builds[0]), "--compare", str(builds[0])]) == 0
    capsys.readouterr()
    assert book_tools.main(["glued", str(builds[0]), "--compare", str(builds[1])]) == 1
    assert json.loads(capsys.readouterr().out) == {"a:gain": ["'1.0'", "'2.0'"]}
