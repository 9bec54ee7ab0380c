"""The one load-or-compute cache: expensive results (pre-training, fine-tuning, logits) are computed once,
written atomically, loaded safely (``weights_only=True``) and keyed by their configuration *and* the source code
that produced them, so a stale result is never reused silently."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """Where cached results live: ``$LT_CACHE_DIR`` if set, else ``~/.cache/lt_utils``."""
    root = os.environ.get("LT_CACHE_DIR") or Path.home() / ".cache" / "lt_utils"
    return Path(root).expanduser()


def _atomic_write(path: str | os.PathLike, write: Callable, mode: str) -> Path:
    """Write with ``write(file)`` to a temporary file in the same folder, then rename: a reader never sees half a
    file, and a crash leaves any previous version in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (temporary file, then rename)."""
    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically (temporary file, then rename)."""
    return _atomic_write(path, lambda f: f.write(text), "w")


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a torch file without executing code from it (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No file at {path}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file: say what to do
        raise RuntimeError(
            f"Could not load {path} as a tensor file ({type(err).__name__}: {err}). The file is corrupted or "
            "was not written by lt_utils; delete it and run again to recompute it."
        ) from err


def source_hash(modules: Iterable[ModuleType | str] | None = None) -> str:
    """Hash of the source files of ``modules`` (default: every module of lt_utils)."""
    if modules is None:
        files = sorted(_PACKAGE_DIR.glob("*.py"))
    else:
        files = []
        for m in modules:
            name = m if isinstance(m, str) else m.__name__
            files.append(_PACKAGE_DIR / f"{name.rsplit('.', 1)[-1]}.py")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(key: dict, depends_on: Iterable[ModuleType | str] | None = None) -> str:
    """A stable digest of a JSON-able config dict plus the source of the code that computes it."""
    try:
        text = json.dumps(key, sort_keys=True, default=str)
    except TypeError as err:
        raise TypeError(f"A cache key must be JSON-able (numbers, strings, lists, dicts): {err}") from err
    return hashlib.sha256((text + source_hash(depends_on)).encode()).hexdigest()[:20]


def cached(kind: str, key: dict, compute: Callable[[], Any],
           depends_on: Iterable[ModuleType | str] | None = None, verbose: bool = False) -> Any:
    """Load ``cache_dir()/kind/<digest>.pt`` if present, else ``compute()``, save it atomically and return it.

    ``key`` describes everything the result depends on (model, data, hyper-parameters, seed); the source of
    ``depends_on`` (default: all of lt_utils) is part of the digest. Set ``LT_NO_CACHE=1`` to always recompute.
    """
    digest = cache_key(key, depends_on)
    path = cache_dir() / kind / f"{digest}.pt"
    if path.is_file() and not os.environ.get("LT_NO_CACHE"):
        try:
            value = safe_torch_load(path)
            if verbose:
                print(f"[cache] loaded {kind} from {path}")
            return value
        except RuntimeError:
            path.unlink(missing_ok=True)  # corrupted: recompute rather than fail
    value = compute()
    atomic_torch_save(value, path)
    atomic_write_text(json.dumps(key, sort_keys=True, indent=1, default=str), path.with_suffix(".json"))
    if verbose:
        print(f"[cache] computed {kind}, saved to {path}")
    return value
