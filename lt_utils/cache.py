"""The one load-or-compute cache: expensive results (pre-training, fine-tuning, logits) are computed once,
written atomically, loaded safely (``weights_only=True``) and keyed by their configuration *and* the source of the
modules whose code produced them, so a stale result is never reused silently while an edit to unrelated code
(a plot, a docstring elsewhere) keeps every result. Each result's sidecar ``.json`` records its key and the SHA-256
of its bytes: a file that does not match (or does not parse) is provably corrupt and recomputed, while a file that
cannot be read (permissions) is kept and named in the error. ``export_cache`` / ``import_cache`` carry complete
results to another machine in one zip archive (one GPU run serves a class), checked by SHA-256 without loading."""
from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import re
import stat
import tempfile
import warnings
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
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


class CacheMissError(LookupError):
    """A result was needed from the cache alone (``LT_CACHE_ONLY``) and is not there."""


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
        The loaded or computed value. Set ``LT_NO_CACHE=1`` to always recompute, ``LT_CACHE_ONLY=1`` to never
        compute (a missing result raises ``CacheMissError``: e.g. a class working from a teacher's imported
        archive, on machines that could not train). The sidecar
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
    if os.environ.get("LT_CACHE_ONLY"):
        raise CacheMissError(
            f"LT_CACHE_ONLY is set, but {cache_dir()} holds no {kind!r} result for {_key_json(key)[:300]}. Import "
            "the archive of a run made with this same lt_utils release (python -m lt_utils cache import FILE), or "
            "unset LT_CACHE_ONLY to compute it here.")
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


# ------------------------------------------------------------------------------------- sharing a cache (archives)
# A teacher runs the chapters once (on a GPU) and hands the class one zip file; the students' chapters then load
# every result instead of training. Members are the entries' files as stored (``kind/<digest>.pt`` and its sidecar
# ``.json``) plus ``manifest.json``; bytes are checked by SHA-256, never unpickled.
ARCHIVE_FORMAT = "lt_utils-cache-archive"
ARCHIVE_VERSION = 1  # the layout of the archive and its manifest: raise it when either changes
MANIFEST_NAME = "manifest.json"
_MANIFEST_MAX_BYTES = 64 << 20
_KIND_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_RESULT_NAME = re.compile(r"[0-9a-f]{20}\.pt")  # what ``cached`` writes: ``cache_key``'s digest
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CacheArchiveError(ValueError):
    """A cache archive that cannot be imported (not an archive, damaged, tampered with, unsafe, or of another
    format). Raised before anything is written."""


def _lt_utils_version() -> str:
    """The installed lt_utils' version (``version`` shares this layer, so it is not imported)."""
    try:
        return importlib.metadata.version("lt_utils")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _is_kind(folder: Path) -> bool:
    """A folder of ``cached`` results; not a run's per-epoch checkpoints (``finetune_checkpoints``: in progress)
    nor anything hidden or foreign (e.g. the book's executed notebooks)."""
    return (folder.is_dir() and not folder.is_symlink() and bool(_KIND_NAME.fullmatch(folder.name))
            and not folder.name.endswith("_checkpoints"))


def _complete_entry(result: Path) -> tuple[bytes, bytes] | str:
    """The bytes of a result and its sidecar if the sidecar vouches for them, else why not (to report)."""
    try:
        sidecar = result.with_suffix(".json").read_bytes()
    except FileNotFoundError:
        return "no sidecar .json (unfinished, or written by an older lt_utils)"
    except OSError as err:
        return f"its sidecar cannot be read ({err.strerror or err})"
    try:
        recorded = json.loads(sidecar).get("sha256")
    except (ValueError, AttributeError):
        recorded = None
    if not isinstance(recorded, str):
        return "its sidecar records no SHA-256 (damaged or written by an older lt_utils)"
    try:
        data = result.read_bytes()
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"
    if hashlib.sha256(data).hexdigest() != recorded:
        return "corrupt: its bytes do not match the SHA-256 in its sidecar"
    return data, sidecar


def _zip_member(zf: zipfile.ZipFile, name: str, data: bytes, when: tuple) -> None:
    info = zipfile.ZipInfo(name, date_time=when)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16  # a plain file: never a link
    zf.writestr(info, data, compresslevel=1)


def export_cache(path: str | os.PathLike, kinds: Iterable[str] | None = None) -> dict:
    """Write the complete results under ``cache_dir()`` (all kinds, or those of ``kinds``) into one zip archive,
    so that one GPU run serves a class: each student imports it with ``import_cache`` and trains nothing.

    Only results whose sidecar vouches for their bytes go in; a corrupt or unfinished one is reported in
    ``skipped`` and left out, as are checkpoint folders and temporary files. The archive is written atomically.

    Args:
        path: the archive to write (e.g. ``results.zip``).
        kinds: the sub-folders to export (e.g. ``["zeroshot", "finetune"]``); default: every kind.

    Returns:
        ``dict(archive, cache_dir, exported, bytes, kinds={kind: count}, skipped=[(path, reason)])``.
    """
    root = cache_dir()
    available = sorted(d.name for d in root.iterdir() if _is_kind(d)) if root.is_dir() else []
    if kinds is None:
        selected = available
    else:
        selected = list(dict.fromkeys(kinds))
        unknown = [k for k in selected if k not in available]
        if unknown:
            raise ValueError(f"No cached results of kind {', '.join(map(repr, unknown))} in {root}; it holds "
                             f"{', '.join(available) or 'none'} (set LT_CACHE_DIR to the cache to export).")
    archive = Path(path)
    if archive.is_dir():
        raise ValueError(f"{archive} is a folder; give the archive's file name, e.g. {archive / 'results.zip'}.")
    created = datetime.now(timezone.utc)
    summary = dict(archive=str(archive), cache_dir=str(root), exported=0, bytes=0, kinds={}, skipped=[])

    def write(tmp: Path) -> None:
        entries = []
        with zipfile.ZipFile(tmp, "w") as zf:
            for kind in selected:
                for result in sorted((root / kind).glob("*.pt")):
                    if not _RESULT_NAME.fullmatch(result.name) or result.is_symlink() or not result.is_file():
                        continue
                    rel = f"{kind}/{result.name}"
                    found = _complete_entry(result)
                    if isinstance(found, str):
                        summary["skipped"].append((rel, found))
                        continue
                    data, sidecar = found
                    side_rel = f"{kind}/{result.with_suffix('.json').name}"
                    _zip_member(zf, rel, data, created.timetuple()[:6])
                    _zip_member(zf, side_rel, sidecar, created.timetuple()[:6])
                    entries.append(dict(path=rel, kind=kind, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                        sidecar=dict(path=side_rel, size=len(sidecar),
                                                     sha256=hashlib.sha256(sidecar).hexdigest())))
                    summary["kinds"][kind] = summary["kinds"].get(kind, 0) + 1
                    summary["bytes"] += len(data) + len(sidecar)
            if not entries:
                raise ValueError(f"No complete cached results to export in {root} (LT_CACHE_DIR); run the chapters "
                                 "first, or point LT_CACHE_DIR at their cache.")
            manifest = dict(format=ARCHIVE_FORMAT, format_version=ARCHIVE_VERSION, lt_utils_version=_lt_utils_version(),
                            cache_version=CACHE_VERSION, source_hash=source_hash(),
                            created=created.isoformat(timespec="seconds"), entries=entries)
            _zip_member(zf, MANIFEST_NAME, json.dumps(manifest, indent=1).encode(), created.timetuple()[:6])
        summary["exported"] = len(entries)

    atomic_write(archive, write)
    return summary


def _check_member_name(name: str, what: str) -> None:
    """Refuse a name that could land outside the cache folder (absolute, ``..``, drive letters, backslashes)."""
    if (not name or PurePosixPath(name).is_absolute() or "\\" in name or ":" in name or "\x00" in name
            or any(p in ("..", ".") for p in name.split("/"))):
        raise CacheArchiveError(f"{what} {name!r} is an unsafe path (absolute, '..' or a drive): refused, "
                                "nothing was written. Do not import this archive.")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A member's bytes (the zip's CRC checked), at most ``limit`` + 1 of them (a zip bomb stops there)."""
    try:
        with zf.open(info) as f:
            return f.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
        raise CacheArchiveError(f"The member {info.filename!r} of the archive is damaged ({err}); nothing was "
                                "written. Copy the archive again (or export it again).") from err


def _member_sha256(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> tuple[str, int]:
    """SHA-256 and size of a member, streamed (a result may be large)."""
    digest, size = hashlib.sha256(), 0
    try:
        with zf.open(info) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                size += len(chunk)
                if size > limit:
                    break
                digest.update(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
        raise CacheArchiveError(f"The member {info.filename!r} of the archive is damaged ({err}); nothing was "
                                "written. Copy the archive again (or export it again).") from err
    return digest.hexdigest(), size


def _manifest_entry(entry: Any) -> dict:
    """One manifest entry, checked: a result ``kind/<digest>.pt`` beside its sidecar, sizes and SHA-256s."""
    def fail(problem):
        raise CacheArchiveError(f"The archive's manifest has a bad entry ({problem}): {entry!r}. Nothing was "
                                "written; export the archive again.")
    if not isinstance(entry, dict) or not isinstance(entry.get("sidecar"), dict):
        fail("not a result with a sidecar")
    files = (entry, entry["sidecar"])
    for f in files:
        if not isinstance(f.get("path"), str):
            fail("no path")
        _check_member_name(f["path"], "The manifest's entry")
        if not isinstance(f.get("size"), int) or f["size"] < 0 or not _SHA256.fullmatch(str(f.get("sha256"))):
            fail("no size or SHA-256")
    kind, _, name = entry["path"].partition("/")
    if (entry.get("kind") != kind or not _KIND_NAME.fullmatch(kind) or kind.endswith("_checkpoints")
            or not _RESULT_NAME.fullmatch(name) or entry["sidecar"]["path"] != f"{kind}/{name[:-3]}.json"):
        fail("not a cached result's path: KIND/<digest>.pt and KIND/<digest>.json")
    return entry


def _verify_archive(zf: zipfile.ZipFile, archive: Path) -> tuple[dict, list[dict]]:
    """The manifest and its entries once every member checks out: safe names, plain files, the manifest's
    format, nothing unlisted or missing, sizes and SHA-256s as listed, sidecars that vouch for their result."""
    infos = zf.infolist()
    for info in infos:
        _check_member_name(info.filename, "The archive's member")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise CacheArchiveError(f"The archive's member {info.filename!r} is a symbolic link: refused, nothing "
                                    "was written. Do not import this archive.")
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise CacheArchiveError(f"The archive holds {', '.join(twice)} twice (tampered with?); nothing was written.")
    members = {info.filename: info for info in infos}
    if MANIFEST_NAME not in members:
        raise CacheArchiveError(f"{archive} has no {MANIFEST_NAME}: it is not a cache archive made by "
                                "`python -m lt_utils cache export`.")
    text = _read_member(zf, members[MANIFEST_NAME], _MANIFEST_MAX_BYTES)
    try:
        manifest = json.loads(text)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise CacheArchiveError(f"The {MANIFEST_NAME} of {archive} does not parse as an lt_utils cache manifest; "
                                "export the archive again with `python -m lt_utils cache export`.")
    made_by = f"lt_utils {manifest.get('lt_utils_version', '?')}"
    if manifest.get("format_version") != ARCHIVE_VERSION:
        raise CacheArchiveError(f"{archive} has archive format {manifest.get('format_version')!r} ({made_by}); "
                                f"this lt_utils ({_lt_utils_version()}) reads format {ARCHIVE_VERSION}. Install "
                                f"the lt_utils it was made with, or export it again with this one.")
    if manifest.get("cache_version") != CACHE_VERSION:
        raise CacheArchiveError(f"{archive} holds results of cache version {manifest.get('cache_version')!r} "
                                f"({made_by}); this lt_utils ({_lt_utils_version()}) uses cache version "
                                f"{CACHE_VERSION} and would never find them. Install the lt_utils it was made with, "
                                "or export it again with this one.")
    if not isinstance(manifest.get("entries"), list):
        raise CacheArchiveError(f"The {MANIFEST_NAME} of {archive} lists no entries; export the archive again.")
    entries = [_manifest_entry(e) for e in manifest["entries"]]
    listed = {f["path"]: f for e in entries for f in (e, e["sidecar"])}
    if len(listed) != 2 * len(entries):
        raise CacheArchiveError(f"The {MANIFEST_NAME} of {archive} lists a file twice; nothing was written.")
    extra = sorted(set(members) - set(listed) - {MANIFEST_NAME})
    if extra:
        raise CacheArchiveError(f"{archive} holds {', '.join(map(repr, extra[:5]))}, not listed in its manifest "
                                "(tampered with?): refused, nothing was written.")
    missing = sorted(set(listed) - set(members))
    if missing:
        raise CacheArchiveError(f"{archive} lacks {', '.join(missing[:5])}, listed in its manifest (truncated?); "
                                "nothing was written. Copy the archive again.")
    for name, f in listed.items():
        sha, size = _member_sha256(zf, members[name], f["size"])
        if size != f["size"] or sha != f["sha256"]:
            raise CacheArchiveError(f"The member {name!r} of {archive} does not match its manifest (other "
                                    f"{'size' if size != f['size'] else 'SHA-256'}): damaged or tampered with; "
                                    "nothing was written. Copy the archive again (or export it again).")
    for e in entries:
        try:
            recorded = json.loads(_read_member(zf, members[e["sidecar"]["path"]], e["sidecar"]["size"]))["sha256"]
        except (ValueError, TypeError, KeyError):
            recorded = None
        if recorded != e["sha256"]:
            raise CacheArchiveError(f"The sidecar {e['sidecar']['path']!r} of {archive} does not vouch for "
                                    f"{e['path']!r} (another SHA-256): tampered with; nothing was written.")
    return manifest, entries


def _extract(zf: zipfile.ZipFile, name: str, sha256: str, target: Path) -> None:
    """Copy a member to ``target`` atomically, checking its SHA-256 again (the archive may change meanwhile)."""
    def write(tmp: Path) -> None:
        digest = hashlib.sha256()
        with zf.open(name) as src, open(tmp, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != sha256:
            raise CacheArchiveError(f"The member {name!r} changed while it was being imported; {target} was not "
                                    "written. Import again.")
    atomic_write(target, write)


def import_cache(path: str | os.PathLike, overwrite: bool = False) -> dict:
    """Add the results of an archive made by ``export_cache`` to ``cache_dir()``, so chapters load them instead
    of computing them (a class served by one GPU run).

    Every member is verified first (manifest, versions, names, sizes, SHA-256s, sidecars); if anything is off,
    ``CacheArchiveError`` is raised and nothing is written. A result already present with the same bytes is
    skipped; one present with other bytes is left alone and reported in ``conflicts`` (replaced only with
    ``overwrite``). Files are written atomically, the result before its sidecar, as ``cached`` writes them.

    Args:
        path: the archive (e.g. ``results.zip``).
        overwrite: replace results that differ from the archive's.

    Returns:
        ``dict(archive, cache_dir, entries, written, skipped, conflicts=[path], overwritten=[path], notes=[str])``.
    """
    archive = Path(path)
    if not archive.is_file():
        raise FileNotFoundError(f"No archive at {archive}; give the file written by `python -m lt_utils cache export`.")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, EOFError) as err:
        raise CacheArchiveError(f"{archive} is not a zip archive ({err}): damaged, or not made by "
                                "`python -m lt_utils cache export`.") from err
    root = cache_dir()
    with zf:
        manifest, entries = _verify_archive(zf, archive)
        plan = []  # (entry, state): decided for every entry before anything is written
        for e in entries:
            result, sidecar = root / e["path"], root / e["sidecar"]["path"]
            if not result.exists() and not result.is_symlink():
                plan.append((e, "new"))
            elif (file_sha256(result) == e["sha256"] and sidecar.is_file()
                  and file_sha256(sidecar) == e["sidecar"]["sha256"]):
                plan.append((e, "same"))
            else:
                plan.append((e, "differs"))
        summary = dict(archive=str(archive), cache_dir=str(root), entries=len(entries), written=0,
                       skipped=sum(state == "same" for _, state in plan),
                       conflicts=[e["path"] for e, state in plan if state == "differs" and not overwrite],
                       overwritten=[], notes=[])
        for e, state in plan:
            if state == "same" or (state == "differs" and not overwrite):
                continue
            sidecar = root / e["sidecar"]["path"]
            sidecar.unlink(missing_ok=True)  # never vouching for other bytes, as in ``cached``
            _extract(zf, e["path"], e["sha256"], root / e["path"])
            _extract(zf, e["sidecar"]["path"], e["sidecar"]["sha256"], sidecar)
            summary["written"] += 1
            if state == "differs":
                summary["overwritten"].append(e["path"])
    if manifest.get("source_hash") != source_hash():
        summary["notes"].append(
            f"the archive was made by lt_utils {manifest.get('lt_utils_version', '?')} with other code than this "
            f"lt_utils ({_lt_utils_version()}): results whose code differs are not found and are computed again")
    return summary
