"""How long each chapter takes: runs counted and minutes measured or estimated (clip, clip-lite), and the lab times.

Runs per chapter: every chapter executed cold in the stand-in clip profile (``scripts/cold_book.py``) gives the
fine-tunes and zero-shots a chapter computes when opened first on a fresh runtime, and those it adds when the
chapters run in order. They are kept in ``benchmarks/results/chapter_runs_{clip-lite,clip}.json``; ``make test``
recounts the clip-lite ones (one seed, as the stand-in) and fails when they differ, so the table cannot go stale.
The clip profile's three seeds: ``scripts/cold_book.py --seeds 0 1 2 --out .lt_cache/standin-3seeds``.

Minutes per run were measured end to end on an H100 (``benchmarks/results/clip_run_h100.json``, from
``bench_clip_run.py``). Other GPUs are estimated by FLOP rate: minutes x (the H100's datasheet dense fp16 rate /
the GPU's), i.e. assuming the same fraction of peak as measured on the H100 (12% in training; RESULTS.md).

    python benchmarks/clip_time.py             # the README's table
    python benchmarks/clip_time.py --abstracts # the Time line of each chapter's abstract (lab part measured)
    python benchmarks/clip_time.py --write-abstracts   # ... written into the chapters' first cells
"""
from __future__ import annotations

import argparse
import json
import re
import textwrap
from pathlib import Path

from timing import DATASHEET_TFLOPS  # benchmarks/timing.py (the script's own folder is on sys.path)

from lt_utils.cache import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent
PROFILES = ("clip-lite", "clip")


def chapter_runs(profile: str) -> list[dict]:
    """The committed run counts of every chapter in ``profile`` (toc order)."""
    return json.loads((RESULTS / f"chapter_runs_{profile}.json").read_text())


def minutes_per_run(path: Path = RESULTS / "clip_run_h100.json") -> dict:
    """profile -> {"fine_tune": minutes, "zero_shot": minutes} measured on the H100."""
    runs = json.loads(path.read_text())["runs"]
    zero_shot = next(r["minutes"] for r in runs if r["run"] == "zero_shot")
    return {r["profile"]: dict(fine_tune=r["minutes"], zero_shot=zero_shot) for r in runs if r["run"] != "zero_shot"}


def chapter_minutes(counts: dict, profile: str, gpu: str, when: str = "cold") -> float:
    """Minutes of one chapter's runs (``when``: "cold" or "in_order") in ``profile`` on ``gpu``."""
    per_run = minutes_per_run()[profile]
    h100 = counts[f"finetune_{when}"] * per_run["fine_tune"] + counts[f"zeroshot_{when}"] * per_run["zero_shot"]
    return h100 * DATASHEET_TFLOPS["H100"] / DATASHEET_TFLOPS[gpu]


def _runs(counts: dict, when: str) -> str:
    return f"{counts[f'finetune_{when}']} FT + {counts[f'zeroshot_{when}']} ZS"


def table() -> str:
    """The README's Markdown table: per chapter and profile, runs cold / in order and T4 / A100 minutes."""
    lines = ["| chapter | profile | runs opened cold | runs in book order | T4 min cold (in order) | "
             "A100 min cold | H100 min cold (measured per run) |", "|---|---|---|---|---|---|---|"]
    for profile in PROFILES:
        for counts in chapter_runs(profile):
            t4 = [chapter_minutes(counts, profile, "T4", w) for w in ("cold", "in_order")]
            lines.append(f"| {counts['chapter']} | {profile} | {_runs(counts, 'cold')} | {_runs(counts, 'in_order')} "
                         f"| {t4[0]:.0f} ({t4[1]:.0f}) | {chapter_minutes(counts, profile, 'A100'):.0f} "
                         f"| {chapter_minutes(counts, profile, 'H100'):.0f} |")
    return "\n".join(lines)


def _lab_minutes(seconds: float) -> str:
    return "under 1 min" if seconds < 60 else f"about {round(seconds / 30) / 2:g} min"


def lab_sentence(chapter: str) -> str:
    """The lab part of a chapter's "Time" line, measured on 2 CPU cores with an empty cache: in book order
    (``benchmarks/results/book_cold.json``, from ``bench_book.py``) and opened first
    (``benchmarks/results/lab_opened_first.json``, from ``scripts/cold_book.py --profile lab``)."""
    in_order = next(r["seconds"] for r in json.loads((RESULTS / "book_cold.json").read_text())["notebooks"]
                    if r["notebook"] == f"{chapter}.ipynb")
    first = next(r["seconds"] for r in json.loads((RESULTS / "lab_opened_first.json").read_text())
                 if r["chapter"] == chapter)
    return (f"lab: {_lab_minutes(in_order)} on 2 CPU cores in book order, {_lab_minutes(first)} opened first "
            "(measured: `benchmarks/bench_book.py`, `scripts/cold_book.py --profile lab`)")


def time_line(chapter: str) -> str:
    """A chapter's whole "Time" line, as its abstract states it."""
    return f"**Time.** {lab_sentence(chapter)}; {abstract_sentence(chapter)}."


def abstract_sentence(chapter: str) -> str:
    """The GPU part of a chapter's "Time" line (estimated minutes opened cold)."""
    parts = []
    for profile in PROFILES:
        counts = next(c for c in chapter_runs(profile) if c["chapter"] == chapter)
        parts.append(f"{profile} about {chapter_minutes(counts, profile, 'T4'):.0f} min on a T4 and "
                     f"{chapter_minutes(counts, profile, 'A100'):.0f} on an A100")
    return "; ".join(parts) + " when opened cold (estimated: `benchmarks/clip_time.py`)"


def write_time_line(notebook: Path, line: str) -> None:
    """Replace the "**Time.**" paragraph of the notebook's first cell by ``line`` (wrapped), atomically."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    cell = nb["cells"][0]
    text = "".join(cell["source"])
    new, found = re.subn(r"\*\*Time\.\*\*.*?(?=\n\n|\Z)", lambda _: textwrap.fill(line, 118), text, flags=re.S)
    if not found:
        raise ValueError(f"{notebook.name}: no '**Time.**' paragraph in its first cell")
    cell["source"] = new.splitlines(True)
    atomic_write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", notebook)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--abstracts", action="store_true", help="print each chapter's Time line")
    parser.add_argument("--write-abstracts", action="store_true",
                        help="write each chapter's Time line into its abstract (the first cell)")
    args = parser.parse_args()
    if args.abstracts:
        for counts in chapter_runs("clip-lite"):
            print(f"{counts['chapter']}: {time_line(counts['chapter'])}")
    elif args.write_abstracts:
        for counts in chapter_runs("clip-lite"):
            write_time_line(ROOT / "book" / f"{counts['chapter']}.ipynb", time_line(counts["chapter"]))
    else:
        print(table())


if __name__ == "__main__":
    main()
