"""Data: long-tailed datasets (CIFAR-100-LT, ImageNet-LT, Places-LT, iNaturalist 2018; the lab world registers
itself), balanced subsets, and loaders that batch in-memory data on its device so that data loading is never the
bottleneck.

Two kinds of dataset, one interface (``.targets``, ``.classnames``, ``.class_counts``, ``.group_counts`` (the
counts that define the D-groups), ``.ids`` (the samples' ids in their source: disjoint across splits), ``len``,
``ds[i] -> (image, label)``):
- ``InMemoryDataset`` (CIFAR, lab, and image lists decoded once by ``lt_utils.decoded``): every image in one
  uint8 tensor ``.images`` (N x 3 x H x W). Batches are cut by index, on the GPU if the tensor lives there, and
  augmented there by ``TensorAugment``.
- ``ImageListDataset`` (ImageNet-LT, Places-LT, iNaturalist 2018): a split file of "relative/path label" lines
  over an image folder, decoded with PIL per image and transformed with ``lt_utils.augment.torchvision_transforms``
  in DataLoader workers. Its ``ids`` hash the relative paths, so two splits that list the same file share an id.

Every dataset has three disjoint splits, train, a balanced val and a balanced test (val chooses, test only
scores). Where the source has no separate val, val is held out of its test images by a fixed draw
(``held_out_rows``, seed 0, independent of the training seed): 20 per class of CIFAR-100's test file, and one
per class of iNaturalist 2018's official val (3 per class), whose other 2 per class are the test split.

Datasets are found by name in a registry (``register_dataset``): this module registers CIFAR-100-LT,
ImageNet-LT, Places-LT and iNaturalist 2018; ``lt_utils.lab`` registers the lab world, so this module knows nothing
of the lab. CIFAR-100's pickled files are read by a restricted unpickler (no global beyond NumPy's array
rebuilders): a folder from elsewhere cannot run code; iNaturalist's class names are plain JSON.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image
from tqdm.auto import tqdm

from .cache import atomic_write
from .groups import data_groups
from .profiles import default_data_root, hide_progress

DATASET_NAMES = ("cifar100_lt", "imagenet_lt", "places_lt", "inat2018", "lab")


# ---------------------------------------------------------------------------------------------------------------
# Long-tailed profile

def long_tail_counts(num_classes: int, n_max: float, imbalance_ratio: float) -> list[int]:
    """Images per class of the exponential long-tail profile: ``n_i = int(n_max * (1/IR) ** (i / (C - 1)))``.

    Class 0 keeps ``n_max`` images, class ``C - 1`` keeps ``n_max / IR``. With CIFAR-100's ``n_max = 500`` the
    totals are the standard ones: IR 100 -> 10,847, IR 50 -> 12,608, IR 10 -> 19,573.
    """
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (the profile runs from class 0 to C - 1), "
                         f"got {num_classes!r}.")
    if not n_max >= 1:  # also catches NaN
        raise ValueError(f"n_max (images of the largest class) must be >= 1, got {n_max!r}.")
    if not imbalance_ratio >= 1:
        raise ValueError(f"imbalance_ratio must be >= 1 (n_max / n_min; 1 = balanced; CIFAR-100-LT uses 10, 50 "
                         f"or 100), got {imbalance_ratio!r}.")
    num_classes = int(num_classes)
    return [int(n_max * (1 / imbalance_ratio) ** (i / (num_classes - 1))) for i in range(num_classes)]


# ---------------------------------------------------------------------------------------------------------------
# Datasets

def is_in_memory(data) -> bool:
    """Whether ``data`` holds its images in one tensor ``.images`` (the fast, batched-by-index path)."""
    return isinstance(getattr(data, "images", None), torch.Tensor)


class InMemoryDataset(torch.utils.data.Dataset):
    """All images in one uint8 tensor: ``images`` (N x 3 x H x W), ``targets`` (N labels), ``classnames``.

    ``ds[i]`` is ``(image, label)``: the uint8 3 x H x W image (or ``transform(image)``) and an int.
    ``ds.to("cuda")`` returns the same data resident on the GPU (still uint8: CIFAR-100-LT takes 33 MB), the
    fast path of ``make_loader`` and ``lt.train``.

    ``ids`` (optional, a CPU LongTensor): one id per sample, unique within its source (e.g. the row in CIFAR's
    files), so that splits can be checked to be disjoint; None when built without. ``group_counts``: the
    training counts that define the D-groups (``lt.data_groups(ds.class_counts, reference=ds.group_counts)``);
    by default the dataset's own ``class_counts``. ``subset`` and ``to`` keep both.
    """

    def __init__(self, images, targets, classnames: Sequence[str], transform: Callable | None = None, *,
                 ids=None, group_counts=None):
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a uint8 tensor N x 3 x H x W, got {images.dtype} of shape "
                             f"{tuple(images.shape)}; convert with (x * 255).round().to(torch.uint8) and "
                             "permute HWC arrays to CHW.")
        targets = torch.as_tensor(targets)
        if targets.dim() != 1 or len(targets) != len(images) or targets.is_floating_point():
            raise ValueError(f"targets must hold one integer label per image ({len(images)}), got "
                             f"{targets.dtype} of shape {tuple(targets.shape)}.")
        classnames = [str(c) for c in classnames]
        if not classnames:
            raise ValueError("classnames is empty: give one name per class.")
        targets = targets.to(device=images.device, dtype=torch.long)
        if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= len(classnames)):
            raise ValueError(f"targets must lie in [0, {len(classnames)}) (one class per name), got labels from "
                             f"{int(targets.min())} to {int(targets.max())}.")
        self.images, self.targets, self.classnames, self.transform = images, targets, classnames, transform
        self.class_counts = torch.bincount(targets.cpu(), minlength=len(classnames))
        self.ids = None if ids is None else _check_ids(ids, len(images))
        self.group_counts = self.class_counts if group_counts is None else _check_group_counts(group_counts,
                                                                                                len(classnames))

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def subset(self, indices) -> "InMemoryDataset":
        """The images at ``indices`` (ints or a boolean mask), same class names and transform."""
        indices = torch.as_tensor(indices, device=self.images.device)
        if indices.dtype == torch.bool:
            indices = indices.nonzero().flatten()
        ids = None if self.ids is None else self.ids[indices.cpu()]
        # a subset keeps the groups of its source: a few images of a head class are still a head class
        return InMemoryDataset(self.images[indices], self.targets[indices], self.classnames, self.transform, ids=ids,
                               group_counts=self.group_counts)

    def to(self, device) -> "InMemoryDataset":
        """The same dataset with ``images`` (uint8) and ``targets`` on ``device`` (``ids`` stay on the CPU)."""
        return InMemoryDataset(self.images.to(device, non_blocking=True), self.targets.to(device, non_blocking=True),
                               self.classnames, self.transform, ids=self.ids, group_counts=self.group_counts)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape[1:]))
        return (f"InMemoryDataset({len(self)} images {shape} uint8 on {self.images.device}, "
                f"{self.num_classes} classes)")


def _check_ids(ids, n: int) -> torch.Tensor:
    ids = torch.as_tensor(ids).cpu()
    if ids.dim() != 1 or len(ids) != n or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"ids must hold one id per image ({n} integers), got {ids.dtype} of shape "
                         f"{tuple(ids.shape)}.")
    ids = ids.long()
    if len(torch.unique(ids)) != n:
        raise ValueError("ids must be unique within a dataset (one per sample of its source).")
    return ids


def _check_group_counts(counts, num_classes: int) -> torch.Tensor:
    counts = torch.as_tensor(counts).cpu()
    if counts.dim() != 1 or len(counts) != num_classes or counts.is_floating_point() or (counts < 0).any():
        raise ValueError(f"group_counts must hold one count per class ({num_classes} non-negative integers), got "
                         f"{counts.dtype} of shape {tuple(counts.shape)}.")
    return counts.long()


class ImageListDataset(torch.utils.data.Dataset):
    """Images listed in a split file, one ``relative/path label`` per line, below the folder ``root``.

    ``ds[i]`` is ``(image, label)``: the PIL RGB image (or ``transform(image)``) and an int. ``paths`` holds the
    absolute paths; ``targets``, ``classnames``, ``class_counts`` as for every dataset here; ``group_counts``
    (the counts that define the D-groups) defaults to ``class_counts``.

    ``rows`` (optional): the indices of the split file's entries to keep, e.g. iNaturalist's val and test, two
    disjoint parts of one file; None keeps them all. ``line_numbers``: each image's line in ``split_file`` (for
    error messages). ``ids``: one int64 per image, the first 8 bytes of the SHA-1 of its relative path (as listed,
    normalised as a POSIX path) masked to 63 bits: stable across processes and machines, and the same file listed
    by two splits gets the same id, so ``lt.knn_predict(bank_ids=, query_ids=)`` catches the overlap. ``name``
    (optional): what the data is, e.g. ``"inat2018_test"`` (names ``lt_utils.decoded``'s cache folder).
    """

    def __init__(self, root, split_file, classnames: Sequence[str], transform: Callable | None = None, *,
                 group_counts=None, rows=None, name: str | None = None):
        self.root, self.split_file = Path(root).expanduser(), Path(split_file)
        self.classnames, self.transform, self.name = list(classnames), transform, name
        rel_paths, labels, line_numbers = _read_split_lines(self.split_file, len(self.classnames))
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            if len(rows) == 0 or rows.min() < 0 or rows.max() >= len(rel_paths):
                raise ValueError(f"rows must index the {len(rel_paths)} entries of {self.split_file.name} "
                                 "(at least one).")
            rel_paths = [rel_paths[r] for r in rows]
            labels = [labels[r] for r in rows]
            line_numbers = [line_numbers[r] for r in rows]
        paths = [self.root / p for p in rel_paths]
        if not paths[0].is_file():  # one cheap check catches a wrong root before training starts
            raise FileNotFoundError(f"{self.split_file.name} lists {paths[0].relative_to(self.root)} but "
                                    f"{paths[0]} does not exist: root= must be the folder that holds the images "
                                    "(the split paths are relative to it).")
        self.paths, self.line_numbers = paths, line_numbers
        self.targets = torch.tensor(labels, dtype=torch.long)
        self.ids = path_ids(rel_paths)
        if len(torch.unique(self.ids)) != len(self.ids):
            seen: dict[int, int] = {}
            for line, i in zip(line_numbers, self.ids.tolist()):
                if i in seen:
                    raise ValueError(f"{self.split_file}: lines {seen[i]} and {line} list the same image; a split "
                                     "lists each image once (remove the duplicate line).")
                seen[i] = line
        self.class_counts = torch.bincount(self.targets, minlength=len(self.classnames))
        self.group_counts = self.class_counts if group_counts is None else _check_group_counts(
            group_counts, len(self.classnames))

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            image = image.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def __repr__(self) -> str:
        return f"ImageListDataset({len(self)} images from {self.split_file.name}, {self.num_classes} classes)"


def path_ids(rel_paths: Sequence[str]) -> torch.Tensor:
    """Sample ids of image files: the first 8 bytes of the SHA-1 of each relative path (normalised as a POSIX
    path: ``./a//b.jpg`` is ``a/b.jpg``), masked to 63 bits (a non-negative int64). Equal paths, equal ids."""
    mask = (1 << 63) - 1

    def normal(p: str) -> str:  # the slow path only where something could change (437k paths for iNat)
        return PurePosixPath(p).as_posix() if p.startswith("./") or "/./" in p or "//" in p else p

    ids = [int.from_bytes(hashlib.sha1(normal(p).encode()).digest()[:8], "big") & mask for p in rel_paths]
    return torch.tensor(ids, dtype=torch.long)


def read_split_file(split_file: Path, num_classes: int) -> tuple[list[str], list[int]]:
    """The ``relative/path label`` lines of an OLTR split file: (relative paths, labels), checked."""
    paths, labels, _ = _read_split_lines(split_file, num_classes)
    return paths, labels


def _read_split_lines(split_file: Path, num_classes: int, hint: str = "") -> tuple[list[str], list[int], list[int]]:
    """``read_split_file`` plus each entry's line number; ``hint`` ends the message of a label out of range."""
    paths, labels, line_numbers = [], [], []
    with open(split_file) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{split_file}:{line_no}: expected 'relative/path label', got {line!r}.")
            label = int(parts[1])
            if not 0 <= label < num_classes:
                raise ValueError(f"{split_file}:{line_no}: label {label} is outside [0, {num_classes}).{hint}")
            paths.append(parts[0])
            labels.append(label)
            line_numbers.append(line_no)
    if not paths:
        raise ValueError(f"{split_file} lists no images.")
    return paths, labels, line_numbers


# ---------------------------------------------------------------------------------------------------------------
# Loading

@dataclass(frozen=True)
class DatasetSpec:
    """How to load one registered dataset: ``loader(root, split, imbalance_ratio, transform, download, seed)``,
    its ``splits``, whether ``imbalance_ratio`` applies, the lt_utils ``modules`` whose code makes it (part
    of the cache keys of every result computed on it), and whether ``download=True`` can fetch it."""
    loader: Callable
    splits: tuple
    variable_ratio: bool
    modules: tuple
    downloadable: bool = False


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, loader: Callable, splits: Sequence[str], *, variable_ratio: bool = False,
                     modules: Sequence[str] = ("data",), downloadable: bool = False) -> None:
    """Make ``load_dataset(name, ...)`` call ``loader(root, split, imbalance_ratio, transform, download, seed)``.
    ``modules``: the lt_utils modules whose code makes the data (e.g. ``lt.lab.WORLD_MODULES``);
    ``downloadable``: ``download=True`` fetches it when missing (CIFAR-100; not the licensed image sets)."""
    _DATASETS[name] = DatasetSpec(loader, tuple(splits), variable_ratio, tuple(modules), downloadable)


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names."""
    return tuple(_DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name`` (ValueError listing the known names otherwise)."""
    if name not in _DATASETS:
        raise ValueError(f"Unknown dataset {name!r}: choose one of {', '.join(_DATASETS)}.")
    return _DATASETS[name]


def load_dataset(name: str, root=None, split: str = "train", imbalance_ratio: float = 100,
                 transform: Callable | None = None, download: bool = False, seed: int = 0):
    """One split of a long-tailed dataset. Used by chapters 1, 2 and 4.

    Args:
        name: ``"cifar100_lt"``, ``"imagenet_lt"``, ``"places_lt"``, ``"inat2018"`` or ``"lab"`` (the generated
            world ``lt.lab.make_world(seed, imbalance_ratio)``), each with the splits ``train``, ``val``, ``test``
            (CIFAR-100's val is a fixed balanced fifth of its test file: see ``cifar100_val_rows``; iNaturalist
            2018's val is one image per class of its official val, a fixed draw, and its test the other two per
            class: see ``held_out_rows``).
        root: the data folder; None means ``$LT_DATA_ROOT`` or ``~/data``. CIFAR-100 is read from
            ``root/cifar-100-python/``; ImageNet-LT / Places-LT from the OLTR split files
            (``ImageNet_LT_train.txt``, ...) in ``root`` or ``root/ImageNet_LT`` (``root/Places_LT``) over the
            image folder ``root``; iNaturalist 2018 from ``iNaturalist18_train.txt`` / ``iNaturalist18_val.txt``
            and the un-obfuscated ``categories.json`` in ``root`` or ``root/iNaturalist18``, over ``root``
            (which holds ``train_val2018/``).
        split: which split.
        imbalance_ratio: CIFAR-100-LT and the lab: train keeps ``long_tail_counts(100, 500, imbalance_ratio)``
            images per class (CIFAR: the first n_i of a per-class shuffle seeded ``seed``, 0 = the peers'
            selection). The D-groups stay those of IR 100 (``ds.group_counts``).
        transform: applied per image (``ds[i]``).
        download: fetch CIFAR-100 when missing (ImageNet and Places365 need a licence, iNaturalist is 120 GB:
            never downloaded).
        seed: CIFAR-100-LT's selection shuffle; the lab world's seed.

    Returns:
        A dataset with ``.targets``, ``.classnames``, ``.class_counts``, ``.group_counts`` (the counts that
        define its D-groups: ``lt.data_groups(ds.class_counts, reference=ds.group_counts)``), ``len`` and
        ``ds[i] -> (image, label)``: an ``InMemoryDataset`` (uint8 N x 3 x H x W ``.images`` and sample
        ``.ids``; CIFAR, lab) or an ``ImageListDataset`` (PIL images; ImageNet-LT, Places-LT, iNaturalist 2018;
        ``.ids`` hash the relative paths; ``lt_utils.decoded.decoded_dataset`` turns it into the former).
    """
    spec = dataset_spec(name)
    if split not in spec.splits:
        raise ValueError(f"{name} has the splits {', '.join(spec.splits)}; got split={split!r}.")
    if not imbalance_ratio >= 1:
        raise ValueError(f"imbalance_ratio must be >= 1 (1 = balanced; CIFAR-100-LT uses 10, 50 or 100), got "
                         f"{imbalance_ratio!r}.")
    if not spec.variable_ratio and imbalance_ratio != 100:
        variable = ", ".join(n for n, s in _DATASETS.items() if s.variable_ratio)
        raise ValueError(f"imbalance_ratio applies only to {variable}; {name} has a fixed split (leave it at 100).")
    root = default_data_root() if root is None else Path(root).expanduser()
    return spec.loader(root, split, imbalance_ratio, transform, download, seed)


# The real archive (torchvision.datasets.CIFAR100's url and tgz_md5): the download is checked against this MD5.
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_TGZ_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_VAL_PER_CLASS = 20     # val: 20 images per class held out of the 10,000 test images
CIFAR100_TEST_ID_OFFSET = 50_000  # sample ids: train row r -> r, test row r -> 50,000 + r (never collide)
_CIFAR100_VAL_SEED = 0           # fixed: the val / test cut never moves with the training seed
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # NumPy's array rebuilder, wherever this NumPy keeps it


class _RefusedGlobal(pickle.UnpicklingError):
    pass


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 writes bytes in a protocol-2 pickle, for latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _RefusedGlobal(f"_codecs.encode with encoding {encoding!r} (only latin1 rebuilds bytes)")
    return text.encode("latin1")


class CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python-format files and nothing else: their dicts of lists, strings and ints need no
    global, their one uint8 array needs NumPy's rebuilders (``numpy.core`` when written by NumPy 1, ``numpy._core``
    by NumPy 2) and Python 3's protocol 2 rebuilds bytes with ``_codecs.encode``. Any other global (the way a
    pickle runs code) raises ``UnpicklingError`` before it is called."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _RefusedGlobal(f"{module}.{name}")
        return self.ALLOWED[(module, name)]


def _read_cifar_file(path: Path) -> dict:
    with open(path, "rb") as f:
        entry = CifarUnpickler(f, encoding="latin1").load()  # latin1: the files were written by Python 2
    if not isinstance(entry, dict):
        raise ValueError(f"expected a dict, got {type(entry).__name__}")
    return entry


def read_cifar100(folder: Path, file: str):
    """``(images uint8 N x 3 x 32 x 32, labels int64 (N,), class names)`` of ``folder/file`` (``train`` or
    ``test``) and ``folder/meta``, through ``CifarUnpickler``; ValueError / UnpicklingError when malformed."""
    names = _read_cifar_file(folder / "meta")["fine_label_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError("meta['fine_label_names'] is not a list of class names")
    entry = _read_cifar_file(folder / file)
    data, labels = entry["data"], np.asarray(entry["fine_labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{file}['data'] is not a uint8 N x 3072 array")
    in_range = labels.dtype.kind in "iu" and ((labels >= 0) & (labels < len(names))).all()
    if labels.shape != (len(data),) or not in_range:
        raise ValueError(f"{file}['fine_labels'] is not one label in [0, {len(names)}) per image")
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))  # rows are CHW-ordered
    return images, labels.astype(np.int64), names


def cifar100_val_rows(test_labels, num_classes: int = 100, per_class: int = CIFAR100_VAL_PER_CLASS) -> np.ndarray:
    """Rows of CIFAR-100's test file held out as the val split, sorted: ``held_out_rows`` with the fixed seed 0
    (independent of the training seed)."""
    counts = np.bincount(np.asarray(test_labels), minlength=num_classes)
    if counts.min() <= per_class:
        c = int(counts.argmin())
        raise ValueError(f"The val split holds out {per_class} images per class of CIFAR-100's test file, but it has "
                         f"only {counts[c]} of class {c} (the real file has 100 per class): use the real files.")
    return held_out_rows(test_labels, per_class, _CIFAR100_VAL_SEED, num_classes)


def held_out_rows(labels, per_class: int, seed: int, num_classes: int | None = None) -> np.ndarray:
    """Rows of a balanced file held out as a val split, sorted: the first ``per_class`` of each class after a
    per-class shuffle by ``np.random.RandomState(seed)`` (``lift_selection``; the same in any process). The
    loaders pass a fixed seed, independent of the training seed, so the val / test cut never moves. Every class
    must keep at least one row for the test split."""
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if isinstance(per_class, bool) or int(per_class) != per_class or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}.")
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() <= per_class:
        c = int(counts.argmin())
        raise ValueError(f"Holding out {per_class} images per class as val leaves no test image of class {c} (it has "
                         f"{counts[c]}): every class needs more than {per_class} in the file val is held out of.")
    return np.sort(lift_selection(labels, [int(per_class)] * num_classes, seed))


def lift_selection(targets, counts: Sequence[int], seed: int = 0) -> np.ndarray:
    """Indices kept by CIFAR-100-LT: for each class c in label order, the first ``counts[c]`` of its indices
    after a shuffle, concatenated class by class.

    This is LIFT's ``IMBALANCECIFAR100.gen_imbalanced_data`` (datasets/cifar100.py, itself from LDAM-DRW): it
    calls ``np.random.seed(0)`` once, then ``np.random.shuffle(idx)`` per class in label order. A
    ``np.random.RandomState(seed)`` draws the same numbers without touching NumPy's global state.
    """
    targets = np.asarray(targets)
    rng = np.random.RandomState(seed)
    keep = []
    for c, n in enumerate(counts):
        idx = np.where(targets == c)[0]
        rng.shuffle(idx)
        keep.append(idx[:n])
    return np.concatenate(keep)


def download_and_extract(url: str, archive: Path, md5: str) -> None:
    """Fetch ``url`` (http(s) or ``file://``) to ``archive`` and extract it next to it. The bytes are checked
    against ``md5`` before the archive is kept (atomic write: a broken download leaves nothing behind), and
    extraction refuses members that would land outside the folder or are links to outside it."""
    digest = hashlib.md5()

    def fetch(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=archive.name, disable=hide_progress()) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise RuntimeError(f"the file from {url} has MD5 {digest.hexdigest()}, not {md5}: corrupted or another "
                               "file, so it was not kept")

    if not (archive.is_file() and hashlib.md5(archive.read_bytes()).hexdigest() == md5):
        atomic_write(archive, fetch)
    if not hasattr(tarfile, "data_filter"):  # Python < 3.10.12 / 3.11.4 cannot refuse unsafe members itself
        raise RuntimeError(f"this Python ({sys.version.split()[0]}) cannot extract {archive.name} safely; use "
                           "Python 3.10.12+ / 3.11.4+, or extract it yourself into its folder")
    with tarfile.open(archive) as tar:
        tar.extractall(archive.parent, filter="data")


def cifar100_source() -> tuple[str, str]:
    """(URL, MD5) of the CIFAR-100 archive that ``download=True`` fetches: the real one, or a mirror named by
    ``$LT_CIFAR100_URL`` and ``$LT_CIFAR100_MD5`` together (a course server, a local ``file://`` copy; the
    stand-in profile serves its fabricated archive so)."""
    url, md5 = os.environ.get("LT_CIFAR100_URL"), os.environ.get("LT_CIFAR100_MD5")
    if not url and not md5:
        return CIFAR100_URL, CIFAR100_TGZ_MD5
    if not (url and md5):
        raise ValueError("Set both LT_CIFAR100_URL and LT_CIFAR100_MD5 (the archive's MD5, checked before it is "
                         "extracted), or neither to download the real CIFAR-100.")
    return url, md5


def _load_cifar100_lt(root: Path, split, imbalance_ratio, transform, download, seed) -> InMemoryDataset:
    """CIFAR-100-LT. CIFAR-100 has no val split: val is 20 images per class held out of the 10,000 test images
    (``cifar100_val_rows``) and test is the other 8,000 (80 per class), so that choosing a model on val never
    sees the test images. The cost in comparability with LIFT and the peers, who test on all 10,000: the same
    balanced distribution, 80% of the images, so the accuracies carry a little more sampling noise (about
    +12% standard error) and are not the same numbers to the decimal."""
    folder = root / "cifar-100-python"
    missing = [f for f in ("train", "test", "meta") if not (folder / f).is_file()]
    if missing and not download:
        raise FileNotFoundError(
            f"CIFAR-100 was not found in {folder} (missing: {', '.join(missing)}). Pass download=True to fetch it "
            f"(about 170 MB) into {root}, or point root= (or $LT_DATA_ROOT) at the folder that holds "
            "cifar-100-python/.")
    if missing:
        url, md5 = cifar100_source()
        try:  # the archive is checked against its MD5 before it is extracted
            download_and_extract(url, root / "cifar-100-python.tar.gz", md5)
        except (OSError, RuntimeError, tarfile.TarError) as err:  # no network, disk full, MD5 mismatch
            raise RuntimeError(f"Downloading CIFAR-100 from {url} into {root} failed ({err}). Download "
                               f"cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, check its "
                               f"MD5 ({md5}) and extract it into {root}.") from err
    file = "train" if split == "train" else "test"
    try:
        images, targets, classnames = read_cifar100(folder, file)
    except _RefusedGlobal as err:
        raise RuntimeError(f"Could not read CIFAR-100 from {folder}: a file asks to call {err}, which CIFAR's files "
                           "never do (it is how a pickle runs code), so it was refused and nothing was run. Delete "
                           "the folder and load again with download=True.") from err
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
        raise RuntimeError(f"Could not read CIFAR-100 from {folder} ({type(err).__name__}: {err}): the files are "
                           "corrupted or not the python pickle version. Delete the folder and load again with "
                           "download=True.") from err
    classnames = [c.replace("_", " ") for c in classnames]  # "aquarium_fish" -> "aquarium fish"
    # the D-groups of every split and ratio are those of IR 100 (35 / 35 / 30), as the peers report them
    group_counts = long_tail_counts(len(classnames), 500, 100)
    if split == "train":
        if len(targets) > CIFAR100_TEST_ID_OFFSET:
            raise ValueError(f"{folder / 'train'} holds {len(targets)} images; CIFAR-100's holds 50,000.")
        ids = np.arange(len(targets))
        n_max = len(targets) / len(classnames)  # 500.0, as LIFT's img_max
        keep = lift_selection(targets, long_tail_counts(len(classnames), n_max, imbalance_ratio), seed)
    else:
        ids = CIFAR100_TEST_ID_OFFSET + np.arange(len(targets))
        val_rows = cifar100_val_rows(targets, len(classnames))
        keep = val_rows if split == "val" else np.setdiff1d(np.arange(len(targets)), val_rows)
    return InMemoryDataset(images[torch.from_numpy(keep)], torch.from_numpy(targets[keep]), classnames, transform,
                           ids=torch.from_numpy(ids[keep]), group_counts=group_counts)


# Places365 category folders in label order (alphabetical; the order Places-LT's labels use).
_PLACES365_FOLDERS = """
airfield airplane_cabin airport_terminal alcove alley amphitheater amusement_arcade amusement_park
apartment_building-outdoor aquarium aqueduct arcade arch archaelogical_excavation archive arena-hockey
arena-performance arena-rodeo army_base art_gallery art_school art_studio artists_loft assembly_line
athletic_field-outdoor atrium-public attic auditorium auto_factory auto_showroom badlands bakery-shop
balcony-exterior balcony-interior ball_pit ballroom bamboo_forest bank_vault banquet_hall bar barn barndoor
baseball_field basement basketball_court-indoor bathroom bazaar-indoor bazaar-outdoor beach beach_house
beauty_salon bedchamber bedroom beer_garden beer_hall berth biology_laboratory boardwalk boat_deck boathouse
bookstore booth-indoor botanical_garden bow_window-indoor bowling_alley boxing_ring bridge building_facade
bullring burial_chamber bus_interior bus_station-indoor butchers_shop butte cabin-outdoor cafeteria campsite
campus canal-natural canal-urban candy_store canyon car_interior carrousel castle catacomb cemetery chalet
chemistry_lab childs_room church-indoor church-outdoor classroom clean_room cliff closet clothing_store coast
cockpit coffee_shop computer_room conference_center conference_room construction_site corn_field corral corridor
cottage courthouse courtyard creek crevasse crosswalk dam delicatessen department_store desert-sand
desert-vegetation desert_road diner-outdoor dining_hall dining_room discotheque doorway-outdoor dorm_room
downtown dressing_room driveway drugstore elevator-door elevator_lobby elevator_shaft embassy engine_room
entrance_hall escalator-indoor excavation fabric_store farm fastfood_restaurant field-cultivated field-wild
field_road fire_escape fire_station fishpond flea_market-indoor florist_shop-indoor food_court football_field
forest-broadleaf forest_path forest_road formal_garden fountain galley garage-indoor garage-outdoor gas_station
gazebo-exterior general_store-indoor general_store-outdoor gift_shop glacier golf_course greenhouse-indoor
greenhouse-outdoor grotto gymnasium-indoor hangar-indoor hangar-outdoor harbor hardware_store hayfield heliport
highway home_office home_theater hospital hospital_room hot_spring hotel-outdoor hotel_room house
hunting_lodge-outdoor ice_cream_parlor ice_floe ice_shelf ice_skating_rink-indoor ice_skating_rink-outdoor
iceberg igloo industrial_area inn-outdoor islet jacuzzi-indoor jail_cell japanese_garden jewelry_shop junkyard
kasbah kennel-outdoor kindergarden_classroom kitchen lagoon lake-natural landfill landing_deck laundromat lawn
lecture_room legislative_chamber library-indoor library-outdoor lighthouse living_room loading_dock lobby
lock_chamber locker_room mansion manufactured_home market-indoor market-outdoor marsh martial_arts_gym mausoleum
medina mezzanine moat-water mosque-outdoor motel mountain mountain_path mountain_snowy movie_theater-indoor
museum-indoor museum-outdoor music_studio natural_history_museum nursery nursing_home oast_house ocean office
office_building office_cubicles oilrig operating_room orchard orchestra_pit pagoda palace pantry park
parking_garage-indoor parking_garage-outdoor parking_lot pasture patio pavilion pet_shop pharmacy phone_booth
physics_laboratory picnic_area pier pizzeria playground playroom plaza pond porch promenade pub-indoor racecourse
raceway raft railroad_track rainforest reception recreation_room repair_shop residential_neighborhood restaurant
restaurant_kitchen restaurant_patio rice_paddy river rock_arch roof_garden rope_bridge ruin runway sandbox sauna
schoolhouse science_museum server_room shed shoe_shop shopfront shopping_mall-indoor shower ski_resort ski_slope
sky skyscraper slum snowfield soccer_field stable stadium-baseball stadium-football stadium-soccer stage-indoor
stage-outdoor staircase storage_room street subway_station-platform supermarket sushi_bar swamp swimming_hole
swimming_pool-indoor swimming_pool-outdoor synagogue-outdoor television_room television_studio temple-asia
throne_room ticket_booth topiary_garden tower toyshop train_interior train_station-platform tree_farm tree_house
trench tundra underwater-ocean_deep utility_room valley vegetable_garden veterinarians_office viaduct village
vineyard volcano volleyball_court-outdoor waiting_room water_park water_tower waterfall watering_hole wave wet_bar
wheat_field wind_farm windmill yard youth_hostel zen_garden
""".split()


def places365_folders() -> list[str]:
    """The 365 Places category folders in label order, as the release names them (``"apartment_building-outdoor"``
    is the folder ``apartment_building/outdoor`` of ``data_256/a/``)."""
    return list(_PLACES365_FOLDERS)


def places365_classnames() -> list[str]:
    """The 365 Places classes, readable: ``"apartment_building-outdoor"`` -> ``"apartment building outdoor"``."""
    return [f.replace("_", " ").replace("-", " ") for f in _PLACES365_FOLDERS]


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet classes in label order, with the readable names CLIP's authors curated (open_clip)."""
    return list(IMAGENET_CLASSNAMES)


_SPLIT_FILES = {  # dataset -> (file prefix, sub-folder the OLTR/LIFT releases use, class names)
    "imagenet_lt": ("ImageNet_LT", "ImageNet_LT", imagenet_classnames),
    "places_lt": ("Places_LT", "Places_LT", places365_classnames),
}
_OLTR_SOURCES = ("LIFT (https://github.com/shijxcs/LIFT/tree/main/datasets/{sub}) or from the OLTR release "
                 "(https://github.com/zhmiao/OpenLongTailRecognition-OLTR, README 'Data Preparation')")


def _find_split_file(root: Path, prefix: str, sub: str, split: str, sources: str) -> Path:
    """``root/<prefix>_<split>.txt`` or ``root/<sub>/<prefix>_<split>.txt``; FileNotFoundError saying where to
    get it otherwise (``sources``)."""
    fname = f"{prefix}_{split}.txt"
    candidates = [root / fname, root / sub / fname]
    split_file = next((p for p in candidates if p.is_file()), None)
    if split_file is None:
        raise FileNotFoundError(
            f"{fname} was not found (looked for {' and '.join(map(str, candidates))}). The {prefix} split files "
            f"(several MB) are not shipped with lt_utils: copy them from {sources.format(sub=sub)} into "
            f"{root / sub}, with root= the folder that holds the images.")
    return split_file


def _load_image_list(name: str, root: Path, split: str, imbalance_ratio, transform, download: bool,
                     seed) -> ImageListDataset:
    if download:
        raise ValueError(f"{name} cannot be downloaded automatically (ImageNet and Places365 need a licence "
                         "agreement); download the images by hand and pass root=, with download=False.")
    prefix, sub, classnames = _SPLIT_FILES[name]
    split_file = _find_split_file(root, prefix, sub, split, _OLTR_SOURCES)
    names = classnames()
    group_counts = None  # train: its own counts define the D-groups; val / test: the train split's
    train_file = split_file.with_name(f"{prefix}_train.txt")
    if split != "train" and train_file.is_file():
        group_counts = torch.bincount(torch.tensor(read_split_file(train_file, len(names))[1]), minlength=len(names))
    return ImageListDataset(root, split_file, names, transform, group_counts=group_counts, name=f"{name}_{split}")


# iNaturalist 2018 in the layout of the decoupling / BBN / LIFT code: iNaturalist18_{train,val}.txt
INAT2018_SOURCE = "https://github.com/visipedia/inat_comp/tree/master/2018"
_INAT2018_SPLIT_SOURCES = ("the decoupling release (https://github.com/facebookresearch/classifier-balancing, "
                           "data/iNaturalist18/), which LIFT uses")
INAT2018_VAL_PER_CLASS = 1  # val: 1 image per class held out of the official val (3 per class); test: the other 2
_INAT2018_VAL_SEED = 0      # fixed: the val / test cut never moves with the training seed


def inat2018_classnames(folder) -> list[str]:
    """The iNaturalist 2018 species in label order, from the un-obfuscated ``categories.json`` of the release in
    ``folder`` (a JSON list of objects with "id" and "name"): label i is the entry whose id is i.

    LIFT relabels the classes by sorted name; the classes and their counts are the same, only their order
    differs (here the split files' labels are the category ids, as written)."""
    path = Path(folder) / "categories.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} was not found: iNaturalist 2018's class names come from the un-obfuscated categories.json of "
            f"the 2018 release ({INAT2018_SOURCE}, 'Un-obfuscated names'; LIFT ships the same file in "
            f"datasets/iNaturalist18/). Put categories.json in {path.parent}, next to iNaturalist18_train.txt.")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): download the un-obfuscated categories.json again from "
                         f"{INAT2018_SOURCE}.") from err
    well_formed = isinstance(entries, list) and all(
        isinstance(e, dict) and isinstance(e.get("id"), int) and not isinstance(e["id"], bool)
        and isinstance(e.get("name"), str) for e in entries)
    if not well_formed or not entries:
        raise ValueError(f"{path} must be a JSON list of objects with an integer \"id\" and a string \"name\" (the "
                         f"un-obfuscated categories.json of {INAT2018_SOURCE}).")
    by_id = {e["id"]: e["name"] for e in entries}
    if sorted(by_id) != list(range(len(entries))):
        missing = sorted(set(range(len(entries))) - set(by_id))[:5]
        raise ValueError(f"{path}: the category ids must be exactly 0..{len(entries) - 1} (one entry each), got "
                         f"{len(by_id)} distinct ids from {min(by_id)} to {max(by_id)}"
                         + (f", missing {missing}" if missing else "") + f". Use the un-obfuscated categories.json "
                         f"of iNaturalist 2018 ({INAT2018_SOURCE}), not another year's.")
    return [by_id[i] for i in range(len(entries))]


def _load_inat2018(root: Path, split: str, imbalance_ratio, transform, download: bool, seed) -> ImageListDataset:
    """iNaturalist 2018 (8,142 classes, 437,513 train images). It has no separate val: the official val (24,426
    images, 3 per class) gives our val, one image per class held out by a fixed draw (``held_out_rows`` seeded 0,
    independent of ``seed``), and our test, its other 2 per class (16,284 images). The D-groups of every split
    are those of the train split's counts. ``seed`` is unused (the splits are fixed files)."""
    if download:
        raise ValueError("inat2018 cannot be downloaded automatically (about 120 GB); download train_val2018 from "
                         f"{INAT2018_SOURCE} by hand and pass root=, with download=False.")
    official = "train" if split == "train" else "val"
    sub, prefix = "iNaturalist18", "iNaturalist18"
    split_file = _find_split_file(root, prefix, sub, official, _INAT2018_SPLIT_SOURCES)
    names = inat2018_classnames(split_file.parent)
    hint = (f" {split_file.parent / 'categories.json'} lists {len(names)} classes: the split files and "
            "categories.json must come from the same release (iNaturalist 2018 has 8,142).")
    if split == "train":
        _read_split_lines(split_file, len(names), hint)  # checks the labels, with the hint
        return ImageListDataset(root, split_file, names, transform, name=f"inat2018_{split}")
    train_file = _find_split_file(root, prefix, sub, "train", _INAT2018_SPLIT_SOURCES)
    group_counts = torch.bincount(torch.tensor(_read_split_lines(train_file, len(names), hint)[1]),
                                  minlength=len(names))
    labels = _read_split_lines(split_file, len(names), hint)[1]
    val_rows = held_out_rows(labels, INAT2018_VAL_PER_CLASS, _INAT2018_VAL_SEED, len(names))
    rows = val_rows if split == "val" else np.setdiff1d(np.arange(len(labels)), val_rows)
    return ImageListDataset(root, split_file, names, transform, group_counts=group_counts, rows=rows,
                            name=f"inat2018_{split}")


register_dataset("cifar100_lt", _load_cifar100_lt, splits=("train", "val", "test"), variable_ratio=True,
                 downloadable=True)
for _name in _SPLIT_FILES:
    register_dataset(_name, partial(_load_image_list, _name), splits=("train", "val", "test"))
register_dataset("inat2018", _load_inat2018, splits=("train", "val", "test"))


# ---------------------------------------------------------------------------------------------------------------
# Groups and subsets of datasets

def cifar100_lt_groups() -> torch.Tensor:
    """The D-groups the peers use for CIFAR-100-LT at every imbalance ratio: those of IR 100 (35 / 35 / 30)."""
    return data_groups(long_tail_counts(100, 500, 100))


def balanced_subset(labels, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` samples of every class, drawn at random: a smaller balanced held-out set.

    Chapter 2 uses it to measure how the prior estimate depends on the size of its balanced set.

    Args:
        labels: one label per sample.
        per_class: samples to keep of every class (at most the smallest class's count).
        seed: the draw's seed (the same seed gives the same subset).

    Returns:
        LongTensor of the kept indices, sorted.
    """
    labels = torch.as_tensor(labels).long()
    counts = torch.bincount(labels)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}.")
    if int(counts[counts > 0].min()) < per_class:
        raise ValueError(f"per_class={per_class} is more than the smallest class holds ({int(counts[counts > 0].min())}).")
    generator = torch.Generator().manual_seed(seed)
    keys = torch.rand(len(labels), generator=generator)
    order = torch.argsort(keys)  # random order, then the first `per_class` of each class in that order
    order = order[torch.sort(labels[order], stable=True).indices]
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(labels)) - starts[labels[order]]
    return torch.sort(order[position < per_class]).values


# ---------------------------------------------------------------------------------------------------------------
# Loaders

class TensorLoader:
    """Batches of an ``InMemoryDataset`` cut by index on the data's device: no workers, no collation.

    Yields ``(images, labels)``; ``images`` are uint8, or ``batch_transform(images)`` (e.g. a ``TensorAugment``).
    With ``shuffle`` every pass uses a new permutation, seeded by ``seed`` and the pass number.
    """

    def __init__(self, dataset: InMemoryDataset, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, batch_transform: Callable | None = None):
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, int(batch_size), shuffle, drop_last
        self.seed, self.batch_transform, self.epoch = seed, batch_transform, 0

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        self.epoch += 1
        order = order.to(self.dataset.images.device, non_blocking=True)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            images, labels = self.dataset.images[idx], self.dataset.targets[idx]
            if self.batch_transform is not None:
                images = self.batch_transform(images)
            yield images, labels


class DeviceLoader:
    """A ``DataLoader`` whose batches are moved to ``device`` (asynchronously from pinned memory on CUDA)."""

    def __init__(self, loader, device, batch_transform: Callable | None = None):
        self.loader, self.device, self.batch_transform = loader, torch.device(device), batch_transform

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.batch_transform is not None:
                images = self.batch_transform(images)
            yield images, labels


def make_loader(dataset, batch_size: int, shuffle: bool = False, device=None, *, drop_last: bool = False,
                seed: int = 0, num_workers: int = 0, batch_transform: Callable | None = None):
    """Batches ``(images, labels)`` on ``device`` (default: where the data is, the CPU for image files).

    An ``InMemoryDataset`` without a per-image transform is copied to ``device`` once and batched by index
    (``TensorLoader``): uint8 batches, or ``batch_transform(batch)`` such as ``TensorAugment``. Any other dataset
    goes through a ``DataLoader`` with ``num_workers`` processes (pinned memory when ``device`` is CUDA), seeded
    by ``seed``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    in_memory = isinstance(dataset, InMemoryDataset)
    if device is None:
        device = dataset.images.device if in_memory else torch.device("cpu")
    device = torch.device(device)
    if in_memory and dataset.transform is None:
        return TensorLoader(dataset.to(device), batch_size, shuffle, drop_last, seed, batch_transform)
    on_gpu = in_memory and dataset.images.is_cuda  # CUDA tensors cannot be pinned (nor shared with workers)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers,
        pin_memory=device.type == "cuda" and not on_gpu, persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed))
    return DeviceLoader(loader, device, batch_transform)
