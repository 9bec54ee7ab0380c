"""Profiles: one variable (``LT_PROFILE``) switches every chapter between the CPU lab and real CLIP models."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

PROFILE_NAMES = ("lab", "clip", "clip-lite", "imagenet_lt", "places_lt", "inat2018")
# The paper's own datasets at full scale (profile name = dataset name): LIFT's recipe, 20 epochs on iNaturalist.
PAPER_EPOCHS = {"imagenet_lt": 10, "places_lt": 10, "inat2018": 20}
# Profiles that higher layers add (``register_profile``): name -> function returning a ``Profile``.
_EXTRA_PROFILES: dict = {}


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str
    data_root: str | None
    imbalance_ratio: int
    models: tuple[str, ...]
    control_models: tuple[str, ...]
    image_size: int
    peft: str
    epochs: int
    batch_size: int
    micro_batch_size: int | None
    lr: float
    momentum: float
    weight_decay: float
    tau: float
    seeds: tuple[int, ...]
    device: torch.device = field(compare=False)
    amp: bool
    num_workers: int
    tte: bool = False  # LIFT's five-crop test-time ensembling in evaluation (its 81.7% on CIFAR-100-LT uses it)

    def replace(self, **changes) -> "Profile":
        """A copy with some settings changed, e.g. ``lt.profile().replace(epochs=2)``."""
        return replace(self, **changes)

    def as_dict(self) -> dict:
        """JSON-able settings (used in cache keys and run folders)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["device"] = str(self.device)
        d["models"], d["control_models"], d["seeds"] = list(self.models), list(self.control_models), list(self.seeds)
        return d


def default_data_root() -> Path:
    """Where real datasets live: ``$LT_DATA_ROOT``, else ``~/data``."""
    return Path(os.environ.get("LT_DATA_ROOT") or "~/data").expanduser()


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """The accelerator when present (or ``prefer``), else the CPU."""
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                "CUDA was asked for but no GPU is visible. On Colab choose Runtime > Change runtime type > GPU; "
                "elsewhere use device='cpu' or the lab profile (LT_PROFILE=lab)."
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_cpu(threads: int | None = None) -> None:
    """CPU settings for the lab: flush denormals (tiny weights otherwise slow epochs ~2x) and a thread count."""
    torch.set_flush_denormal(True)
    if threads is None:
        threads = int(os.environ.get("LT_THREADS", 0)) or min(os.cpu_count() or 1, 8)
    torch.set_num_threads(threads)


def register_profile(name: str, build) -> None:
    """Add a profile that a higher layer defines (``lt_utils.standin`` adds ``"standin"``): ``build()``
    returns its ``Profile``."""
    if name in PROFILE_NAMES:
        raise ValueError(f"{name!r} is a built-in profile; pick another name.")
    _EXTRA_PROFILES[name] = build


def _require_cuda(name: str) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"The {name} profile fine-tunes ViT-B/16 models and needs a CUDA GPU, but none is visible. On Colab "
            "choose Runtime > Change runtime type > GPU and rerun; to run on this machine's CPU set "
            "LT_PROFILE=lab instead."
        )


def profile(name: str | None = None) -> Profile:
    """The settings a chapter reads: its one config cell is ``cfg = lt.profile()``. Used by every chapter.

    Args:
        name: ``"lab"`` (CPU, the book's own miniature models), ``"clip"`` (CLIP / OpenCLIP / MetaCLIP
            ViT-B/16 on CIFAR-100-LT with LIFT's recipe, needs a CUDA GPU) or ``"clip-lite"`` (the same with 3
            epochs instead of 10 and one seed: every chapter fits a free Colab T4 session opened cold);
            None reads ``$LT_PROFILE`` (default ``"lab"``).

    Returns:
        A frozen ``Profile``; change a setting with ``cfg.replace(epochs=2)``.
    """
    name = (name or os.environ.get("LT_PROFILE") or "lab").strip().lower()
    if name == "lab":
        setup_cpu()
        return Profile(
            name="lab", dataset="lab", data_root=None, imbalance_ratio=100,
            models=("lab-clip", "lab-openclip", "lab-metaclip"),
            control_models=("lab-clip", "lab-clip-s1", "lab-clip-s2"),
            image_size=24, peft="adaptformer", epochs=5, batch_size=128, micro_batch_size=None,
            lr=0.01, momentum=0.9, weight_decay=5e-4, tau=1.0, seeds=(0, 1, 2),
            device=torch.device("cpu"), amp=False, num_workers=0,
        )
    if name in ("clip", "clip-lite"):
        _require_cuda(name)
        clip = Profile(
            name="clip", dataset="cifar100_lt",
            data_root=str(default_data_root()), imbalance_ratio=100,
            models=("clip", "openclip", "metaclip"), control_models=("clip", "clip", "clip"),
            image_size=224, peft="adaptformer", epochs=10, batch_size=128, micro_batch_size=64,
            lr=0.01, momentum=0.9, weight_decay=5e-4, tau=1.0, seeds=(0, 1, 2),
            device=torch.device("cuda"), amp=True, num_workers=min(os.cpu_count() or 2, 8),
        )
        # clip-lite: the time of a fine-tune is proportional to its epochs (benchmarks/clip_time.py)
        return clip if name == "clip" else clip.replace(name="clip-lite", epochs=3, seeds=(0,))
    if name in PAPER_EPOCHS:
        _require_cuda(name)
        return paper_profile(name)
    if name in _EXTRA_PROFILES:
        return _EXTRA_PROFILES[name]()
    raise ValueError(f"Unknown profile {name!r}: choose one of {PROFILE_NAMES + tuple(_EXTRA_PROFILES)} (set "
                     "LT_PROFILE or pass name=).")


def paper_profile(dataset: str, device: str | torch.device | None = None) -> Profile:
    """The recipe of the paper (LIFT's) on one of its own datasets, ``imagenet_lt``, ``places_lt`` or ``inat2018``.

    CLIP / OpenCLIP / MetaCLIP ViT-B/16 with AdaptFormer (bottleneck ``lt.peft.adaptformer_bottleneck``: 32, 8 and
    256), cosine head, SGD 0.01, batch 128 in one micro-batch, fp16, LA with tau 1, 10 epochs (20 on
    iNaturalist), the 80-template prompt ensemble; test-time five-crop ensembling off (``replace(tte=True)``).
    Images are decoded once to a uint8 cache (``lt_utils.decoded``). ``device``: default the GPU; ``"cpu"`` runs
    the same code on a CPU (the tests use it with tiny stand-in models).
    """
    if dataset not in PAPER_EPOCHS:
        raise ValueError(f"Unknown paper dataset {dataset!r}: choose one of {', '.join(PAPER_EPOCHS)}.")
    device = get_device(device)
    return Profile(
        name=dataset, dataset=dataset, data_root=str(default_data_root()), imbalance_ratio=100,
        models=("clip", "openclip", "metaclip"), control_models=("clip", "clip", "clip"),
        image_size=224, peft="adaptformer", epochs=PAPER_EPOCHS[dataset], batch_size=128, micro_batch_size=None,
        lr=0.01, momentum=0.9, weight_decay=5e-4, tau=1.0, seeds=(0,),
        device=device, amp=device.type == "cuda", num_workers=min(os.cpu_count() or 2, 16),
    )


def hide_progress(progress: bool = True) -> bool:
    """Whether a progress bar must stay hidden: asked so (``progress=False``) or ``TQDM_DISABLE`` is set (the
    built book sets it; tqdm honours it only when ``disable`` is not passed explicitly)."""
    return not progress or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
