"""Wall-clock time of every chapter of the book, executed in toc order in the lab profile, as CI runs them, and
where that time goes (the phase profile).

    python benchmarks/bench_book.py            # cold: a fresh, empty cache (pre-training included)
    python benchmarks/bench_book.py --warm     # with the repository's .lt_cache as it is
    python benchmarks/bench_book.py --json benchmarks/results/book_cold.json   # also write the table
    python benchmarks/bench_book.py --cache .lt_cache   # cold, into the repository's (empty) cache

Prints one row per notebook and the total: its wall time and the seconds of each phase that lt_utils records
(`lt_utils.phases`: world generation, pre-training or loading the shipped checkpoints, fine-tuning, evaluation,
kNN, the prior estimate, Grad-CAM and FLOPs). "kernel" is the start-up of a kernel that imports lt_utils, timed
on an empty notebook; "other" is the rest (the chapter's own code: plotting, tables, prose). Later chapters
reuse the cached runs of earlier ones, so the cold times are those of a fresh clone's `make test`; the order
matters.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
from book_tools import toc_notebooks  # noqa: E402

from lt_utils.phases import read_phase_log  # noqa: E402

PHASES = ("world generation", "pre-training", "pre-training (shipped checkpoint)", "fine-tuning", "evaluation",
          "kNN", "prior estimate", "Grad-CAM and FLOPs")
SHORT = {"world generation": "world", "pre-training": "pretrain", "pre-training (shipped checkpoint)": "shipped",
         "fine-tuning": "finetune", "evaluation": "eval", "kNN": "kNN", "prior estimate": "prior",
         "Grad-CAM and FLOPs": "explain"}


def run(nb, folder: Path) -> float:
    start = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    return time.perf_counter() - start


def kernel_start_up(folder: Path) -> float:
    """Seconds to start a kernel, import lt_utils and matplotlib's inline backend, and shut it down."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import lt_utils as lt\nimport matplotlib.pyplot as plt")])
    return min(run(nb, folder) for _ in range(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", action="store_true",
                        help="use $LT_CACHE_DIR or .lt_cache instead of a fresh cache")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cold run into this (new or empty) cache folder instead of a temporary one, e.g. to "
                             "let a later `make execute` reuse it")
    parser.add_argument("--json", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    if args.cache is not None and args.cache.exists() and any(
            p.name != "book_executed" for p in args.cache.iterdir()):
        parser.error(f"--cache {args.cache} is not empty: a cold run needs an empty cache folder")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        cold = (args.cache or Path(scratch)).resolve()  # absolute: the kernels run in book/
        cache = os.environ.get("LT_CACHE_DIR", str(ROOT / ".lt_cache")) if args.warm else str(cold)
        os.environ.update(LT_PROFILE="lab", LT_CACHE_DIR=cache, TQDM_DISABLE="1", PYTHONHASHSEED="0")
        start_up = kernel_start_up(ROOT / "book")
        header = f"{'notebook':32s} {'total':>7s}" + "".join(f" {SHORT[p]:>8s}" for p in PHASES)
        print(header + f" {'kernel':>7s} {'other':>7s}", flush=True)
        for path in toc_notebooks(ROOT):
            log = Path(scratch) / f"{path.stem}.phases.jsonl"
            os.environ["LT_PHASE_LOG"] = str(log)
            seconds = run(nbformat.read(path, as_version=4), path.parent)
            phases = read_phase_log(log)
            other = seconds - sum(phases.values()) - start_up
            rows.append(dict(notebook=path.name, seconds=seconds, phases=phases, kernel=start_up, other=other))
            print(f"{path.name:32s} {seconds:7.1f}" + "".join(f" {phases.get(p, 0.0):8.1f}" for p in PHASES)
                  + f" {start_up:7.1f} {other:7.1f}", flush=True)
    total = sum(r["seconds"] for r in rows)
    sums = {p: sum(r["phases"].get(p, 0.0) for r in rows) for p in PHASES}
    label = f"total ({'warm' if args.warm else 'cold'} cache)"
    print(f"{label:32s} {total:7.1f}" + "".join(f" {sums[p]:8.1f}" for p in PHASES)
          + f" {start_up * len(rows):7.1f} {sum(r['other'] for r in rows):7.1f}  on {os.cpu_count()} CPU cores")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(
            cache="warm" if args.warm else "cold", cpu_count=os.cpu_count(), machine=platform.processor()
            or platform.machine(), total_s=total, kernel_start_up_s=start_up, notebooks=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
