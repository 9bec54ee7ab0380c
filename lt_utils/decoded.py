"""Decode once: the images of an image-list split (ImageNet-LT, Places-LT, iNaturalist 2018) decoded to one raw
uint8 file, memory-mapped, so that training and evaluation read pixels at GPU speed instead of decoding a JPEG per
image per epoch in DataLoader workers (ImageNet-LT's 115.8k training JPEGs can starve a GPU).

``decoded_dataset(ds, size)`` decodes every image of ``ds`` once with PIL (RGB), resizes its shorter side to
``size`` (PIL's antialiased bilinear, as torchvision's ``Resize`` on a PIL image), centre-crops ``size x size``
and stores the rows as ``images.u8`` (N x 3 x size x size, uint8, C order) with a ``meta.json`` sidecar. It returns
an ``lt_utils.data.InMemoryDataset`` whose ``images`` tensor is backed by a copy-on-write ``np.memmap`` of that
file: nothing is read into RAM up front (a 22 GB split is paged in as batches touch it), the file is never
written through, and ``images[a:b]`` is a view.

What it changes, and what it does not:

* Evaluation is unchanged. The test transform is Resize(R) + CenterCrop(s) with R = ``decode_size(s)``
  (``s * 8 // 7``: 256 for 224, the resize of ``lt_utils.augment``'s test transforms). Resize(R) then
  CenterCrop(R) keeps the centre R x R of the resized image, which contains the centre s x s, and the crop offsets
  agree (both round half to even, and (R - s) / 2 is whole for s = 224), so CenterCrop(s) of the stored square is
  CenterCrop(s) of the resized image: ``TensorAugment(s, train=False)`` on the square gives the same crop. The one
  difference from ``lt_utils.augment.torchvision_transforms`` on the original is whose resampling kernel made the
  resized pixels (PIL's here, torch's antialiased kernel there, after ``ToImage``): they differ by rounding, a
  level or two of 255. LIFT's five-crop test-time ensembling is not covered: its corner crops of Resize(248) reach
  past the square's sides.
* Training changes: RandomResizedCrop then runs on the square (as fast pipelines such as FFCV do), so crops never
  include the edges that the centre square drops from a non-square image (an eighth of a 4:3 image's width on
  each side). A documented change of LIFT's recipe, which crops anywhere in the whole image.

Files are written so that a crash never loses finished work nor leaves a file that looks complete: the pixels
go to ``images.u8.partial`` chunk by chunk (``CHUNK`` images), and ``progress.json`` (written atomically after
each chunk is flushed to disk) lists the finished chunks; a later call decodes only the missing ones. When all
are done the file is fsync'ed and renamed to ``images.u8``, and ``meta.json`` is written last. An ``images.u8``
of the wrong byte size is provably corrupt: it is deleted and decoded again, with a warning; a ``meta.json`` that
does not parse is an error naming the folder (nothing is deleted). Processes that decode into the same folder at
once (one per GPU under torchrun) take turns on a file lock; the later ones find the cache complete.

The folder is ``cache_dir()/decoded/<name>-<size>-<digest>`` (``$LT_DECODED_DIR`` replaces
``cache_dir()/decoded``: data may live on a big scratch disk); the digest hashes the split file's bytes, the
resolved image root, the listed entries (iNaturalist's val and test are two parts of one file), ``size`` and
``DECODE_VERSION``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .augment import TensorAugment
from .cache import atomic_write_text, cache_dir, file_sha256
from .data import InMemoryDataset
from .phases import phase
from .profiles import hide_progress

try:
    import fcntl  # optional: POSIX only; without it (Windows) concurrent decodes into one folder are not serialised
except ImportError:
    fcntl = None

DECODE_VERSION = 1  # part of every folder's digest: raise it when the stored pixels change
CHUNK = 1024        # images per chunk at most: the unit of progress and of resuming
FORMAT = "lt_utils decoded images"
# what a broken image file raises in PIL (UnidentifiedImageError and truncation are OSErrors)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_size(image_size: int) -> int:
    """The side of the stored squares for a model of ``image_size``: the test transform's resize, ``image_size *
    8 // 7`` (256 for 224), read from ``TensorAugment`` (the one home of that rule), so that CenterCrop of the
    square is the test transform's crop."""
    return TensorAugment(int(image_size), train=False).test_resize


def decode_image(path, size: int) -> np.ndarray:
    """One image as stored: PIL RGB, shorter side resized to ``size`` (bilinear with antialiasing, as
    torchvision's ``Resize(size)`` computes the other side: ``int(size * long / short)``), centre crop ``size x
    size`` (torchvision's rounding); a uint8 array 3 x size x size. PIL's errors pass through."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    image = image.resize((new_w, new_h), Image.BILINEAR, reducing_gap=None)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def default_folder(dataset, size: int) -> Path:
    """Where ``decoded_dataset(dataset, size)`` keeps its files when no ``folder`` is given."""
    size = _check_size(size)
    return _default_folder(dataset, size, _digest(_inputs(dataset, size)))


def _default_folder(dataset, size: int, digest: str) -> Path:
    parent = os.environ.get("LT_DECODED_DIR") or cache_dir() / "decoded"
    name = getattr(dataset, "name", None) or Path(dataset.split_file).stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))
    return Path(parent).expanduser() / f"{name}-{size}-{digest}"


def decoded_dataset(dataset, size: int, folder=None, *, workers: int | None = None,
                    progress: bool = True) -> InMemoryDataset:
    """The images of ``dataset`` decoded once to a memory-mapped uint8 cache (see the module's docstring).

    Args:
        dataset: an ``lt_utils.data.ImageListDataset`` (anything with ``paths``, ``targets``, ``classnames``,
            ``group_counts``, ``ids``, ``split_file``, ``root``; ``line_numbers`` and ``name`` if it has them).
        size: the side of the stored squares; ``decode_size(image_size)`` for a model of ``image_size``.
        folder: where the files go; None: ``default_folder(dataset, size)``.
        workers: decoding processes; None: ``min(os.cpu_count(), 16)``; 0 decodes in this process.
        progress: show a progress bar, and one line saying whether the images were decoded now or loaded.

    Returns:
        ``InMemoryDataset(images, targets, classnames, ids=dataset.ids, group_counts=dataset.group_counts)``,
        ``images`` a uint8 N x 3 x size x size tensor backed by the file (copy-on-write: writes stay in memory).
    """
    size = _check_size(size)
    workers = _check_workers(workers)
    inputs = _inputs(dataset, size)
    digest = _digest(inputs)
    folder = _default_folder(dataset, size, digest) if folder is None else Path(folder).expanduser()
    n = len(dataset.paths)
    shape = (n, 3, size, size)
    what = Path(dataset.split_file).name + (f" ({dataset.name})" if getattr(dataset, "name", None) else "")
    images = _complete(folder, shape, digest, repair=False)
    if images is None:
        with _folder_lock(folder):
            # under the lock: another process may have finished meanwhile, and only here are files repaired
            images = _complete(folder, shape, digest, repair=True)
            if images is None:
                start = time.perf_counter()
                decoded = _decode_missing(dataset, folder, shape, digest, workers, progress)
                seconds = time.perf_counter() - start
                meta = dict(format=FORMAT, decode_version=DECODE_VERSION, digest=digest, count=n, size=size,
                            shape=list(shape), dtype="uint8", layout="N x 3 x size x size, RGB, C order",
                            inputs=inputs, name=getattr(dataset, "name", None), decode_seconds=seconds)
                _finish(folder, meta)
                if progress:
                    resumed = f" (resumed: {n - decoded} were decoded before)" if decoded < n else ""
                    print(f"decoded {decoded} images in {seconds:.1f} s into {folder}{resumed}")
                return _dataset(dataset, _open(folder, shape))
    if progress:
        print(f"decoded images of {what}: loaded from {folder}")
    return _dataset(dataset, images)


# ---------------------------------------------------------------------------------------------------------------
# Inputs and checks

def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer (the side of the stored squares, e.g. "
                         f"decode_size(224) = 256), got {size!r}.")
    return int(size)


def _check_workers(workers) -> int:
    if workers is None:
        return min(os.cpu_count() or 1, 16)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0 decodes in this process), got {workers!r}.")
    return int(workers)


def _relative(path, prefix: str) -> str:
    path = str(path)  # a string prefix, not PurePath.relative_to: 437k paths for iNat
    return path[len(prefix):] if path.startswith(prefix) else path


def _inputs(dataset, size: int) -> dict:
    """What the stored bytes depend on (hashed into the folder's digest and recorded in ``meta.json``)."""
    missing = [a for a in ("paths", "targets", "classnames", "group_counts", "ids", "split_file", "root")
               if not hasattr(dataset, a)]
    if missing:
        raise TypeError(f"decoded_dataset needs an image-list dataset (lt.load_dataset('imagenet_lt' | "
                        f"'places_lt' | 'inat2018', ...)); {type(dataset).__name__} has no {', '.join(missing)}.")
    if len(dataset.paths) == 0:
        raise ValueError("the dataset lists no images.")
    root = Path(dataset.root).expanduser()
    prefix = str(root).rstrip(os.sep) + os.sep
    listed = "\n".join(_relative(p, prefix) for p in dataset.paths).encode()
    return dict(split_file=str(dataset.split_file), split_file_sha256=file_sha256(dataset.split_file),
                root=str(root.resolve()), entries_sha256=hashlib.sha256(listed).hexdigest(), size=size,
                decode_version=DECODE_VERSION)


def _digest(inputs: dict) -> str:
    keyed = {k: v for k, v in inputs.items() if k != "split_file"}  # the file's bytes count, not where it lies
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def _dataset(dataset, images: torch.Tensor) -> InMemoryDataset:
    return InMemoryDataset(images, dataset.targets, dataset.classnames, ids=dataset.ids,
                           group_counts=dataset.group_counts)


# ---------------------------------------------------------------------------------------------------------------
# The complete cache

def _read_json(path: Path, folder: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RuntimeError(f"{path.name} in {folder} is not readable JSON ({err}), so the decoded images there "
                           f"cannot be trusted. Delete the folder {folder} and call decoded_dataset again to "
                           "decode them anew.") from err
    if not isinstance(value, dict):
        raise RuntimeError(f"{path.name} in {folder} is not a JSON object: delete the folder {folder} and call "
                           "decoded_dataset again to decode the images anew.")
    return value


def _open(folder: Path, shape: tuple) -> torch.Tensor:
    """``images.u8`` as a uint8 tensor over a copy-on-write memory map: paged in on use, never written through."""
    return torch.from_numpy(np.memmap(folder / "images.u8", dtype=np.uint8, mode="c", shape=shape))


def _complete(folder: Path, shape: tuple, digest: str, repair: bool) -> torch.Tensor | None:
    """The memory-mapped images when ``folder`` holds a complete cache of ``digest``, else None. With ``repair``
    (under the folder's lock) a provably corrupt ``images.u8`` is deleted, with a warning, and one renamed just
    before a crash (all chunks done, no meta.json yet) is handed back to ``_decode_missing`` to be finished."""
    images_file, meta_file = folder / "images.u8", folder / "meta.json"
    meta = _read_json(meta_file, folder)
    if meta is not None and meta.get("digest") != digest:
        raise ValueError(f"{folder} holds decoded images of something else ({meta.get('inputs', {}).get('split_file')}"
                         f", size {meta.get('size')}): pass another folder= (or None for the default one).")
    nbytes = math.prod(shape)
    size_ok = images_file.is_file() and images_file.stat().st_size == nbytes
    if meta is not None and size_ok:
        return _open(folder, shape)
    if not repair:
        return None
    if images_file.is_file() and not size_ok:
        warnings.warn(f"{images_file} has {images_file.stat().st_size} bytes, not the {nbytes} of {shape[0]} images "
                      f"of 3 x {shape[2]} x {shape[3]}: it is corrupt (truncated?), so it is deleted and the images "
                      "are decoded again.", stacklevel=3)
        images_file.unlink()
        meta_file.unlink(missing_ok=True)
    elif meta is not None:  # meta.json without images.u8
        warnings.warn(f"{folder} has meta.json but no images.u8 (deleted?): decoding the images again.", stacklevel=3)
        meta_file.unlink()
    elif size_ok:  # images.u8 without meta.json: a crash between the rename and meta.json, or not ours
        state = _read_progress(folder)
        chunks = None if state is None else math.ceil(shape[0] / state["chunk"])
        if state is None or state["digest"] != digest or len(set(state["done"])) != chunks:
            raise ValueError(f"{images_file} has no meta.json and no progress.json saying that every chunk was "
                             f"decoded: it was not finished by decoded_dataset for this split. Delete {folder} to "
                             "decode the images again.")
        os.replace(images_file, folder / "images.u8.partial")  # every chunk is done: _finish renames it back
    return None


def _finish(folder: Path, meta: dict) -> None:
    """All chunks are on disk: fsync, rename the partial file, write meta.json last, drop progress.json."""
    partial, images_file = folder / "images.u8.partial", folder / "images.u8"
    if partial.is_file():
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, images_file)
        _fsync_dir(folder)
    atomic_write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", folder / "meta.json")
    (folder / "progress.json").unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some systems cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _folder_lock(folder: Path):
    """Serialise decodes into ``folder`` across processes (torchrun starts one per GPU)."""
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(folder / "lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that decodes images into {folder}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------------------
# Decoding, resumable

def _read_progress(folder: Path) -> dict | None:
    """``progress.json`` when it parses and is well-formed, else None (a scratch file: a bad one only costs time)."""
    path = folder / "progress.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(state, dict) and isinstance(state.get("digest"), str) and isinstance(state.get("chunk"), int) \
                and state["chunk"] > 0 and isinstance(state.get("done"), list):
            return state
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    warnings.warn(f"{path} is malformed: decoding every chunk again.", stacklevel=4)
    return None


def _write_progress(folder: Path, digest: str, chunk: int, done: set) -> None:
    atomic_write_text(json.dumps(dict(digest=digest, chunk=chunk, done=sorted(done))), folder / "progress.json")


@phase("decoding")
def _decode_missing(dataset, folder: Path, shape: tuple, digest: str, workers: int, progress: bool) -> int:
    """Decode the chunks that ``progress.json`` does not list into ``images.u8.partial``; returns how many images
    were decoded now."""
    n, nbytes = shape[0], math.prod(shape)
    partial = folder / "images.u8.partial"
    state = _read_progress(folder)
    if state is not None and state["digest"] == digest and partial.is_file() and partial.stat().st_size == nbytes:
        chunk = state["chunk"]
        done = {c for c in state["done"] if isinstance(c, int) and 0 <= c < math.ceil(n / chunk)}
    else:
        chunk, done = min(CHUNK, max(1, math.ceil(n / (4 * max(workers, 1))))), set()
        with open(partial, "wb") as f:
            f.truncate(nbytes)  # sparse: the chunks fill it in any order
        _write_progress(folder, digest, chunk, done)
    todo = [c for c in range(math.ceil(n / chunk)) if c not in done]
    line_numbers = getattr(dataset, "line_numbers", None)

    def count(c):  # images in chunk c
        return min(n, (c + 1) * chunk) - c * chunk

    def task(c):
        rows = range(c * chunk, min(n, (c + 1) * chunk))
        lines = [line_numbers[r] for r in rows] if line_numbers is not None else [None] * len(rows)
        return (str(partial), shape, rows.start, [str(dataset.paths[r]) for r in rows], lines,
                str(dataset.split_file))

    with tqdm(total=n, initial=n - sum(count(c) for c in todo), unit="img", desc="decoding images",
              disable=hide_progress(progress)) as bar:
        if workers == 0 or len(todo) <= 1:
            for c in todo:
                _decode_chunk(*task(c))
                done.add(c)
                _write_progress(folder, digest, chunk, done)
                bar.update(count(c))
        else:
            with ProcessPoolExecutor(min(workers, len(todo))) as pool:
                pending = {pool.submit(_decode_chunk, *task(c)): c for c in todo}
                try:
                    while pending:
                        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for future in finished:
                            c = pending.pop(future)
                            future.result()  # a worker's error (e.g. a corrupt image) is raised here
                            done.add(c)
                            _write_progress(folder, digest, chunk, done)
                            bar.update(count(c))
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)  # chunks already running finish, unrecorded
                    raise
    return sum(count(c) for c in todo)


def _decode_chunk(partial: str, shape: tuple, start: int, paths: list, lines: list, split_file: str) -> int:
    """Decode ``paths`` into rows ``start, start + 1, ...`` of the partial file and flush them to disk (so that
    progress.json may list the chunk). Runs in a worker process, or in this one with ``workers=0``."""
    size = shape[2]
    rows = np.memmap(partial, dtype=np.uint8, mode="r+", offset=start * math.prod(shape[1:]),
                     shape=(len(paths),) + tuple(shape[1:]))
    for i, (path, line) in enumerate(zip(paths, lines)):
        try:
            rows[i] = decode_image(path, size)
        except _DECODE_ERRORS as err:
            where = f"{split_file}:{line}" if line is not None else split_file
            raise RuntimeError(f"Could not decode {path} (listed at {where}): {type(err).__name__}: {err}. Replace "
                               "the file with an intact copy from the dataset's release (or remove its line from the "
                               "split file) and call decoded_dataset again: the chunks decoded so far are "
                               "kept.") from err
    rows.flush()
    del rows
    return start
