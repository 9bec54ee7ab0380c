"""Shared test set-up: unit tests never read or write the book's results cache, and figures never open a window."""
import os

import pytest
import torch

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


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` when no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
