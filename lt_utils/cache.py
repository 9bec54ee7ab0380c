"""The one load-or-compute cache: expensive results (pre-training, fine-tuning, logits) are computed once,
written atomically, loaded safely (``weights_only=True``) and keyed by their configuration *and* the source of the
modules whose code produced them, so a stale result is never reused silently while an edit to unrelated code
(a plot, a docstring elsewhere) keeps every result."""
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
# Part of every digest: raise it to invalidate every cached result at once (e.g. when a file format changes).
CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where cached results live: ``$LT_CACHE_DIR`` if set, else ``~/.cache/lt_utils``."""
    root = os.environ.get("LT_CACHE_DIR") or Path.home() / ".cache" / "lt_utils"
    return Path(root).expanduser()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """The one atomic writer: ``write(tmp)`` writes a temporary file in the same folder, which is then renamed
    to ``path``. A reader never sees half a file, and a crash leaves any previous version in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (temporary file, then rename)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically (temporary file, then rename)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


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


def _module_file(module: ModuleType | str) -> Path:
    name = module if isinstance(module, str) else module.__name__
    path = _PACKAGE_DIR / f"{name.rsplit('.', 1)[-1]}.py"
    if not path.is_file():
        raise ValueError(f"{name!r} is not a module of lt_utils (no {path.name} in {_PACKAGE_DIR}).")
    return path


def source_hash(modules: Iterable[ModuleType | str] | None = None) -> str:
    """Hash of the source files of ``modules`` (names such as ``"training"`` or module objects; default: every
    module of lt_utils) and of ``CACHE_VERSION``."""
    if modules is None:
        files = sorted(_PACKAGE_DIR.glob("*.py"))
    else:
        files = sorted({_module_file(m) for m in modules})
    digest = hashlib.sha256(f"lt_utils cache v{CACHE_VERSION}".encode())
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

    Every chapter uses it through ``fine_tune`` and ``zero_shot``; the exercises of chapter 5 call it for their
    own expensive computations.

    Args:
        kind: the sub-folder of ``cache_dir()`` (e.g. ``"finetune"``).
        key: a JSON-able dict of everything the result depends on (model, data, hyper-parameters, seed).
        compute: the function that makes the result (tensors, numbers, strings in dicts/lists/tuples).
        depends_on: the lt_utils modules whose code ``compute`` runs (names such as ``"training"``); their
            source is part of the digest, so editing them recomputes while an edit elsewhere keeps the result.
            Default: every module of lt_utils (safe for code outside the package).

    Returns:
        The loaded or computed value. Set ``LT_NO_CACHE=1`` to always recompute.
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
