"""Every figure of the book is captioned, numbered and pointed at from the text.

A figure is a code cell that calls ``plt.subplots(`` or ``plt.figure(``. The markdown cell right after it is its
caption and starts with ``**Figure N.K.**``: N is the chapter (the leading digits of the notebook's file name, ``R``
for results.ipynb), K counts the notebook's figures from 1 in order. A caption is static text (what is plotted and
what to look at); the numbers of a run stay in the computed prose cells. The text (a markdown cell, or a string of a
code cell such as a hidden ``lt.show_markdown`` prose cell) refers to each figure as plain "Figure N.K" (no link
syntax and no MyST role: the notebooks are also read raw on Colab).

Pure parsing (json + ast + re): nothing is executed, so this runs in well under a second."""
import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import book_tools  # noqa: E402
from code_names import cells as _cells  # noqa: E402
from code_names import source as _source  # noqa: E402

NOTEBOOKS = book_tools.toc_notebooks()
FIGURE_CALL = re.compile(r"\bplt\.(?:subplots|figure)\(")
CAPTION = re.compile(r"\*\*Figure (?P<label>[0-9]+|[A-Z])\.(?P<number>[0-9]+)\.\*\*")
REFERENCE = re.compile(r"\bFigure\s+(?P<label>[0-9]+|[A-Z])\.(?P<number>[0-9]+)\b")


def chapter_label(path: Path) -> str:
    """N of "Figure N.K": the notebook's leading digits as a number ("1" for 01_...), else its first letter, upper
    case ("R" for results.ipynb)."""
    digits = re.match(r"\d+", path.stem)
    return str(int(digits.group())) if digits else path.stem[0].upper()


def is_figure(cell) -> bool:
    return cell["cell_type"] == "code" and bool(FIGURE_CALL.search(_source(cell)))


def caption_of(cell):
    """The (label, number) a markdown cell's caption head names, or None when the cell is no caption."""
    if cell["cell_type"] != "markdown":
        return None
    head = CAPTION.match(_source(cell).lstrip())
    return (head["label"], int(head["number"])) if head else None


def _drawn_under_a_condition(source: str) -> bool:
    """Whether the figure is created inside an `if` (drawn in some runs only)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If):
            if any(FIGURE_CALL.search(ast.unparse(child)) for child in node.body + node.orelse):
                return True
    return False


def figure_problems(name: str, label: str, cells: list[dict]) -> list[str]:
    """Figures without a caption right after them, captions with the wrong number, captions after no figure, and
    conditional figures whose caption does not say when they are drawn."""
    problems, count = [], 0
    for i, cell in enumerate(cells):
        if is_figure(cell):
            count += 1
            want = f"**Figure {label}.{count}.**"
            after = cells[i + 1] if i + 1 < len(cells) else None
            found = caption_of(after) if after is not None else None
            if found is None:
                problems.append(f"{name}, cell {i}: this code cell draws a figure but no caption follows it: insert "
                                f"a markdown cell right after it that starts with {want} and says what is plotted "
                                "and what to look at.")
            elif found != (label, count):
                problems.append(f"{name}, cell {i + 1}: the caption says **Figure {found[0]}.{found[1]}.** but this "
                                f"is figure {count} of the notebook: renumber it {want} (and its references).")
            elif _drawn_under_a_condition(_source(cell)) and "only" not in _source(after):
                problems.append(f"{name}, cell {i + 1}: the figure of cell {i} is drawn only under a condition: say "
                                "so in its caption (e.g. 'in the lab profile only').")
        elif caption_of(cell) is not None and not (i > 0 and is_figure(cells[i - 1])):
            label_, number = caption_of(cell)
            problems.append(f"{name}, cell {i}: caption **Figure {label_}.{number}.** follows no figure cell: move it "
                            "right after the code cell that draws its figure, or delete it.")
    return problems


def _texts(cell) -> list[str]:
    """The text of a cell that may refer to a figure: a markdown cell's source (a caption without its own head), a
    code cell's string constants (f-strings included), whitespace collapsed."""
    if cell["cell_type"] == "markdown":
        text = _source(cell)
        if caption_of(cell) is not None:
            text = CAPTION.sub("", text.lstrip(), count=1)
        return [" ".join(text.split())]
    if cell["cell_type"] != "code":
        return []
    try:
        tree = ast.parse(_source(cell))
    except SyntaxError:
        return []
    return [" ".join(node.value.split()) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def figures_of(label: str, cells: list[dict]) -> dict:
    """(label, number) -> index of the caption cell, for every caption of one notebook."""
    return {caption_of(c): i for i, c in enumerate(cells) if caption_of(c) is not None and caption_of(c)[0] == label}


def reference_problems(name: str, label: str, cells: list[dict], known: set) -> list[str]:
    """Figures of this notebook that no other cell of it refers to, and references to figures that do not exist
    (``known``: the (label, number) of every caption of the book)."""
    problems = []
    referenced = set()
    for i, cell in enumerate(cells):
        for text in _texts(cell):
            for ref in REFERENCE.finditer(text):
                key = (ref["label"], int(ref["number"]))
                if key not in known:
                    problems.append(f"{name}, cell {i}: refers to Figure {key[0]}.{key[1]}, which no caption of the "
                                    "book numbers: fix the number, or caption the figure it means.")
                elif caption_of(cell) is None:  # a caption does not count as a reference to a figure
                    referenced.add(key)
    for key, at in figures_of(label, cells).items():
        if key not in referenced:
            problems.append(f"{name}, cell {at}: Figure {key[0]}.{key[1]} is never referred to: name it "
                            f"(\"Figure {key[0]}.{key[1]}\") in the markdown (or prose cell) that discusses it.")
    return problems


def _known() -> set:
    return {key for path in NOTEBOOKS for key in figures_of(chapter_label(path), _cells(path))}


def _fail(problems: list[str]):
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_has_a_numbered_caption_right_after_it(path):
    _fail(figure_problems(path.name, chapter_label(path), _cells(path)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_is_referred_to_and_every_reference_exists(path):
    _fail(reference_problems(path.name, chapter_label(path), _cells(path), _known()))


def test_the_book_has_figures_and_the_labels_follow_the_file_names():
    assert {chapter_label(p) for p in NOTEBOOKS} >= {"1", "2", "3", "4", "5", "R"}
    counts = {p.name: sum(is_figure(c) for c in _cells(p)) for p in NOTEBOOKS}
    assert sum(counts.values()) >= 10, counts
    assert chapter_label(Path("book/01_data_imbalance.ipynb")) == "1"
    assert chapter_label(Path("book/results.ipynb")) == "R"


# --- the checks catch what they should, and only that


def _md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)}


def _code(text):
    return {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": text.splitlines(keepends=True)}


FIGURE = "fig, ax = plt.subplots()\nax.plot([1, 2])\nplt.show()"


def _good_notebook():
    return [_md("# Chapter\n\nFigure 3.1 shows a line; Figure 3.2 another."),
            _code(FIGURE),
            _md("**Figure 3.1.** A line: x against y."),
            _code("x = 1"),
            _code("plt.figure(figsize=(3, 3))\nplt.plot([2, 1])\nplt.show()"),
            _md("**Figure 3.2.** Another line."),
            _code('lt.show_markdown(f"""\nThe line of Figure\n3.2 falls.\n""")')]


def test_the_checks_accept_a_good_notebook():
    cells = _good_notebook()
    known = set(figures_of("3", cells))
    assert known == {("3", 1), ("3", 2)}
    assert figure_problems("nb", "3", cells) == []
    assert reference_problems("nb", "3", cells, known) == []
    # a reference inside a prose cell's string counts, even wrapped over two lines
    cells[0] = _md("# Chapter\n\nFigure 3.1 shows a line.")
    assert reference_problems("nb", "3", cells, known) == []


def test_the_checks_catch_a_missing_caption():
    cells = _good_notebook()
    del cells[2]
    problems = figure_problems("nb", "3", cells)
    assert len(problems) == 1 and problems[0].startswith("nb, cell 1: this code cell draws a figure but no caption")
    assert "starts with **Figure 3.1.**" in problems[0]
    # the uncaptioned figure still counts: the next one stays Figure 3.2
    cells.append(_code(FIGURE))
    assert figure_problems("nb", "3", cells)[1].startswith("nb, cell 6: this code cell draws a figure")
    assert "**Figure 3.3.**" in figure_problems("nb", "3", cells)[1]


def test_the_checks_catch_a_wrong_number_and_a_wrong_chapter():
    cells = _good_notebook()
    cells[5] = _md("**Figure 3.3.** Another line.")
    assert figure_problems("nb", "3", cells) == [
        "nb, cell 5: the caption says **Figure 3.3.** but this is figure 2 of the notebook: renumber it "
        "**Figure 3.2.** (and its references)."]
    assert len(figure_problems("nb", "4", _good_notebook())) == 2  # the label is the chapter's


def test_the_checks_catch_a_caption_after_no_figure():
    cells = _good_notebook()
    cells.insert(4, _md("**Figure 3.9.** A caption astray."))
    problems = figure_problems("nb", "3", cells)
    assert "nb, cell 4: caption **Figure 3.9.** follows no figure cell: move it right after the code cell that " \
           "draws its figure, or delete it." in problems


def test_the_checks_catch_a_dangling_or_missing_reference():
    cells = _good_notebook()
    known = set(figures_of("3", cells))
    cells[0] = _md("# Chapter\n\nFigure 3.1 shows a line; Figure 3.7 does not exist.")
    cells[6] = _code('lt.show_markdown("no figure named here")  # Figure 3.2 in a comment is no reference')
    problems = reference_problems("nb", "3", cells, known)
    assert problems[0].startswith("nb, cell 0: refers to Figure 3.7, which no caption of the book numbers")
    assert problems[1].startswith("nb, cell 5: Figure 3.2 is never referred to")
    assert len(problems) == 2
    # a figure named only in its own caption is not referred to
    cells[2] = _md("**Figure 3.1.** A line, as Figure 3.1 says.")
    cells[0] = _md("# Chapter")
    assert any(p.startswith("nb, cell 2: Figure 3.1 is never referred to")
               for p in reference_problems("nb", "3", cells, known))


def test_the_checks_catch_a_conditional_figure_whose_caption_hides_it():
    cells = [_md("See Figure 2.1."), _code("if lab:\n    " + FIGURE.replace("\n", "\n    ")),
             _md("**Figure 2.1.** A line.")]
    assert figure_problems("nb", "2", cells)[0].startswith("nb, cell 2: the figure of cell 1 is drawn only")
    cells[2] = _md("**Figure 2.1.** In the lab profile only: a line.")
    assert figure_problems("nb", "2", cells) == []
