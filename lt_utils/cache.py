"""The one load-or-compute cache: expensive results (pre-training, fine-tuning, logits) are computed once,
written atomically, loaded safely (``weights_only=True``) and keyed by their configuration *and* the source of the
modules whose code produced them, so a stale result is never reused silently while an edit to unrelated code
(a plot, a docstring elsewhere) keeps every result. Each result's sidecar ``.json`` records its key and the SHA-256
of its bytes: a file that does not match (or does not parse) is provably corrupt and recomputed, while a file that
cannot be read (permissions) is kept and named in the error."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist

_PACKAGE_DIR = Path(__file__).resolve().parent
# Part of every digest: raise it to invalidate every cached result at once (e.g. when a file format changes).
CACHE_VERSION = 2  # 2: the sidecar holds {"key", "sha256"}; tensors in keys are hashed
# The process's umask, read once at import (reading it means setting it, which would race with other threads):
# mkstemp creates 0600 files, and a cached result should be as readable as any file the user writes.
_UMASK = os.umask(0)
os.umask(_UMASK)


def cache_dir() -> Path:
    """Where cached results live: ``$LT_CACHE_DIR`` if set, else ``~/.cache/lt_utils``."""
    root = os.environ.get("LT_CACHE_DIR") or Path.home() / ".cache" / "lt_utils"
    return Path(root).expanduser()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """The one atomic writer: ``write(tmp)`` writes a temporary file in the same folder, which is then renamed
    to ``path``. A reader never sees half a file, and a crash leaves any previous version in place. The file gets
    the permissions of the process's umask (as ``open`` would give), not ``mkstemp``'s 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)
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


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def _describe(value: Any) -> Any:
    """``value`` with every tensor or array replaced by its dtype, shape and a hash of its contents: their str()
    is abbreviated ("...") for large ones, so two different tensors would share a key."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()  # raw bytes: any dtype, bfloat16 included
        return dict(tensor=dict(dtype=str(t.dtype), shape=list(t.shape), sha256=hashlib.sha256(data).hexdigest()))
    if isinstance(value, np.ndarray):
        if value.dtype == object:  # its bytes would be pointers
            return _describe(value.tolist())
        data = np.ascontiguousarray(value).tobytes()
        return dict(array=dict(dtype=str(value.dtype), shape=list(value.shape),
                               sha256=hashlib.sha256(data).hexdigest()))
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    return value


def _key_json(key: dict) -> str:
    try:
        return json.dumps(_describe(key), sort_keys=True, default=str)
    except TypeError as err:
        raise TypeError(f"A cache key must be JSON-able (numbers, strings, lists, dicts, tensors): {err}") from err


def cache_key(key: dict, depends_on: Iterable[ModuleType | str] | None = None) -> str:
    """A stable digest of a JSON-able config dict (tensors and arrays count by their contents) plus the source of
    the code that computes it."""
    text = _key_json(key)
    return hashlib.sha256((text + source_hash(depends_on)).encode()).hexdigest()[:20]


_MISSING = object()


def _read(path: Path) -> bytes:
    """The bytes of a cache file; an OS error (permissions, I/O) keeps the file and says what to do."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise type(err)(
            f"Could not read the cached file {path} ({err.strerror or err}). It was kept: it may be fine. Fix its "
            "permissions (or the disk), or delete it yourself to recompute it, and run again."
        ) from err


def _load_checked(path: Path) -> Any:
    """The value stored at ``path`` if its sidecar vouches for its bytes and they parse, else ``_MISSING`` (with a
    warning; a provably corrupt file is deleted)."""
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(_read(sidecar))
    except FileNotFoundError:
        meta = None
    except ValueError:  # a damaged sidecar: nothing vouches for the result
        meta = None
    recorded = meta.get("sha256") if isinstance(meta, dict) else None
    if not isinstance(recorded, str):
        warnings.warn(f"The cached file {path} has no recorded SHA-256 in {sidecar.name} (written by an older "
                      "lt_utils, or interrupted): recomputing it and overwriting it.", stacklevel=3)
        return _MISSING
    try:
        data = _read(path)
    except FileNotFoundError:  # removed meanwhile (another process): nothing to check, recompute
        return _MISSING
    if hashlib.sha256(data).hexdigest() != recorded:
        problem = "its bytes do not match the SHA-256 recorded when it was written"
    else:
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - whatever the unpickler says, these bytes do not load
            problem = f"it does not load as a tensor file ({type(err).__name__}: {err})"
    warnings.warn(f"The cached file {path} is corrupt ({problem}): deleting it and recomputing.", stacklevel=3)
    path.unlink(missing_ok=True)
    return _MISSING


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
        The loaded or computed value. Set ``LT_NO_CACHE=1`` to always recompute. The sidecar
        ``<digest>.json`` holds the key and the SHA-256 of the ``.pt``: a file that does not match it or does not
        parse is deleted and recomputed, one without it is recomputed (both with a warning), and one that cannot
        be read (permissions) raises ``OSError`` and is kept.
    """
    digest = cache_key(key, depends_on)
    path = cache_dir() / kind / f"{digest}.pt"
    if path.is_file() and not os.environ.get("LT_NO_CACHE"):
        value = _load_checked(path)
        if value is not _MISSING:
            if verbose:
                print(f"[cache] loaded {kind} from {path}")
            return value
    value = compute()
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        # under torchrun every rank computes the value; one writer, or a sidecar could vouch for another
        # rank's bytes (they differ, e.g. in timings) and the next load would delete a good result
        return value
    sidecar = path.with_suffix(".json")
    # the result first, then its sidecar; an old sidecar goes before, so it never vouches for other bytes
    sidecar.unlink(missing_ok=True)
    atomic_torch_save(value, path)
    meta = dict(key=json.loads(_key_json(key)), sha256=file_sha256(path))
    atomic_write_text(json.dumps(meta, sort_keys=True, indent=1), sidecar)
    if verbose:
        print(f"[cache] computed {kind}, saved to {path}")
    return value
