"""Wall-clock time of every chapter of the book, executed in toc order in the lab profile, as CI runs them.

    python benchmarks/bench_book.py            # cold: a fresh, empty cache (pre-training included), ~10 min
    python benchmarks/bench_book.py --warm     # with the repository's .lt_cache as it is

Prints one row per notebook and the total. Later chapters reuse the cached runs of earlier ones, so the cold
times are those of a fresh clone's `make test`; the order matters.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from book_tools import toc_notebooks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", action="store_true",
                        help="use $LT_CACHE_DIR or .lt_cache instead of a fresh cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cache = os.environ.get("LT_CACHE_DIR", str(ROOT / ".lt_cache")) if args.warm else scratch
        os.environ.update(LT_PROFILE="lab", LT_CACHE_DIR=cache, TQDM_DISABLE="1")
        total = 0.0
        for path in toc_notebooks(ROOT):
            nb = nbformat.read(path, as_version=4)
            start = time.perf_counter()
            client = NotebookClient(nb, timeout=900, kernel_name="python3",
                                    resources={"metadata": {"path": str(path.parent)}})
            client.execute()
            seconds = time.perf_counter() - start
            total += seconds
            print(f"{path.name:40s} {seconds:7.1f} s", flush=True)
        label = f"total ({'warm' if args.warm else 'cold'} cache)"
        print(f"{label:40s} {total:7.1f} s  on {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
