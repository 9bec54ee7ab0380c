"""Small helpers behind the Makefile: which notebooks the toc lists, the scratch copy that nbmake executes, and
the Colab links derived from the ONE repository URL in _config.yml.

    python scripts/book_tools.py notebooks [--root DIR]   # toc notebooks, in toc order
    python scripts/book_tools.py stage DIR                # copy the book into DIR with execution turned off
    python scripts/book_tools.py check DIR                # DIR's notebooks are executed, error-free and current
    python scripts/book_tools.py sync-colab [--check]     # rewrite badges + Colab install lines from _config.yml
    python scripts/book_tools.py glued DIR [--compare DIR2]  # the numbers DIR's prose shows (or what differs)

The badges open a chapter from `repository.branch`; its setup cell installs lt_utils at `repository.release`, the
tag of the release the book was built from, so a later commit cannot change the code under a saved cache.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK_DIR = "book"
# The badge is our own image in the book (book/images), so a page read offline shows it; relative to book/.
BADGE_IMAGE = "images/colab-badge.svg"
_BADGE_IMAGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]")
_BADGE_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^)\s\"'>]+")
_INSTALL_SPEC = re.compile(r"lt_utils @ git\+https://github\.com/[^\"'\s]+")


def load_config(root: Path = ROOT) -> dict:
    """The book's _config.yml as a dict."""
    return yaml.safe_load((root / "_config.yml").read_text())


def repository(config: dict) -> tuple[str, str]:
    """(owner/name, branch) of the GitHub repository named in _config.yml."""
    repo = config.get("repository") or {}
    url, branch = str(repo.get("url", "")).rstrip("/"), str(repo.get("branch") or "main")
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(\.git)?", url)
    if not match:
        raise ValueError(f"_config.yml: repository.url must look like https://github.com/OWNER/NAME, got {url!r}.")
    return match.group(1), branch


def colab_link(notebook: str | Path, config: dict) -> str:
    """The Open-in-Colab URL of a notebook given by its path relative to the repository root, at the book's
    release: the chapter a student opens is the one its pinned lt_utils was released with."""
    slug, _ = repository(config)
    return f"https://colab.research.google.com/github/{slug}/blob/{release(config)}/{Path(notebook).as_posix()}"


def release(config: dict) -> str:
    """The git tag of the release the book was built from (``repository.release``; the branch where none is set)."""
    repo = config.get("repository") or {}
    return str(repo.get("release") or repository(config)[1])


def release_problems(root: Path = ROOT) -> list[str]:
    """Why ``repository.release`` of _config.yml is not the tag of lt_utils' version ("v" + ``__version__``)."""
    repo = load_config(root).get("repository") or {}
    version = re.search(r'__version__\s*=\s*"([^"]+)"', (root / "lt_utils" / "version.py").read_text())
    if "release" not in repo or version is None:
        return []
    if str(repo["release"]) != f"v{version.group(1)}":
        return [f"_config.yml: repository.release is {repo['release']!r} but lt_utils is version "
                f"{version.group(1)} (lt_utils/version.py): set release to 'v{version.group(1)}'."]
    return []


def install_spec(config: dict) -> str:
    """What the Colab setup cell pip-installs: lt_utils from the repository, at the book's release."""
    slug, _ = repository(config)
    return f"lt_utils @ git+https://github.com/{slug}@{release(config)}"


def toc_entries(toc: dict) -> list[str]:
    """The file entries of a parsed _toc.yml, root first, then in reading order (without extensions)."""
    entries = [toc["root"]]

    def walk(items):
        for item in items or []:
            if "file" in item:
                entries.append(item["file"])
            walk(item.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return entries


def toc_files(root: Path = ROOT) -> list[Path]:
    """Every file of _toc.yml (root first, then in order), resolved to an existing .md or .ipynb path."""
    paths = []
    for entry in toc_entries(yaml.safe_load((root / "_toc.yml").read_text())):
        candidates = [root / f"{entry}{ext}" for ext in (".ipynb", ".md")] + [root / entry]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"_toc.yml lists {entry!r} but no {entry}.ipynb or {entry}.md exists.")
        paths.append(found)
    return paths


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks of the toc, in toc order (the order they are executed in)."""
    return [p for p in toc_files(root) if p.suffix == ".ipynb"]


def stage(dest: Path, root: Path = ROOT) -> Path:
    """Copy the book (config, toc, bib, book/) into ``dest`` with execution off: nbmake executes the copies
    in place, and jupyter-book then renders them as they are (so nothing runs twice)."""
    dest = Path(dest).resolve()
    if dest == root.resolve() or root.resolve() not in dest.parents:
        raise ValueError(f"The scratch folder must lie inside the repository (e.g. .lt_cache/book_executed), got {dest}.")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(root / BOOK_DIR, dest / BOOK_DIR, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in ("_toc.yml", "references.bib"):
        shutil.copy2(root / name, dest / name)
    config = load_config(root)
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    (dest / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def _sources(nb) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def check_executed(dest: Path, root: Path = ROOT) -> list[str]:
    """Problems with the executed copies in ``dest`` (empty list: ready to render)."""
    problems = []
    for source in toc_notebooks(root):
        rel = source.relative_to(root)
        copy = Path(dest) / rel
        if not copy.is_file():
            problems.append(f"{rel}: not executed yet (no {copy}).")
            continue
        nb, nb_source = nbformat.read(copy, as_version=4), nbformat.read(source, as_version=4)
        if _sources(nb) != _sources(nb_source):
            problems.append(f"{rel}: changed since it was executed.")
            continue
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            if cell.get("execution_count") is None:
                problems.append(f"{rel}: cell {i} was not executed.")
                break
            if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
                problems.append(f"{rel}: cell {i} raised an error.")
                break
    return problems


def _prose_title(cell) -> str:
    """The ``#@title`` of a prose cell (its Colab form title); empty for a cell without one."""
    first = cell.source.split("\n", 1)[0]
    return first.split("#@title", 1)[1].strip() if first.startswith("#@title") else ""


def glued_values(dest: Path, root: Path | None = None) -> dict[str, str]:
    """What the executed toc notebooks in ``dest`` put into the prose, as the book shows it: to compare two builds.

    ``"chapter:title" -> text`` for every Markdown output of a code cell (the prose cells that ``lt.show_markdown``;
    the cell's ``#@title``, numbered when a chapter repeats one), and ``"chapter:name" -> value`` for every value
    glued with myst-nb (builds of the book from before the prose cells)."""
    root = ROOT if root is None else root
    values = {}
    for source in toc_notebooks(root):
        copy = Path(dest) / source.relative_to(root)
        if not copy.is_file():
            continue
        seen: dict[str, int] = {}
        for i, cell in enumerate(nbformat.read(copy, as_version=4).cells):
            texts = []
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                record = out.get("metadata", {}).get("scrapbook", {})
                if "name" in record:
                    values[f"{source.stem}:{record['name']}"] = data.get(record.get("mime_prefix", "") + "text/plain")
                elif "text/markdown" in data:
                    texts.append(data["text/markdown"])
            if texts:
                title = _prose_title(cell) or f"cell {i}"
                seen[title] = seen.get(title, 0) + 1
                key = title if seen[title] == 1 else f"{title} ({seen[title]})"
                values[f"{source.stem}:{key}"] = "\n\n".join(texts)
    return values


def sync_colab(root: Path = ROOT, check: bool = False) -> list[Path]:
    """Point every notebook's Colab badge at the repository and release of _config.yml (with the book's own badge
    image), and its setup-cell install line at the repository and release. Returns the notebooks that were (``check=True``: would be) changed."""
    config = load_config(root)
    spec = install_spec(config)
    changed = []
    for path in sorted((root / BOOK_DIR).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        link = colab_link(path.relative_to(root), config)
        dirty = False
        for cell in nb.cells:
            new = cell.source
            if cell.cell_type == "markdown":
                new = _BADGE_IMAGE.sub(f"[![Open In Colab]({BADGE_IMAGE})]", _BADGE_LINK.sub(link, new))
            if cell.cell_type == "code":
                new = _INSTALL_SPEC.sub(spec, new)
            if new != cell.source:
                cell.source, dirty = new, True
        if dirty:
            changed.append(path)
            if not check:
                nbformat.write(nb, path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("notebooks", help="print the toc notebooks, in order")
    p.add_argument("--root", type=Path, default=None, help="print their paths inside this copy of the book")
    sub.add_parser("stage", help="copy the book into DIR with execution off").add_argument("dest", type=Path)
    sub.add_parser("check", help="check the executed copies in DIR").add_argument("dest", type=Path)
    p = sub.add_parser("sync-colab", help="rewrite Colab badges (branch) and install lines (release) from _config.yml")
    p.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    p = sub.add_parser("glued", help="print the prose (and glued values) of DIR's executed chapters (JSON)")
    p.add_argument("dest", type=Path)
    p.add_argument("--compare", type=Path, default=None, metavar="DIR2",
                   help="print only what differs from another executed copy (exit 1 if anything does)")
    args = parser.parse_args(argv)

    if args.command == "notebooks":
        for path in toc_notebooks():
            print((args.root / path.relative_to(ROOT)) if args.root else path.relative_to(ROOT))
    elif args.command == "stage":
        print(f"staged the book in {stage(args.dest)}")
    elif args.command == "check":
        problems = check_executed(args.dest)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            print("Run `make test` (or `make book`) to execute the notebooks first.", file=sys.stderr)
            return 1
    elif args.command == "glued":
        values = glued_values(args.dest)
        if args.compare is None:
            print(json.dumps(values, indent=1, sort_keys=True))
        else:
            other = glued_values(args.compare)
            differ = {k: [values.get(k), other.get(k)] for k in sorted(values.keys() | other.keys())
                      if values.get(k) != other.get(k)}
            print(json.dumps(differ, indent=1))
            print(f"{len(differ)} of {len(values.keys() | other.keys())} prose texts or glued values differ",
                  file=sys.stderr)
            return 1 if differ else 0
    elif args.command == "sync-colab":
        problems = release_problems()
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        changed = sync_colab(check=args.check)
        for path in changed:
            print(f"{'out of date' if args.check else 'updated'}: {path.relative_to(ROOT)}")
        if args.check and changed:
            print("Run `make sync-colab` to point them at _config.yml's repository and release.", file=sys.stderr)
        if problems or (args.check and changed):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
