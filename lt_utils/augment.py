"""Augmentation and preprocessing: a batched, GPU-resident ``TensorAugment`` (random-resized crop, flip, resize,
normalise on uint8 batches), torchvision's classic per-image pipeline for image files, and ``preprocessing``, the
one place that decides how a model's inputs are prepared for training and for evaluation.
"""
from __future__ import annotations

import math

import torch
from torchvision.transforms import v2

# test-time views: one center crop, or FiveCrop's (torchvision's order: corners, then the center)
CROPS = {"center": ("center",), "five": ("tl", "tr", "bl", "br", "center")}
FIVE_CROP_RESIZE = 248  # LIFT's test-time ensembling: Resize(224 + 24), then FiveCrop(224)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)



def torchvision_transforms(image_size: int, mean=CLIP_MEAN, std=CLIP_STD, train: bool = True,
                           scale=(0.08, 1.0)):
    """The classic per-image pipeline (LIFT's): train = RandomResizedCrop + horizontal flip; test = Resize to
    ``image_size * 8 // 7`` (256 for 224) + CenterCrop; then float in [0, 1] and normalisation. Takes a PIL image
    or a uint8 3 x H x W tensor."""
    steps = [v2.ToImage()]
    if train:
        steps += [v2.RandomResizedCrop(image_size, scale=scale, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps += [v2.Resize(image_size * 8 // 7, antialias=True), v2.CenterCrop(image_size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def _interpolation_matrix(start, length, flip, size, out_size, device) -> torch.Tensor:
    """B x out_size x size weights that resample the span [start, start + length) of an axis of ``size`` pixels
    to ``out_size`` pixels (reversed where ``flip``).

    Output pixel j is centred at c = start + (j + 0.5) * length / out_size (pixel p covers [p, p + 1]); its
    weights are the triangle 1 - |p + 0.5 - c| / support over the pixels inside the image, normalised, with
    support = max(1, length / out_size). That is bilinear interpolation with edge clamping when enlarging, and
    torchvision's antialiased bilinear resize when shrinking.
    """
    start, length, flip = (t.to(device) for t in (start, length, flip))
    start, length = start.float()[:, None], length.float()[:, None]
    step = length / out_size
    centre = start + (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * step
    centre = torch.where(flip[:, None], 2 * start + length - centre, centre)  # mirror inside the box
    pixel = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    support = step.clamp(min=1.0)[:, :, None]
    weight = (1 - (pixel - centre[:, :, None]).abs() / support).clamp_(min=0)
    return weight / weight.sum(dim=2, keepdim=True).clamp_(min=1e-12)


def _check_shard(shard, rows: int) -> tuple[int, int, int]:
    """``shard = (rank, world_size, batch_size)`` as ints, checked to describe ``rows`` images: the ``rank``-th of
    ``world_size`` strided shards of a batch of ``batch_size``, padded or not."""
    try:
        rank, world_size, total = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be (rank, world_size, batch_size), got {shard!r}.") from None
    if not 0 <= rank < world_size or total < 1:
        raise ValueError(f"shard=(rank, world_size, batch_size) needs 0 <= rank < world_size and batch_size >= 1, "
                         f"got {shard!r}.")
    if not len(range(rank, total, world_size)) <= rows <= -(-total // world_size):
        raise ValueError(f"shard {shard!r} holds the rows {rank}, {rank} + {world_size}, ... of a batch of {total} "
                         f"({len(range(rank, total, world_size))}, or {-(-total // world_size)} with the padding), "
                         f"but {rows} images were given: pass this rank's rows of the global batch.")
    return rank, world_size, total


class TensorAugment:
    """Batched augmentation on uint8 image batches (B x 3 x H x W), on whatever device the batch lives.

    ``train=True``: a random-resized crop per sample (torchvision's rule: area fraction in ``scale``, aspect ratio
    in ``ratio``, 10 tries then a center crop), a horizontal flip with probability 1/2, resized to ``out_size``;
    ``train=False``: resize the short side to ``test_resize`` (default ``out_size * 8 // 7``, i.e. 256 for 224;
    pass ``test_resize=out_size`` for a plain resize) and center-crop ``out_size``. Both end as normalised
    float32 (B x 3 x out_size x out_size). ``crops="five"`` (test only) is LIFT's five-crop test-time ensembling:
    the four corner crops and the center crop of the resized image, returned as 5 x B x 3 x out_size x out_size
    (``lt.metrics.predict`` averages a model's outputs over the first dimension).

    Crop, flip and resize are separable, so the whole batch is two batched matrix products with per-sample
    interpolation matrices: no per-sample Python loop, tensor cores on the GPU. The result equals torchvision's
    bilinear ``Resize`` (antialiased when shrinking) of the same box. Call with ``generator=`` (on the batch's
    device, as ``lt.train`` does) for reproducible crops.

    ``shard=(rank, world_size, batch_size)``: ``images`` are the rows ``rank, rank + world_size, ...`` of a global
    batch of ``batch_size`` images (``DistributedSampler``'s split, as ``lt.train`` shards a batch under torchrun).
    The crops and flips are drawn for the whole global batch, then those rows kept: every rank calling with one
    generator state gets the draws one process would give those images, whatever the number of processes. Rows past
    ``batch_size`` (the padding that makes the last batch divisible by ``world_size``) reuse the draws of the first
    rows. ``shard=(0, 1, len(images))`` is the same as no shard.
    """

    def __init__(self, out_size: int, mean=CLIP_MEAN, std=CLIP_STD, train: bool = True, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), flip: bool = True, test_resize: int | None = None, crops: str = "center"):
        if int(out_size) != out_size or out_size < 1:
            raise ValueError(f"out_size must be a positive integer, got {out_size!r}.")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (RGB) and std > 0, got mean={mean}, std={std}.")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale is the (min, max) crop area fraction, 0 < min <= max <= 1; got {scale}.")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio is the (min, max) crop aspect ratio, 0 < min <= max; got {ratio}.")
        self.out_size, self.train, self.flip = int(out_size), bool(train), bool(flip)
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))
        self.scale, self.ratio = tuple(map(float, scale)), tuple(map(float, ratio))
        self.test_resize = int(test_resize) if test_resize is not None else self.out_size * 8 // 7
        if self.test_resize < self.out_size:
            raise ValueError(f"test_resize ({self.test_resize}) must be >= out_size ({self.out_size}).")
        if crops not in CROPS:
            raise ValueError(f"crops must be one of {tuple(CROPS)}, got {crops!r}.")
        if train and crops != "center":
            raise ValueError("crops='five' is a test-time ensembling: use it with train=False.")
        self.crops = crops

    def __repr__(self) -> str:
        mode = (f"train, scale={self.scale}, flip={self.flip}" if self.train
                else f"test, resize={self.test_resize}, crops={self.crops}")
        return f"TensorAugment({self.out_size}, {mode})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 shard: tuple[int, int, int] | None = None) -> torch.Tensor:
        single = images.dim() == 3  # one image, e.g. as an InMemoryDataset transform
        x = images.unsqueeze(0) if single else images
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"TensorAugment expects B x 3 x H x W (or 3 x H x W), got shape {tuple(images.shape)}.")
        shard = None if shard is None else _check_shard(shard, x.shape[0])
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        elif x.is_floating_point():
            x = x.float()  # taken as already in [0, 1]
        else:
            raise ValueError(f"TensorAugment expects uint8 (or float in [0, 1]) images, got {x.dtype}.")
        batch, _, height, width = x.shape
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        # Normalise before resampling: the interpolation weights are non-negative and sum to 1, so resampling
        # commutes with this per-channel affine map, and the input is the smaller tensor (32^2 vs 224^2).
        x = (x - mean) / std
        rand_device = generator.device if generator is not None else x.device
        if self.train:
            if shard is None:
                boxes = self._random_boxes(batch, height, width, generator, rand_device)
            else:  # the global batch's draws, then this shard's rows of them
                rank, world_size, total = shard
                rows = (rank + world_size * torch.arange(batch, device=rand_device)) % total
                boxes = [b[rows] for b in self._random_boxes(total, height, width, generator, rand_device)]
            out = self._resample(x, *boxes)
            return out[0] if single else out
        no_flip = torch.zeros(batch, dtype=torch.bool, device=rand_device)
        views = [self._resample(x, *self._test_boxes(batch, height, width, rand_device, where), no_flip)
                 for where in CROPS[self.crops]]
        out = views[0] if self.crops == "center" else torch.stack(views)
        return out[..., 0, :, :, :] if single else out

    def _resample(self, x, x0, y0, w, h, flip):
        """Crop + resize + flip is separable: out = rows @ x @ cols^T, with one (out x H) and one (out x W)
        interpolation matrix per sample: two batched matrix products for the whole batch."""
        height, width = x.shape[-2:]
        rows = _interpolation_matrix(y0, h, torch.zeros_like(flip), height, self.out_size, x.device)
        cols = _interpolation_matrix(x0, w, flip, width, self.out_size, x.device)
        return rows.unsqueeze(1) @ (x @ cols.transpose(1, 2).unsqueeze(1))

    def _random_boxes(self, batch, height, width, generator, device):
        """torchvision's RandomResizedCrop.get_params for a whole batch: 10 tries per sample, first fit wins."""
        tries, area = 10, height * width
        kw = dict(dtype=torch.float64, device=device)
        target_area = area * torch.empty(batch, tries, **kw).uniform_(*self.scale, generator=generator)
        log_ratio = torch.empty(batch, tries, **kw).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]),
                                                              generator=generator)
        aspect = torch.exp(log_ratio)
        w = torch.round(torch.sqrt(target_area * aspect))
        h = torch.round(torch.sqrt(target_area / aspect))
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting try
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        # No fit in 10 tries: the whole image, clamped to the aspect-ratio range (torchvision's fallback).
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(height * self.ratio[1]), height
        else:
            fw, fh = width, height
        any_fit = fits.any(dim=1)
        w = torch.where(any_fit, w, torch.full_like(w, fw))
        h = torch.where(any_fit, h, torch.full_like(h, fh))
        position = torch.rand(batch, 2, generator=generator, **kw)
        y0 = torch.where(any_fit, torch.floor(position[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
        x0 = torch.where(any_fit, torch.floor(position[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
        flip = torch.rand(batch, generator=generator, **kw) < 0.5
        if not self.flip:
            flip = torch.zeros_like(flip)
        return x0, y0, w, h, flip

    def _test_boxes(self, batch, height, width, device, where="center"):
        """The input box that Resize(test_resize) then CenterCrop(out_size) (``where="center"``) or one of
        FiveCrop's corner crops (``"tl" | "tr" | "bl" | "br"``) shows, as torchvision computes them."""
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.test_resize * long / short)
        new_h, new_w = (self.test_resize, new_long) if height <= width else (new_long, self.test_resize)
        if where == "center":
            top, left = int(round((new_h - self.out_size) / 2.0)), int(round((new_w - self.out_size) / 2.0))
        else:
            top = 0 if where[0] == "t" else new_h - self.out_size
            left = 0 if where[1] == "l" else new_w - self.out_size
        fy, fx = new_h / height, new_w / width
        box = torch.tensor([left / fx, top / fy, self.out_size / fx, self.out_size / fy], dtype=torch.float64,
                           device=device)
        return box.expand(batch, 4).unbind(1)  # x0, y0, w, h


def _preprocessing_fact(model, name):
    """``model.name`` or ``model.backbone.name`` (a Classifier and a FoundationModel carry image_size/mean/std)."""
    for owner in (model, getattr(model, "backbone", None)):
        value = getattr(owner, name, None) if owner is not None else None
        if value is not None:
            return value
    raise ValueError(f"The model has no {name!r} to build its preprocessing from; pass "
                     "transform=lt.augment.TensorAugment(size, mean, std, train=False).")


def preprocessing(model, train: bool = False, native_size: bool = True, five_crop: bool = False) -> TensorAugment:
    """The batched preprocessing (uint8 -> normalised float, on the batch's device) of ``model``'s inputs.

    ``model`` is anything with ``image_size``, ``mean`` and ``std`` (a foundation model or a classifier).
    ``native_size=True``: the images were drawn at about the model's size (the lab): training crops keep at
    least 60% of the image (the glyphs are small), and evaluation resizes the whole image to ``image_size``.
    ``native_size=False``: LIFT's recipe for CIFAR at 224 px: RandomResizedCrop(224) + flip for training,
    Resize(256) + CenterCrop(224) for evaluation. ``five_crop=True`` (evaluation only): LIFT's test-time
    ensembling, Resize(248) + FiveCrop(224) (the resize scaled alike at other sizes); the model's outputs are
    then averaged over the five views.
    """
    image_size = _preprocessing_fact(model, "image_size")
    if not isinstance(image_size, int):  # open_clip keeps (H, W)
        image_size = int(tuple(image_size)[0])
    mean, std = _preprocessing_fact(model, "mean"), _preprocessing_fact(model, "std")
    if five_crop and not train:
        return TensorAugment(image_size, mean, std, train=False, crops="five",
                             test_resize=round(image_size * FIVE_CROP_RESIZE / 224))
    if native_size:
        kw = dict(scale=(0.6, 1.0)) if train else dict(test_resize=image_size)
    else:
        kw = {}
    return TensorAugment(image_size, mean, std, train=train, **kw)
