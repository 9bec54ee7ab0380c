"""Where a build's time goes: wall time by phase (world generation, pre-training, fine-tuning, evaluation, kNN, the
prior estimate, ...), recorded only when ``$LT_PHASE_LOG`` names a file. ``benchmarks/bench_book.py`` sets it and
prints the profile; otherwise ``phase`` costs one environment lookup.

A phase's time excludes the phases nested in it (an evaluation inside a fine-tune counts as evaluation), so the
phases of a notebook add up to at most its wall time; the rest is kernel start-up, imports, plotting and tables.
"""
from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

_open: list[list] = []  # the phases running now, innermost last: [name, start, seconds of nested phases]


@contextmanager
def phase(name: str):
    """Time the enclosed code as phase ``name`` (a context manager, or a decorator: ``@phase("kNN")``)."""
    log = os.environ.get("LT_PHASE_LOG")
    if not log:
        yield
        return
    frame = [name, time.perf_counter(), 0.0]
    _open.append(frame)
    try:
        yield
    finally:
        _open.pop()
        seconds = time.perf_counter() - frame[1]
        if _open:
            _open[-1][2] += seconds
        with open(log, "a", encoding="utf-8") as f:  # one short line per call: appends do not interleave
            f.write(json.dumps({"phase": name, "seconds": seconds - frame[2]}) + "\n")


def read_phase_log(path: str | os.PathLike) -> dict[str, float]:
    """{phase: total seconds} of a log written under ``$LT_PHASE_LOG`` (empty when there is none)."""
    totals: dict[str, float] = defaultdict(float)
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            totals[record["phase"]] += record["seconds"]
    return dict(totals)
