"""Cells a reader can follow (issue 12): every code cell of every notebook keeps its lines to 88 characters, holds
one statement per line (no `a; b`), imports only what the notebook uses, and is committed without outputs.

Pure parsing (json + ast): nothing is executed, so this runs in well under a second."""
import ast
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import book_tools  # noqa: E402

WIDTH = 88  # the longest source line of a code cell (characters, without the newline)
NOTEBOOKS = book_tools.toc_notebooks() + [ROOT / "book" / "_template.ipynb"]


def _code_cells(path: Path) -> list[tuple[int, dict]]:
    """(index among all the notebook's cells, cell) of every code cell."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(i, c) for i, c in enumerate(cells) if c["cell_type"] == "code"]


def _sources(path: Path) -> list[tuple[int, str]]:
    return [(i, "".join(c["source"])) for i, c in _code_cells(path)]


def _where(name: str, index: int, lineno: int, source: str) -> str:
    return f"{name}, cell {index}, line {lineno}: {source.split(chr(10))[lineno - 1]}"


def long_lines(name: str, sources) -> list[str]:
    return [f"{_where(name, i, n, src)}  ({len(line)} > {WIDTH} characters)"
            for i, src in sources for n, line in enumerate(src.split("\n"), 1) if len(line) > WIDTH]


def chained_statements(name: str, sources) -> list[str]:
    """Statements joined by `;`: two statements of one body where the second starts on the line the first ends on
    (a `;` inside a string is no statement separator, and `if x: y` is one compound statement)."""
    problems = []
    for i, src in sources:
        for node in ast.walk(ast.parse(src)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                body = getattr(node, field, None)
                if not isinstance(body, list):
                    continue
                for first, second in zip(body, body[1:]):
                    if isinstance(first, ast.stmt) and second.lineno == first.end_lineno:
                        problems.append(f"{_where(name, i, second.lineno, src)}  (statements chained with ';')")
    return problems


def unused_imports(name: str, sources) -> list[str]:
    """Names bound by `import x`, `import x as y` or `from x import y` that no code cell of the notebook reads: a
    use is an `ast.Name` anywhere (the root of an attribute chain `x.y.z` is one, and so are names in f-strings)."""
    used, imported = set(), []
    for i, src in sources:
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                imported += [(i, node.lineno, a.asname or a.name.split(".")[0], src) for a in node.names
                             if a.name != "*"]
    return [f"{_where(name, i, lineno, src)}  ('{bound}' is never used in this notebook)"
            for i, lineno, bound, src in imported if bound not in used]


def _ids(path):
    return path.name


def _fail(problems: list[str]):
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_every_code_cell_parses(path):
    problems = []
    for i, src in _sources(path):
        try:
            ast.parse(src)
        except SyntaxError as error:
            problems.append(f"{path.name}, cell {i}, line {error.lineno}: {error.msg}: {error.text}")
    _fail(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_code_lines_are_at_most_88_characters(path):
    _fail(long_lines(path.name, _sources(path)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_no_statements_chained_with_semicolons(path):
    _fail(chained_statements(path.name, _sources(path)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_every_import_is_used(path):
    _fail(unused_imports(path.name, _sources(path)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_no_outputs_and_no_execution_counts_are_committed(path):
    _fail([f"{path.name}, cell {i}: {len(c['outputs'])} output(s), execution_count {c['execution_count']}"
           for i, c in _code_cells(path) if c["outputs"] or c["execution_count"] is not None])


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 7 and all(p.is_file() for p in NOTEBOOKS)
    assert {p.name for p in NOTEBOOKS} >= {"results.ipynb", "_template.ipynb"}


# --- the checks catch what they should, and only that


def test_the_checks_catch_a_bad_cell():
    bad = [(3, 'import itertools\nimport numpy as np\nx = np.ones(2); print(x)\n' + "y = 1  # " + "z" * 80)]
    assert [p.split(":")[0] for p in long_lines("nb", bad)] == ["nb, cell 3, line 4"]
    assert chained_statements("nb", bad) == ["nb, cell 3, line 3: x = np.ones(2); print(x)  (statements chained "
                                             "with ';')"]
    assert unused_imports("nb", bad) == ["nb, cell 3, line 1: import itertools  ('itertools' is never used in "
                                         "this notebook)"]
    nested = [(0, "for i in range(2):\n    a = i; b = i\nelse:\n    c = 1; d = 2\n")]
    assert [p.split(":")[0] for p in chained_statements("nb", nested)] == ["nb, cell 0, line 2", "nb, cell 0, line 4"]


def test_the_checks_accept_a_good_cell():
    good = [(1, 'import torch\nfrom tqdm.auto import tqdm\nimport os.path\n'
                's = "a; b"\nif s: print(s)\nprint(f"{tqdm}", os.path.sep)'),
            (2, "torch.ones(1)")]  # a name imported in one cell and used in another
    assert long_lines("nb", good) == chained_statements("nb", good) == unused_imports("nb", good) == []
