"""Notebook cells for the tests that check chapters: a notebook's cells, a cell's source, and what a piece of
notebook code binds and reads."""
import ast
import json
from pathlib import Path


def cells(path: Path) -> list[dict]:
    """The cells of a notebook file, as JSON (nothing is executed)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["cells"]


def source(cell) -> str:
    """A cell's source as one string (nbformat stores a list of lines or a string)."""
    text = cell["source"]
    return text if isinstance(text, str) else "".join(text)


def names(tree) -> tuple[set[str], set[str]]:
    """(names a piece of code binds, names it reads) at any depth."""
    bound, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, (ast.Store, ast.Del)) else read).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound, read
