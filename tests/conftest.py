"""Shared test set-up: unit tests never read or write the book's results cache, and figures never open a window."""
import os
import pickle
import sys

import numpy as np
import pytest
import torch

import lt_utils.cache as cache_module
import lt_utils.lab as lab

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


def write_fake_cifar100(root, per_class_train: int, per_class_test: int, fine_names, seed: int = 123,
                        per_class_val: int = 20):
    """A CIFAR-100 folder in the real format under ``root`` (python pickles, N x 3072 uint8 rows, shuffled labels).

    The test file holds ``per_class_val + per_class_test`` images per class: ``load_dataset`` holds 20 of each
    class out of it as the val split, so the test split keeps ``per_class_test``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)

    def dump(obj, path):
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    for split, per_class in (("train", per_class_train), ("test", per_class_val + per_class_test)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class))
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        dump({"filenames": [f"{i}.png" for i in range(len(labels))], "batch_label": split,
              "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(), "data": data}, folder / split)
    dump({"fine_label_names": list(fine_names), "coarse_label_names": [f"super_{i}" for i in range(20)]},
         folder / "meta")
    return root


@pytest.fixture(scope="session")
def fake_cifar100():
    """The writer of fabricated CIFAR-100 folders (``write_fake_cifar100``), for tests in any file."""
    return write_fake_cifar100


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

    def undeclared(self) -> dict:
        """kind -> modules that ran but are not declared. ``cache`` stores and loads values (it computes none;
        a change of its file format bumps ``CACHE_VERSION``)."""
        return {r["kind"]: sorted(r["executed"] - r["declared"] - {"cache"}) for r in self.records
                if r["declared"] is not None and r["executed"] - r["declared"] - {"cache"}}

    def __enter__(self):
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)


@pytest.fixture
def trace_cached():
    """``with trace_cached() as trace: ...`` then ``trace.records`` / ``trace.undeclared()`` (see CachedTrace)."""
    return CachedTrace
