"""Execute every chapter of the toc COLD (by default in the stand-in clip profile), and count the runs each triggers.

Each chapter gets its own empty cache and data root, as a notebook opened first from its Colab badge on a fresh
runtime: a chapter that only works after another one fails here. The stand-in's "internet" (tiny open_clip
weights, the fabricated CIFAR-100 archive; see lt_utils/standin.py) is shared, as the real one would be.
``--profile lab`` times the lab chapters opened cold the same way.

Afterwards it lists, per chapter, the fine-tuning and zero-shot runs computed cold and those that are new when
the chapters are run in toc order (the cache keys are the same across chapters, so the in-order count is the
set difference), and writes them to ``OUT/runs.json`` (read by benchmarks/clip_time.py).

    python scripts/cold_book.py [--profile standin] [--out .lt_cache/standin] [--seeds 0] [--timeout 900]
                                [--replay book/04_backdoor_adjustment.ipynb] [--check-counts FILE] [NOTEBOOK ...]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from book_tools import ROOT, toc_notebooks  # noqa: E402

RUN_KINDS = ("finetune", "zeroshot")


def cache_entries(cache: Path) -> dict[str, set[str]]:
    """kind -> the digests of the results stored in ``cache``."""
    return {kind: {p.stem for p in (cache / kind).glob("*.pt")} for kind in RUN_KINDS}


def nbmake(notebook: Path, env: dict, timeout: int) -> int:
    """Execute ``notebook`` with nbmake in ``env``; its exit status."""
    return subprocess.call([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbmake",
                            f"--nbmake-timeout={timeout}", "-q", str(notebook)], env=env, cwd=ROOT)


def execute_cold(notebook: Path, out: Path, timeout: int, seeds: list[int], profile: str) -> tuple[int, float, dict]:
    """Run ``notebook`` with nbmake in ``profile``, in a fresh cache and data root under ``out``."""
    work = out / notebook.stem
    shutil.rmtree(work, ignore_errors=True)
    env = dict(os.environ, LT_PROFILE=profile, LT_CACHE_DIR=str(work / "cache"), LT_DATA_ROOT=str(work / "data"),
               LT_STANDIN_ROOT=str(out / "internet"), LT_STANDIN_SEEDS=",".join(map(str, seeds)))
    start = time.perf_counter()
    rc = nbmake(notebook, env, timeout)
    return rc, time.perf_counter() - start, cache_entries(work / "cache")


def replay_from_archive(notebook: Path, out: Path, timeout: int, seeds: list[int], profile: str) -> int:
    """A class's path: export the cache of ``notebook``'s cold run (``python -m lt_utils cache export``), import it
    into a fresh cache, and run the chapter there with ``LT_CACHE_ONLY=1``: it passes only if nothing computes."""
    work, replay = out / notebook.stem, out / f"{notebook.stem}-replay"
    shutil.rmtree(replay, ignore_errors=True)
    archive = replay / "results.zip"
    cli = [sys.executable, "-m", "lt_utils", "cache"]
    env = dict(os.environ, LT_CACHE_DIR=str(work / "cache"))
    replay.mkdir(parents=True)
    rc = subprocess.call(cli + ["export", str(archive)], env=env, cwd=ROOT)
    env = dict(os.environ, LT_CACHE_DIR=str(replay / "cache"))
    rc = rc or subprocess.call(cli + ["import", str(archive)], env=env, cwd=ROOT)
    env = dict(env, LT_CACHE_ONLY="1", LT_PROFILE=profile, LT_DATA_ROOT=str(replay / "data"),
               LT_STANDIN_ROOT=str(out / "internet"), LT_STANDIN_SEEDS=",".join(map(str, seeds)))
    return rc or nbmake(notebook, env, timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook of the toc, in order")
    parser.add_argument("--out", type=Path, default=ROOT / ".lt_cache" / "standin")
    parser.add_argument("--timeout", type=int, default=900, help="nbmake's limit per cell, in seconds")
    parser.add_argument("--profile", default="standin", help="the profile the chapters run in")
    parser.add_argument("--check-counts", type=Path, help="fail when the run counts differ from this JSON file "
                        "(benchmarks/results/chapter_runs_clip-lite.json: the README's table is computed from it)")
    parser.add_argument("--replay", type=Path, help="afterwards, run this chapter again from an export -> import "
                        "of its cache with LT_CACHE_ONLY=1 (it must train nothing)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="fine-tuning seeds (default one, as clip-lite; 0 1 2 as the clip profile)")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or toc_notebooks()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, seen, failed = [], {kind: set() for kind in RUN_KINDS}, []
    for notebook in notebooks:
        rc, seconds, entries = execute_cold(notebook, args.out.resolve(), args.timeout, args.seeds, args.profile)
        if rc != 0:
            failed.append(notebook.name)
        row = dict(chapter=notebook.stem, seconds=round(seconds, 1), ok=rc == 0)
        for kind in RUN_KINDS:
            row[f"{kind}_cold"] = len(entries[kind])
            row[f"{kind}_in_order"] = len(entries[kind] - seen[kind])
            seen[kind] |= entries[kind]
        rows.append(row)
    (args.out / "runs.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n{'chapter':32s} {'s':>6s}  fine-tunes cold / in order  zero-shots cold / in order")
    for r in rows:
        print(f"{r['chapter']:32s} {r['seconds']:6.0f}  {r['finetune_cold']:10d} / {r['finetune_in_order']:<8d}  "
              f"{r['zeroshot_cold']:10d} / {r['zeroshot_in_order']:<8d}{'' if r['ok'] else '  FAILED'}")
    if failed:
        print(f"\nFailed when opened cold in the {args.profile} profile: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.replay and replay_from_archive(args.replay, args.out.resolve(), args.timeout, args.seeds, args.profile):
        print(f"\n{args.replay.name} did not run from its exported and re-imported cache alone.", file=sys.stderr)
        return 1
    if args.check_counts and len(notebooks) == len(toc_notebooks()):
        counted = [{k: v for k, v in r.items() if k not in ("seconds", "ok")} for r in rows]
        if counted != json.loads(args.check_counts.read_text()):
            print(f"\nThe chapters' run counts changed: {args.check_counts} (and the time tables computed from it "
                  f"by benchmarks/clip_time.py: README, abstracts) is stale. Copy the counts from "
                  f"{args.out / 'runs.json'} into it (leave out seconds and ok) and update the tables.",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
