"""The lab: a procedurally drawn image world whose pre-training priors are KNOWN.

Real foundation models hide their pre-training label prior; the lab makes it explicit. 100 classes = 20
super-classes (a coarse shape and a base hue) x 5 siblings (a finer inner pattern: stripes, dots, checks, ...),
drawn as 24x24 RGB images with nuisance (position, scale, rotation, background field, clutter, pixel noise).

* Upstream: every lab foundation model (``LAB_MODELS``) is pre-trained on its own corpus whose labels are drawn
  i.i.d. from a long-tailed prior (``upstream_priors``), with its own head/tail ordering of the classes.
* Downstream: a CIFAR-100-LT-like long-tailed training set (n_max 500, imbalance ratio 100, or another ratio over
  the same class order), balanced val (20/class) and test (100/class) sets, in a mildly different style (paler
  backgrounds, more pixel noise).

Everything is deterministic from a seed and vectorised in torch (loops run over the 20 shapes and 9 patterns,
never over pixels or samples). Importing this module registers the dataset ``"lab"`` with ``lt_utils.data`` and
the five lab foundation models (architecture ``"lab-vit"``) with ``lt_utils.models``.
"""
from __future__ import annotations

import copy
import math
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from tqdm.auto import tqdm

from .cache import cache_key, cached
from .data import InMemoryDataset, long_tail_counts, register_dataset
from .groups import rank_groups, tercile_sizes
from .models import (FoundationModel, read_safetensors, register_foundation_model, register_model_family,
                     write_safetensors)
from .phases import phase
from .profiles import get_device, hide_progress

IMAGE_SIZE = 24
NUM_CLASSES = 100
LAB_MEAN = (0.5, 0.5, 0.5)   # images are normalised with these (the lab's "CLIP mean/std")
LAB_STD = (0.25, 0.25, 0.25)

# The lt_utils modules whose code makes the world and the pre-trained models (their cache keys hash this source)
WORLD_MODULES = ("lab", "data", "groups")
PRETRAIN_MODULES = ("lab", "data", "groups", "profiles")

# The lab foundation model: a tiny open_clip VisionTransformer (16 patch tokens of 6x6 pixels).
LAB_VIT = dict(image_size=IMAGE_SIZE, patch_size=6, width=64, layers=3, heads=4, mlp_ratio=2.0, output_dim=32)

# Pre-training recipe; tests shrink it with monkeypatch.setitem. Part of the cache key.
PRETRAIN_CONFIG = dict(corpus_size=22_000, epochs=8, batch_size=128, lr=2e-3, weight_decay=0.05,
                       warmup_steps=100, logit_scale=16.0, max_shift=2)

# name -> (whose prior it shares, max/min ratio of its geometric prior)
_UPSTREAM = {
    "lab-clip": ("lab-clip", 100.0),
    "lab-openclip": ("lab-openclip", 100.0),
    "lab-metaclip": ("lab-metaclip", 10.0),  # flatter: MetaCLIP's curation balances concepts
    "lab-clip-s1": ("lab-clip", 100.0),      # same prior as lab-clip, other sampling + init seeds
    "lab-clip-s2": ("lab-clip", 100.0),
}
LAB_MODELS = tuple(_UPSTREAM)
LAB_ARCH = "lab-vit"

# Downstream profile (CIFAR-100-LT) and the D x P cell design: rows D-Many/Medium/Few (35/35/30 classes by rank of
# the downstream count), columns P-Many/Medium/Few (34/33/33 classes by rank of an upstream prior).
# DOWNSTREAM_IR is the standard world's ratio; make_world(imbalance_ratio=...) draws the train split at another.
DOWNSTREAM_N_MAX, DOWNSTREAM_IR, VAL_PER_CLASS, TEST_PER_CLASS = 500, 100, 20, 100
SPLIT_ID_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}  # sample ids: offset + index in the split
D_GROUP_SIZES = (35, 35, 30)
P_GROUP_SIZES = tercile_sizes(NUM_CLASSES)  # (34, 33, 33), as lt.prior_groups cuts them
CELL_SIZES = ((12, 12, 11), (12, 11, 12), (10, 10, 10))

# ---------------------------------------------------------------------------------------------------------------
# Classes: shapes (super-classes) x patterns (siblings)

SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond", "star", "bar", "arrow", "hexagon",
          "crescent", "oval", "frame", "tee", "bowtie", "clover", "dome", "pentagon", "saltire", "chevron")
PATTERNS = ("solid", "hollow", "striped", "checkered", "dotted", "outlined", "two-tone", "marked", "banded")
# Base hue of each super-class: a stride of 7 over 20 hues puts look-alike shapes on distant hues.
SHAPE_HUES = tuple(((7 * k) % 20) / 20 for k in range(20))


def _class_table():
    """Shape k gets the 5 patterns of a cyclic window over ``PATTERNS`` starting at 2k: a fixed design (no seed),
    every pattern used by 11-12 shapes, so "striped" is shared but each "striped <shape>" is its own class."""
    names, shape_of, pattern_of = [], [], []
    for k, shape in enumerate(SHAPES):
        for j in range(5):
            p = (2 * k + j) % len(PATTERNS)
            names.append(f"{PATTERNS[p]} {shape}")
            shape_of.append(k)
            pattern_of.append(p)
    return names, torch.tensor(shape_of), torch.tensor(pattern_of)


CLASSNAMES, SUPERCLASS, CLASS_PATTERN = _class_table()
SUPERCLASS_NAMES = SHAPES


# ---------------------------------------------------------------------------------------------------------------
# Seeds: every random stream has its own generator, keyed by (seed, tags), so streams never shift each other.

def _generator(seed: int, *tags: str) -> torch.Generator:
    text = "/".join([str(int(seed)), *tags])
    return torch.Generator().manual_seed(zlib.crc32(text.encode()) + 1_000_003 * int(seed))


def _uniform(n, lo, hi, gen):
    return lo + (hi - lo) * torch.rand(n, generator=gen)


# ---------------------------------------------------------------------------------------------------------------
# Signed distance functions in local shape coordinates (the shape spans about [-1, 1]; negative = inside)

def _box(u, v, a, b):
    qu, qv = u.abs() - a, v.abs() - b
    outside = torch.sqrt(qu.clamp(min=0) ** 2 + qv.clamp(min=0) ** 2)
    return outside + torch.maximum(qu, qv).clamp(max=0)


def _polygon(u, v, sides, inradius, phase=-math.pi / 2):
    angles = phase + 2 * math.pi * torch.arange(sides) / sides
    proj = u[..., None] * torch.cos(angles) + v[..., None] * torch.sin(angles)
    return proj.max(-1).values - inradius


def _rot45(u, v):
    c = math.sqrt(0.5)
    return c * (u + v), c * (v - u)


def _star(u, v):
    r, theta = torch.sqrt(u ** 2 + v ** 2), torch.atan2(v, u) + math.pi / 2
    wave = torch.abs(((theta * 5 / (2 * math.pi)) % 1.0) - 0.5) * 2  # 1 at the tips, 0 between them
    return (r - (0.42 + 0.55 * wave)) * 0.8


def _arrow(u, v):
    shaft = _box(u + 0.4, v, 0.5, 0.22)
    head = torch.maximum(-(u + 0.05), (v.abs() - 0.75 * (0.95 - u) / 1.0) * 0.8)
    return torch.minimum(shaft, head)


def _chevron(u, v):
    band = (v - 0.75 * u.abs() + 0.3).abs() - 0.3
    return torch.maximum(band, u.abs() - 0.95)


SHAPE_SDF = {
    "circle": lambda u, v: torch.sqrt(u ** 2 + v ** 2) - 0.85,
    "square": lambda u, v: _box(u, v, 0.72, 0.72),
    "triangle": lambda u, v: _polygon(u, v, 3, 0.5, phase=math.pi / 2),
    "ring": lambda u, v: (torch.sqrt(u ** 2 + v ** 2) - 0.62).abs() - 0.3,
    "cross": lambda u, v: torch.minimum(_box(u, v, 0.92, 0.32), _box(u, v, 0.32, 0.92)),
    "diamond": lambda u, v: _box(*_rot45(u, v), 0.66, 0.66),
    "star": _star,
    "bar": lambda u, v: _box(u, v, 0.95, 0.4),
    "arrow": _arrow,
    "hexagon": lambda u, v: _polygon(u, v, 6, 0.8),
    "crescent": lambda u, v: torch.maximum(torch.sqrt(u ** 2 + v ** 2) - 0.88,
                                           -(torch.sqrt((u - 0.42) ** 2 + (v + 0.12) ** 2) - 0.62)),
    "oval": lambda u, v: (torch.sqrt((u / 0.55) ** 2 + (v / 0.95) ** 2) - 1) * 0.55,
    "frame": lambda u, v: _box(u, v, 0.58, 0.58).abs() - 0.26,
    "tee": lambda u, v: torch.minimum(_box(u, v + 0.62, 0.9, 0.28), _box(u, v - 0.1, 0.28, 0.85)),
    "bowtie": lambda u, v: torch.maximum(u.abs() - 0.92, (v.abs() - 0.95 * u.abs() - 0.08) * 0.7),
    "clover": lambda u, v: (torch.sqrt(u ** 2 + v ** 2)
                            - (0.62 + 0.3 * torch.cos(3 * torch.atan2(v, u) + math.pi / 2))) * 0.8,
    "dome": lambda u, v: torch.maximum(torch.sqrt(u ** 2 + (v - 0.4) ** 2) - 0.95, v - 0.4),
    "pentagon": lambda u, v: _polygon(u, v, 5, 0.72, phase=math.pi / 2),
    "saltire": lambda u, v: torch.minimum(_box(*_rot45(u, v), 0.95, 0.3), _box(*_rot45(u, v), 0.3, 0.95)),
    "chevron": _chevron,
}


# ---------------------------------------------------------------------------------------------------------------
# Rendering

# Nuisance styles. Downstream differs mildly: a paler (overlapping) background palette, one clutter blob fewer,
# more pixel noise. Measured on a pre-trained lab-clip: upstream-style zero-shot 61.7% -> downstream 58.8% (a first
# palette with backgrounds up to value 0.9 cost 20 points: not "mild", so it was narrowed).
STYLES = {
    "upstream": dict(bg_sat=(0.15, 0.6), bg_val=(0.15, 0.65), clutter=3, noise=0.05, scale=(0.75, 1.05)),
    "downstream": dict(bg_sat=(0.1, 0.45), bg_val=(0.3, 0.8), clutter=2, noise=0.07, scale=(0.8, 1.05)),
}
_RADIUS = 8.5        # a shape of local size 1 spans this many pixels
_SHIFT = 2.0         # max centre shift in pixels
_ROTATION = 0.4      # max rotation in radians (about 23 degrees: a square never becomes a diamond)
_SOFTNESS = 0.6      # edge width in pixels


def _hsv_to_rgb(h, s, v):
    """Vectorised HSV -> RGB; h, s, v of any (same) shape, returns shape + (3,)."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    f = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v[..., None] - v[..., None] * s[..., None] * f


def _pattern_field(pattern: int, u, v, sdf, px):
    """Where the secondary colour shows inside the shape (0..1) for one pattern, in local coordinates."""
    soft = lambda d: torch.sigmoid(d / (_SOFTNESS * px))  # noqa: E731  (d > 0 -> 1, in local units)
    name = PATTERNS[pattern]
    if name == "striped":
        return soft(torch.sin(2 * math.pi * v / 0.5) * 0.08)
    if name == "checkered":
        return soft(torch.sin(2 * math.pi * u / 0.62) * torch.sin(2 * math.pi * v / 0.62) * 0.08)
    if name == "dotted":
        du, dv = (u / 0.45) % 1.0 - 0.5, (v / 0.45) % 1.0 - 0.5
        return soft(0.13 - 0.45 * torch.sqrt(du ** 2 + dv ** 2))
    if name == "outlined":
        return soft(sdf + 0.2)
    if name == "two-tone":
        return soft(u)
    if name == "banded":
        return soft(0.22 - v.abs())
    return torch.zeros_like(u)  # solid, hollow, marked: handled by the caller


def _render_chunk(labels: torch.Tensor, style: dict, gen: torch.Generator) -> torch.Tensor:
    n, size = len(labels), IMAGE_SIZE
    shape, pattern = SUPERCLASS[labels], CLASS_PATTERN[labels]
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    dy, dx = coords.view(1, size, 1), coords.view(1, 1, size)
    pixel = lambda t: t.view(n, 1, 1)  # noqa: E731

    # background: a gradient between two colours plus a low-frequency colour field
    bg_hsv = [torch.rand(2 * n, generator=gen), _uniform(2 * n, *style["bg_sat"], gen),
              _uniform(2 * n, *style["bg_val"], gen)]
    bg_cols = _hsv_to_rgb(*bg_hsv).view(2, n, 3)
    phi = _uniform(n, 0, 2 * math.pi, gen)
    t = ((dx * pixel(torch.cos(phi)) + dy * pixel(torch.sin(phi))) / size + 0.5).clamp(0, 1)[:, None]
    img = bg_cols[0].view(n, 3, 1, 1) * (1 - t) + bg_cols[1].view(n, 3, 1, 1) * t
    field = torch.randn(n, 3, 3, 3, generator=gen) * 0.06
    img = img + F.interpolate(field, size=(size, size), mode="bilinear", align_corners=True)

    # clutter: soft blobs of random colour and size behind the shape
    for _ in range(style["clutter"]):
        cx, cy = _uniform(n, -size / 2, size / 2, gen), _uniform(n, -size / 2, size / 2, gen)
        rad = _uniform(n, 1.2, 3.2, gen)
        col = _hsv_to_rgb(torch.rand(n, generator=gen), _uniform(n, 0.2, 0.9, gen), _uniform(n, 0.2, 0.95, gen))
        d = torch.sqrt((dx - pixel(cx)) ** 2 + (dy - pixel(cy)) ** 2)
        a = 0.85 * torch.sigmoid((pixel(rad) - d) / _SOFTNESS)[:, None]
        img = img * (1 - a) + col.view(n, 3, 1, 1) * a

    # the shape in local coordinates: shift, scale, rotation jitter
    cx, cy = _uniform(n, -_SHIFT, _SHIFT, gen), _uniform(n, -_SHIFT, _SHIFT, gen)
    scale = _uniform(n, *style["scale"], gen) * _RADIUS
    rot = _uniform(n, -_ROTATION, _ROTATION, gen)
    c, s = pixel(torch.cos(rot)), pixel(torch.sin(rot))
    ox, oy = dx - pixel(cx), dy - pixel(cy)
    u, v = (c * ox + s * oy) / pixel(scale), (-s * ox + c * oy) / pixel(scale)
    r = torch.sqrt(u ** 2 + v ** 2)
    px = 1.0 / pixel(scale)  # one pixel in local units
    sdf = torch.empty_like(u)
    for k, name in enumerate(SHAPES):
        idx = (shape == k).nonzero().flatten()
        if len(idx):
            sdf[idx] = SHAPE_SDF[name](u[idx], v[idx])
    alpha = torch.sigmoid(-sdf / (_SOFTNESS * px))
    second = torch.zeros_like(u)
    for p, name in enumerate(PATTERNS):
        idx = (pattern == p).nonzero().flatten()
        if not len(idx):
            continue
        if name == "hollow":  # keep only a band inside the edge
            alpha[idx] = alpha[idx] * torch.sigmoid((sdf[idx] + 0.24) / (_SOFTNESS * px[idx]))
        else:
            second[idx] = _pattern_field(p, u[idx], v[idx], sdf[idx], px[idx])

    # colours: the super-class hue with jitter; the secondary colour is a dark or a light version of it
    hue = (torch.tensor(SHAPE_HUES)[shape] + _uniform(n, -0.03, 0.03, gen)) % 1.0
    sat, val = _uniform(n, 0.6, 0.95, gen), _uniform(n, 0.65, 0.95, gen)
    base = _hsv_to_rgb(hue, sat, val)
    dark = (shape % 2 == 0).float().view(n, 1)
    second_col = dark * base * 0.25 + (1 - dark) * (0.35 * base + 0.65)
    fill = base.view(n, 3, 1, 1) * (1 - second[:, None]) + second_col.view(n, 3, 1, 1) * second[:, None]
    img = img * (1 - alpha[:, None]) + fill * alpha[:, None]
    marked = (pattern == PATTERNS.index("marked")).float().view(n, 1, 1)
    mark = marked * torch.sigmoid((0.3 - r) / (_SOFTNESS * px))
    img = img * (1 - mark[:, None]) + second_col.view(n, 3, 1, 1) * mark[:, None]

    img = img + style["noise"] * torch.randn(img.shape, generator=gen)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def render_images(labels, seed: int = 0, style: str = "downstream", chunk: int = 2048) -> torch.Tensor:
    """Draw one image per label: uint8 tensor N x 3 x 24 x 24, deterministic from ``(seed, style)``."""
    if style not in STYLES:
        raise ValueError(f"Unknown style {style!r}: choose one of {tuple(STYLES)}.")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"Labels must lie in [0, {NUM_CLASSES - 1}].")
    gen = _generator(seed, "render", style)
    out = torch.empty(len(labels), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    # Many small element-wise ops: one thread is as fast on an idle machine and ~20x faster on a busy one
    # (measured on the 2-core CI box: 2,000 images in 0.13 s with 1 thread vs 1.3-3.7 s with 2 under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for start in range(0, len(labels), chunk):
            out[start:start + chunk] = _render_chunk(labels[start:start + chunk], STYLES[style], gen)
    finally:
        torch.set_num_threads(threads)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Downstream counts, upstream priors (the ground truth) and corpora

def downstream_class_order(seed: int = 0) -> torch.Tensor:
    """``order[r]`` = the class with the r-th largest downstream training count (a seeded permutation)."""
    return torch.randperm(NUM_CLASSES, generator=_generator(seed, "downstream-order"))


def downstream_counts(seed: int = 0, imbalance_ratio: float | None = None) -> torch.Tensor:
    """Training images per class: the CIFAR-100-LT profile (n_max 500, ratio ``imbalance_ratio``, default
    ``DOWNSTREAM_IR`` = 100) over a seeded class order, the same at every ratio."""
    ratio = DOWNSTREAM_IR if imbalance_ratio is None else imbalance_ratio
    profile = torch.tensor(long_tail_counts(NUM_CLASSES, DOWNSTREAM_N_MAX, ratio))
    counts = torch.empty(NUM_CLASSES, dtype=torch.long)
    counts[downstream_class_order(seed)] = profile
    return counts


def _d_group_of(seed: int) -> torch.Tensor:
    """0/1/2 = D-Many/Medium/Few by rank of the standard world's downstream count (35/35/30 classes); the cell
    design (and so the upstream priors) is the same at every imbalance ratio."""
    return rank_groups(downstream_counts(seed), D_GROUP_SIZES)


def _geometric_prior(ratio: float) -> torch.Tensor:
    ranks = torch.arange(NUM_CLASSES, dtype=torch.float64)
    weights = (1.0 / ratio) ** (ranks / (NUM_CLASSES - 1))
    return weights / weights.sum()


def _prior_of(prior_name: str, ratio: float, seed: int) -> torch.Tensor:
    """A geometric prior whose head/tail order spreads each D-group evenly over the three P-terciles."""
    gen = _generator(seed, "prior", prior_name)
    d_group = _d_group_of(seed)
    terciles = [[] for _ in P_GROUP_SIZES]
    for g in range(len(D_GROUP_SIZES)):
        members = (d_group == g).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)].tolist()
        start = 0
        for p, size in enumerate(CELL_SIZES[g]):
            terciles[p] += members[start:start + size]
            start += size
    order = []  # order[r] = class of upstream rank r; random inside each tercile
    for members in terciles:
        order += [members[i] for i in torch.randperm(len(members), generator=gen).tolist()]
    prior = torch.empty(NUM_CLASSES, dtype=torch.float64)
    prior[torch.tensor(order)] = _geometric_prior(ratio)
    return prior.float()


def upstream_priors(seed: int = 0) -> dict[str, torch.Tensor]:
    """The TRUE pre-training label prior of every lab model, ``{name: FloatTensor[100]}`` summing to 1.

    Each is geometric over its own random class ranking (max/min ratio 100; 10 for lab-metaclip);
    lab-clip-s1/-s2 share lab-clip's prior. The ranking is drawn so that every D x P cell holds 10-12 classes.
    """
    return {name: _prior_of(prior_name, ratio, seed) for name, (prior_name, ratio) in _UPSTREAM.items()}


def _check_model(model_name: str) -> None:
    if model_name not in _UPSTREAM:
        raise ValueError(f"Unknown lab model {model_name!r}: choose one of {LAB_MODELS}.")


def upstream_labels(model_name: str, seed: int = 0, corpus_size: int | None = None) -> torch.Tensor:
    """The labels of a model's pre-training corpus: i.i.d. draws from its prior (so the prior IS the truth)."""
    _check_model(model_name)
    size = PRETRAIN_CONFIG["corpus_size"] if corpus_size is None else int(corpus_size)
    prior = upstream_priors(seed)[model_name]
    return torch.multinomial(prior, size, replacement=True, generator=_generator(seed, "corpus", model_name))


def upstream_corpus(model_name: str, seed: int = 0, corpus_size: int | None = None):
    """The pre-training data of one lab model: an in-memory dataset drawn in the upstream style."""
    labels = upstream_labels(model_name, seed, corpus_size)
    images = render_images(labels, seed=zlib.crc32(f"{seed}/{model_name}".encode()), style="upstream")
    return InMemoryDataset(images, labels, list(CLASSNAMES))


# ---------------------------------------------------------------------------------------------------------------
# The downstream world

@dataclass
class World:
    """The downstream task plus the ground truth about the upstream models.

    ``train`` (long-tailed at ``imbalance_ratio``), ``val`` (20/class), ``test`` (100/class) are in-memory
    datasets whose ``group_counts`` are the standard world's training counts (the D-groups at every ratio) and
    whose ``ids`` are ``SPLIT_ID_OFFSETS[split]`` + index; ``superclass`` maps class -> shape index (names in
    ``superclass_names``); ``upstream_priors`` maps model -> true prior.
    """
    seed: int
    train: object
    val: object
    test: object
    classnames: list
    superclass: torch.Tensor
    superclass_names: tuple
    upstream_priors: dict
    imbalance_ratio: float = DOWNSTREAM_IR

    def examples(self, per_class: int = 1, classes=None, split: str = "test"):
        """``(images uint8 K x 3 x H x W, labels)``: the first ``per_class`` images of each class, class by class."""
        data = {"train": self.train, "val": self.val, "test": self.test}.get(split)
        if data is None:
            raise ValueError(f"Unknown split {split!r}: choose 'train', 'val' or 'test'.")
        classes = range(NUM_CLASSES) if classes is None else classes
        idx = [i for c in classes for i in (data.targets == c).nonzero().flatten()[:per_class].tolist()]
        idx = torch.tensor(idx, dtype=torch.long)
        return data.images[idx], data.targets[idx]


def _balanced_labels(per_class: int) -> torch.Tensor:
    return torch.arange(NUM_CLASSES).repeat_interleave(per_class)


@phase("world generation")
def _split_tensors(seed: int, split: str, imbalance_ratio: float | None = None) -> dict:
    """Labels and images of one downstream split (class-sorted labels; the loaders shuffle)."""
    if split == "train":
        labels = torch.arange(NUM_CLASSES).repeat_interleave(downstream_counts(seed, imbalance_ratio))
    else:
        labels = _balanced_labels(VAL_PER_CLASS if split == "val" else TEST_PER_CLASS)
    return dict(images=render_images(labels, seed=zlib.crc32(f"{seed}/{split}".encode())), targets=labels)


def make_world(seed: int = 0, imbalance_ratio: float | None = None) -> World:
    """Build (or load from the cache) the downstream datasets of seed ``seed`` and the true upstream priors.

    ``imbalance_ratio``: the train split's max/min class count (default ``DOWNSTREAM_IR`` = 100; n_max 500, the
    same class order); val, test, the upstream priors and the D x P cells are those of the standard world at every
    ratio."""
    ratio = float(DOWNSTREAM_IR if imbalance_ratio is None else imbalance_ratio)
    counts = downstream_counts(seed, imbalance_ratio)
    if int(counts.min()) < 1:
        raise ValueError(f"imbalance_ratio={imbalance_ratio} leaves the rarest class with no training image "
                         f"(n_max {DOWNSTREAM_N_MAX}): use at most {DOWNSTREAM_N_MAX}.")
    compute = lambda: {split: _split_tensors(seed, split, imbalance_ratio)  # noqa: E731
                       for split in ("train", "val", "test")}
    # every size constant is in the key: a process that changed one is never served a world of another size
    key = dict(seed=int(seed), image_size=IMAGE_SIZE, n_max=DOWNSTREAM_N_MAX, imbalance_ratio=ratio,
               val_per_class=VAL_PER_CLASS, test_per_class=TEST_PER_CLASS)
    tensors = cached("lab_world", key, compute, depends_on=WORLD_MODULES)
    names, group_counts = list(CLASSNAMES), downstream_counts(seed)
    splits = {k: InMemoryDataset(v["images"], v["targets"], names, group_counts=group_counts,
                                 ids=SPLIT_ID_OFFSETS[k] + torch.arange(len(v["targets"])))
              for k, v in tensors.items()}
    return World(seed=int(seed), train=splits["train"], val=splits["val"], test=splits["test"], classnames=names,
                 superclass=SUPERCLASS.clone(), superclass_names=SUPERCLASS_NAMES,
                 upstream_priors=upstream_priors(seed), imbalance_ratio=ratio)


# ---------------------------------------------------------------------------------------------------------------
# Pre-training the lab foundation models

def build_vit():
    """A fresh (randomly initialised) lab ViT: open_clip ``VisionTransformer(**LAB_VIT)``."""
    return VisionTransformer(**LAB_VIT)


def normalize_images(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> float, normalised with ``LAB_MEAN``/``LAB_STD``."""
    mean = torch.tensor(LAB_MEAN, device=images_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(LAB_STD, device=images_uint8.device).view(1, 3, 1, 1)
    return (images_uint8.float() / 255 - mean) / std


def _shift_flip(images: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Batched augmentation on uint8 images: random translation (edge-replicated) and horizontal flip."""
    n, _, h, w = images.shape
    shift = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    cols = torch.arange(w).view(1, w)
    cols = torch.where(flip.view(n, 1), w - 1 - cols, cols)
    rows = (torch.arange(h).view(1, h) + shift[:, :1]).clamp(0, h - 1)
    cols = (cols + shift[:, 1:]).clamp(0, w - 1)
    batch = torch.arange(n).view(n, 1, 1)
    out = images.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)]  # n, h, w, 3
    return out.permute(0, 3, 1, 2).contiguous()


@phase("pre-training")
def _train_model(model_name: str, seed: int, config: dict, device=None, progress: bool = True) -> dict:
    torch.set_flush_denormal(True)
    device = get_device(device)
    corpus = upstream_corpus(model_name, seed, config["corpus_size"])
    torch.manual_seed(zlib.crc32(f"{seed}/{model_name}/init".encode()))
    visual = build_vit().to(device)
    embed_dim = LAB_VIT["output_dim"]
    class_embeddings = torch.nn.Parameter(torch.randn(NUM_CLASSES, embed_dim, device=device) * 0.02)
    params = list(visual.parameters()) + [class_embeddings]
    opt = torch.optim.AdamW(params, lr=config["lr"], weight_decay=config["weight_decay"])
    n, bs = len(corpus.targets), config["batch_size"]
    steps = config["epochs"] * math.ceil(n / bs)
    warm = min(config["warmup_steps"], max(steps // 10, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    use_amp = device.type == "cuda"
    gen = _generator(seed, "pretrain-batches", model_name)
    images, targets = corpus.images, corpus.targets
    scale = config["logit_scale"]
    visual.train()
    bar = tqdm(total=steps, desc=f"pre-train {model_name}", disable=hide_progress(progress), leave=False)
    for _ in range(config["epochs"]):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            x = normalize_images(_shift_flip(images[idx], config["max_shift"], gen).to(device))
            y = targets[idx].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                feats = visual(x)
            logits = scale * F.normalize(feats.float(), dim=-1) @ F.normalize(class_embeddings, dim=-1).T
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return dict(
        state_dict={k: v.detach().cpu().clone() for k, v in visual.state_dict().items()},
        class_embeddings=F.normalize(class_embeddings.detach().cpu(), dim=-1),
        classnames=list(CLASSNAMES), logit_scale=float(scale), model=model_name, seed=int(seed),
        vit=dict(LAB_VIT), mean=list(LAB_MEAN), std=list(LAB_STD), final_loss=float(loss.item()),
    )


def pretrain(model_name: str, seed: int = 0, device=None, progress: bool = True) -> dict:
    """Load or pre-train lab model ``model_name`` on its upstream corpus (cached on disk, keyed by the config).

    Supervised cosine classifier on the projected embedding, ``logits = s * norm(visual(x)) @ norm(E).T``; the
    learned class embeddings ``E`` play the role of CLIP's text features. Returns ``dict(state_dict,
    class_embeddings [100, D] (L2-normalised), classnames, logit_scale, ...)``; the state dict loads into
    ``build_vit()``.

    A checkpoint shipped with the package (``shipped_checkpoint``) is loaded instead of training when it was made
    by this very code and recipe; ``LT_NO_CACHE=1`` trains regardless.
    """
    _check_model(model_name)
    shipped = shipped_checkpoint(model_name, seed)
    if shipped.is_file() and not os.environ.get("LT_NO_CACHE"):
        loaded = _read_shipped(shipped, model_name, seed)
        if loaded is not None:
            return loaded
    return cached("lab_pretrain", _pretrain_key(model_name, seed),
                  lambda: _train_model(model_name, seed, dict(PRETRAIN_CONFIG), device, progress),
                  depends_on=PRETRAIN_MODULES)


# Pre-trained lab models ship with the package (`make lab-checkpoints` writes them, a test retrains one and compares
# it bit for bit): a cold book skips five pre-trainings. A file's name carries the digest of the cache key of the run
# that made it (model, seed, architecture, recipe and the source of PRETRAIN_MODULES), so an edit to that code or
# recipe leaves the file unused (and the test says to remake it) rather than serving weights the code no longer makes.
SHIPPED_DIR = Path(__file__).resolve().parent / "lab_checkpoints"
SHIPPED_SEEDS = (0,)  # the book pre-trains each lab model once, with seed 0


def _pretrain_key(model_name: str, seed: int) -> dict:
    return dict(model=model_name, seed=int(seed), vit=dict(LAB_VIT), config=dict(PRETRAIN_CONFIG))


def shipped_checkpoint(model_name: str, seed: int = 0) -> Path:
    """Where the shipped checkpoint of ``pretrain(model_name, seed)`` made by the current code lies (it may not
    exist: other seeds, a changed recipe, or code edited since `make lab-checkpoints`)."""
    digest = cache_key(_pretrain_key(model_name, seed), PRETRAIN_MODULES)
    return SHIPPED_DIR / f"{model_name}-seed{int(seed)}-{digest}.safetensors"


_SHIPPED_TENSOR = "class_embeddings"  # the one tensor beside the ViT's state dict (whose keys have no such name)


@phase("pre-training (shipped checkpoint)")
def _read_shipped(path: Path, model_name: str, seed: int) -> Optional[dict]:
    """``pretrain``'s result from a shipped file, or None (with a warning; the model is then trained) when the file
    cannot be read or was made for another model."""
    try:
        tensors, meta = read_safetensors(path)
        if meta.get("kind") != "lab-pretrain" or meta.get("model") != model_name or meta.get("seed") != seed:
            raise ValueError(f"it holds {meta.get('kind')} {meta.get('model')} seed {meta.get('seed')}")
        class_embeddings = tensors.pop(_SHIPPED_TENSOR)
    except (RuntimeError, ValueError, KeyError) as err:
        warnings.warn(f"Shipped checkpoint {path.name} is unusable ({err}); pre-training {model_name} instead. "
                      "`make lab-checkpoints` rewrites the shipped files.")
        return None
    return dict(meta["result"], state_dict=tensors, class_embeddings=class_embeddings)


def write_shipped_checkpoints(models=LAB_MODELS, seeds=SHIPPED_SEEDS, progress: bool = True) -> list[Path]:
    """Pre-train ``models`` x ``seeds`` with the current code (training, never the cache or an old file), write each
    to ``shipped_checkpoint`` atomically, then delete the shipped files of these models that the current code no
    longer loads (made by older code). ``make lab-checkpoints`` runs it; commit the folder afterwards."""
    written = []
    for model_name in models:
        for seed in seeds:
            out = _train_model(model_name, seed, dict(PRETRAIN_CONFIG), None, progress)
            result = {k: v for k, v in out.items() if k not in ("state_dict", _SHIPPED_TENSOR)}
            tensors = dict(out["state_dict"], **{_SHIPPED_TENSOR: out[_SHIPPED_TENSOR]})
            meta = dict(kind="lab-pretrain", model=model_name, seed=int(seed), result=result)
            written.append(write_safetensors(tensors, shipped_checkpoint(model_name, seed), meta))
    for path in SHIPPED_DIR.glob("*.safetensors"):
        if path not in written and path.name.split("-seed")[0] in models:
            path.unlink()
    return written


@torch.no_grad()
def encode_images(visual, images_uint8: torch.Tensor, project: bool = True, batch_size: int = 1024,
                  device=None) -> torch.Tensor:
    """Features of uint8 images: the projected embedding (``project=True``) or the pre-projection feature."""
    device = device or next(visual.parameters()).device
    proj, was_training = visual.proj, visual.training
    visual.eval()
    if not project:
        visual.proj = None  # open_clip's VisionTransformer skips the projection when proj is None
    try:
        out = [visual(normalize_images(images_uint8[i:i + batch_size].to(device))).float().cpu()
               for i in range(0, len(images_uint8), batch_size)]
    finally:
        visual.proj = proj
        visual.train(was_training)
    return torch.cat(out)


def pretrained_vit(model_name: str, seed: int = 0, device=None):
    """``(visual, class_embeddings, logit_scale)``: the pre-trained lab ViT in eval mode, ready to use."""
    ckpt = pretrain(model_name, seed, device=device)
    visual = build_vit()
    visual.load_state_dict(ckpt["state_dict"])
    return visual.eval(), ckpt["class_embeddings"], ckpt["logit_scale"]


# ---------------------------------------------------------------------------------------------------------------
# Registration: the lab world as a dataset, the lab ViTs as foundation models

def _load_lab_model(name, tag, pretrained: Optional[Path]) -> FoundationModel:
    """The loader of the "lab-vit" family: pre-trained here (load-or-train), or from a file written by
    ``lt_utils.models.save_foundation_model``."""
    if pretrained is None:
        out = pretrain(tag)
        state, class_embeddings = out["state_dict"], out["class_embeddings"]
        classnames, logit_scale, vit_kwargs = out["classnames"], out["logit_scale"], dict(LAB_VIT)
        mean, std = out["mean"], out["std"]
    else:
        tensors, meta = read_safetensors(pretrained)
        if meta.get("kind") != "lab":
            raise ValueError(f"{pretrained} holds a {meta.get('kind')!r} model, not a lab foundation model.")
        if meta.get("name") != name:  # lab models differ by pre-training only: never mix them up silently
            raise ValueError(f"{pretrained} holds lab model {meta.get('name')!r}, not {name!r}.")
        class_embeddings = tensors.pop("class_embeddings")
        state = tensors
        classnames, logit_scale, mean, std = meta["classnames"], meta["logit_scale"], meta["mean"], meta["std"]
        vit_kwargs = meta.get("vit_kwargs") or dict(LAB_VIT)
    visual = VisionTransformer(**vit_kwargs)
    state = {k.removeprefix("visual."): v for k, v in state.items()}
    try:
        visual.load_state_dict(state)
    except RuntimeError as err:
        raise RuntimeError(f"The weights of {name!r} do not fit the lab ViT {vit_kwargs}: {err}") from err
    model = FoundationModel(name, LAB_ARCH, visual, class_embeddings=class_embeddings, classnames=classnames,
                            logit_scale=logit_scale, mean=mean, std=std)
    model.vit_kwargs = vit_kwargs
    return model


def _load_split(root, split, imbalance_ratio, transform, download, seed):
    """``lt.load_dataset("lab", split=...)``: one split of ``make_world(seed, imbalance_ratio)`` (root and download
    unused)."""
    dataset = getattr(make_world(seed, imbalance_ratio), split)
    if transform is not None:
        dataset = copy.copy(dataset)  # do not change the world's (possibly shared) dataset
        dataset.transform = transform
    return dataset


register_dataset("lab", _load_split, splits=("train", "val", "test"), variable_ratio=True, modules=WORLD_MODULES)
register_model_family(LAB_ARCH, _load_lab_model, modules=PRETRAIN_MODULES)
for _name in LAB_MODELS:
    register_foundation_model(_name, LAB_ARCH, _name, builtin=True)
