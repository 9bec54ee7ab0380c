"""Shared test set-up: unit tests never read or write the book's results cache, and figures never open a window."""
import os
import sys

import pytest
import torch

import lt_utils.cache as cache_module
import lt_utils.lab as lab
from lt_utils.standin import write_cifar100_folder

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache_dir(tmp_path_factory):
    """Point LT_CACHE_DIR at a fresh folder for the whole test session (the notebooks' .lt_cache stays untouched)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("LT_CACHE_DIR", str(tmp_path_factory.mktemp("lt_cache")))
    yield
    patch.undo()


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty cache folder of this test's own (set as LT_CACHE_DIR)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LT_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def one_thread():
    """Run a test at one torch thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` when no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_lab(tmp_path, monkeypatch):
    """The lab world and its pre-training shrunk (same code, fewer images), cached in a fresh folder."""
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LT_PROFILE", "lab")
    monkeypatch.setattr(lab, "DOWNSTREAM_N_MAX", 120)  # 120 .. 1 images per class (IR 100), about 2,600 in all
    monkeypatch.setattr(lab, "VAL_PER_CLASS", 2)
    monkeypatch.setattr(lab, "TEST_PER_CLASS", 2)
    monkeypatch.setitem(lab.PRETRAIN_CONFIG, "corpus_size", 512)
    monkeypatch.setitem(lab.PRETRAIN_CONFIG, "epochs", 1)
    return tmp_path


@pytest.fixture(scope="session")
def fake_cifar100():
    """The writer of fabricated CIFAR-100 folders in the real format (the stand-in profile's), for any test."""
    return write_cifar100_folder


class CachedTrace:
    """What every ``lt.cached`` computation declared (``depends_on``) and which lt_utils modules' code ran inside
    it, nested cached computations included (an outer result depends on the code of what it computed inside)."""

    def __init__(self):
        self.records, self._stack = [], []
        self._code = cache_module.cached.__code__

    def _profile(self, frame, event, arg):
        if event == "call":
            if frame.f_code is self._code:
                declared = frame.f_locals["depends_on"]
                record = dict(kind=frame.f_locals["kind"], executed=set(),
                              declared=None if declared is None else {getattr(m, "__name__", m).rsplit(".", 1)[-1]
                                                                      for m in declared})
                self.records.append(record)
                self._stack.append((frame, record))
                return
            module = frame.f_globals.get("__name__", "")
            if module.startswith("lt_utils."):
                for _, record in self._stack:
                    record["executed"].add(module.split(".")[1])
        elif event == "return" and self._stack and frame is self._stack[-1][0]:
            self._stack.pop()

    # modules whose code runs inside a computation without shaping its value: ``cache`` stores and loads values (it
    # computes none; a change of its file format bumps ``CACHE_VERSION``), ``phases`` only times (test_phases.py)
    NEUTRAL = {"cache", "phases"}

    def undeclared(self) -> dict:
        """kind -> modules that ran but are not declared (``NEUTRAL`` aside)."""
        return {r["kind"]: sorted(r["executed"] - r["declared"] - self.NEUTRAL) for r in self.records
                if r["declared"] is not None and r["executed"] - r["declared"] - self.NEUTRAL}

    def __enter__(self):
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)


@pytest.fixture
def trace_cached():
    """``with trace_cached() as trace: ...`` then ``trace.records`` / ``trace.undeclared()`` (see CachedTrace)."""
    return CachedTrace
