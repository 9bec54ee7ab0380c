"""DESIGN.md is the contract: the layering rule (imports only go down), the front door with its signatures, the
chapter -> functions map, and docstrings of the book-facing functions. Each test reads DESIGN.md and the code."""
import ast
import gc
import inspect
import json
import re
import weakref
from pathlib import Path

import pytest

import lt_utils as lt

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lt_utils"
DESIGN = (ROOT / "DESIGN.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DESIGN, re.M | re.S)
    assert match, f"DESIGN.md has no section '## {title}'"
    return match.group(1)


def _layers() -> dict[str, int]:
    layers = {}
    for level, modules in re.findall(r"^\| L(\d+) \| ([^|]+) \|", _section("Layers"), re.M):
        for module in re.findall(r"`(\w+)`", modules):
            assert module not in layers, f"{module} is in two layers of DESIGN.md"
            layers[module] = int(level)
    return layers


def _imports(path: Path):
    """(imported lt_utils module or None, top level?, line, source line) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x, y
                targets = [node.module] if node.module else [a.name for a in node.names]
            elif (node.module or "").startswith("lt_utils"):
                rest = node.module.split(".")[1:]
                targets = rest[:1] or [a.name for a in node.names]
            else:
                targets = [None]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".")[1] if a.name.startswith("lt_utils.") else None for a in node.names]
        else:
            continue
        for target in targets:
            yield target, id(node) in top, node.lineno, lines[node.lineno - 1]


def test_every_module_sits_in_one_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert set(_layers()) == modules


def test_imports_only_go_down():
    layers = _layers()
    upward = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "__init__":
            continue
        for target, _, line, _ in _imports(path):
            if target is not None and not layers[target] < layers[path.stem]:
                upward.append(f"{path.name}:{line} imports {target} (L{layers[target]} from L{layers[path.stem]})")
    assert not upward, "imports that do not go down:\n" + "\n".join(upward)


def test_function_level_imports_are_only_optional_packages():
    hidden = []
    for path in sorted(PACKAGE.glob("*.py")):
        for target, top_level, line, source in _imports(path):
            if not top_level and (target is not None or "# optional:" not in source):
                hidden.append(f"{path.name}:{line}: {source.strip()}")
    assert not hidden, "function-level imports (allowed only for optional packages, marked '# optional:'):\n" + \
        "\n".join(hidden)


def _front_door() -> dict[str, str]:
    """name -> documented signature ('' for constants and modules) from the front-door section."""
    entries = {}
    for entry in re.findall(r"^- `([^`]+)`", _section("The front door"), re.M):
        name = entry.split("(", 1)[0]
        entries[name] = entry[len(name):]
    return entries


def _plain_signature(obj) -> str:
    sig = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def test_import_freezes_what_it_allocated_and_later_garbage_is_still_collected():
    """``import lt_utils`` moves the objects of its imports out of the cyclic GC's reach (a kernel's shutdown then
    skips walking them); cycles made afterwards must still be freed."""
    assert gc.get_freeze_count() > 100_000  # torch alone leaves several hundred thousand

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    del a, b
    gc.collect()
    assert alive() is None


def test_front_door_is_what_design_lists():
    assert set(_front_door()) == set(lt.__all__)
    assert 30 <= len(lt.__all__) <= 42  # a small front door


@pytest.mark.parametrize("name", sorted(lt.__all__))
def test_front_door_signatures_match_design(name):
    obj = getattr(lt, name)
    documented = _front_door()[name]
    if inspect.isfunction(obj):
        assert documented == _plain_signature(obj), f"DESIGN.md lists {name}{documented}"
    else:
        assert documented == ""


def test_no_public_name_shadows_a_module():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    for name in lt.__all__:
        if name in modules:
            assert inspect.ismodule(getattr(lt, name)), f"lt.{name} shadows the module lt_utils.{name}"


@pytest.mark.parametrize("name", sorted(n for n in lt.__all__ if inspect.isfunction(getattr(lt, n))))
def test_book_facing_functions_document_args_returns_and_chapter(name):
    doc = inspect.getdoc(getattr(lt, name)) or ""
    has_params = bool(inspect.signature(getattr(lt, name)).parameters)
    assert "Returns:" in doc and ("Args:" in doc or not has_params), f"lt.{name} needs Args:/Returns:"
    assert re.search(r"\bchapters?\b", doc, re.I), f"lt.{name}'s docstring should say which chapter uses it"


def _chapter_map() -> dict[str, set[str]]:
    rows = re.findall(r"^\| `?([\w]+)`? \| ([^|]+) \|", _section("Chapter map"), re.M)
    return {chapter: set(re.findall(r"`([\w.]+)`", calls)) for chapter, calls in rows if chapter != "chapter"}


def _chapters():
    toc = (ROOT / "_toc.yml").read_text()
    return [ROOT / f"{f}.ipynb" for f in re.findall(r"file: (book/\S+)", toc) if (ROOT / f"{f}.ipynb").is_file()]


def test_chapter_map_matches_the_chapters():
    documented = _chapter_map()
    chapters = _chapters()
    assert chapters
    for nb in chapters:
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        called = set(re.findall(r"(?<![\w.])lt\.(\w+(?:\.\w+)?)", code))
        called = {c if c.split(".")[0] == "lab" else c.split(".")[0] for c in called}
        assert documented.get(nb.stem) == called, f"DESIGN.md's row for {nb.stem}"
    used = set().union(*documented.values())
    assert {n.split(".")[0] for n in used} >= set(lt.__all__), "a front-door name no chapter or exercise uses"
    for name in used:
        assert name.split(".")[0] in lt.__all__, f"{name} is not a front-door name"
