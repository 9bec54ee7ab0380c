"""The stand-in profile: the clip profile's code path, offline and on a CPU, so CI can run every chapter in it.

The clip profile downloads CIFAR-100 and CLIP / OpenCLIP / MetaCLIP weights, which CI cannot reach. The stand-in
swaps only those two downloads:

* three tiny random-weight open_clip models, QuickGELU for the CLIP and MetaCLIP stand-ins and GELU for OpenCLIP
  (as the real ones), saved to local safetensors files and loaded by the real open_clip loading code;
* a fabricated CIFAR-100 archive in the real format (``cifar-100-python.tar.gz`` of python pickles), fetched by
  the real ``download=True`` path from a ``file://`` URL (``$LT_CIFAR100_URL``) and checked against its MD5.

Everything else is the clip path: the 80-template prompt ensemble, LIFT's CIFAR preprocessing, the val split
held out of test, no true prior. Its accuracies mean nothing (random weights, noise images); it shows that every
chapter runs when opened first. One seed and one epoch, as a session-sized ``clip-lite`` run would use one seed.

    LT_PROFILE=standin   # `make test` executes every chapter so, each with its own empty cache and data root
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file

from .cache import atomic_write, cache_dir
from .models import register_foundation_model
from .profiles import Profile, default_data_root, get_device, register_profile

# name -> (open_clip architecture registered below, seed of its random weights)
STANDIN_MODELS = {
    "standin-clip": ("lt-standin-vit-quickgelu", 0),
    "standin-openclip": ("lt-standin-vit", 1),
    "standin-metaclip": ("lt-standin-vit-quickgelu", 2),
}
_TINY_CONFIG = {"embed_dim": 32,
                "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
# images per class in the fabricated archive: train (LIFT's n_max = 100 at IR 100) and test (20 of them val)
PER_CLASS = dict(train=100, test=20)
FILE_VERSION = 1  # bump when the fabricated files change, so stale ones are rewritten


def standin_root() -> Path:
    """Where the stand-in's "internet" lives (model files, the archive): ``$LT_STANDIN_ROOT``, else in the cache."""
    return Path(os.environ.get("LT_STANDIN_ROOT") or cache_dir() / "standin").expanduser()


def write_cifar100_folder(root, per_class_train: int, per_class_test: int, fine_names, seed: int = 123,
                          per_class_val: int = 20) -> Path:
    """A CIFAR-100 folder in the real format under ``root`` (python pickles, N x 3072 uint8 rows, shuffled labels).

    The test file holds ``per_class_val + per_class_test`` images per class: ``load_dataset`` holds 20 of each
    class out of it as the val split, so the test split keeps ``per_class_test``."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)

    def dump(obj, path):
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    for split, per_class in (("train", per_class_train), ("test", per_class_val + per_class_test)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class))
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        dump({"filenames": [f"{i}.png" for i in range(len(labels))], "batch_label": split,
              "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(), "data": data}, folder / split)
    dump({"fine_label_names": list(fine_names), "coarse_label_names": [f"super_{i}" for i in range(20)]},
         folder / "meta")
    return Path(root)


def _write_archive(path: Path) -> None:
    """The fabricated ``cifar-100-python.tar.gz`` (made in a scratch folder next to it, then packed)."""
    scratch = path.parent / f".scratch-{os.getpid()}"
    names = [f"thing_{i}" for i in range(100)]
    write_cifar100_folder(scratch, PER_CLASS["train"], PER_CLASS["test"], names, seed=0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(scratch / "cifar-100-python", arcname="cifar-100-python")
    shutil.rmtree(scratch)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _write_weights(path: Path, arch: str, seed: int) -> None:
    torch.manual_seed(seed)
    quiet = logging.getLogger()  # open_clip logs "No pretrained weights loaded": random weights are the point
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(arch)
    finally:
        quiet.setLevel(level)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def setup(root: Path | None = None) -> Path:
    """Make the stand-in's files once (configs, weights, archive) and point the clip code path at them."""
    root = standin_root() if root is None else Path(root)
    version_file = root / "VERSION"
    fresh = version_file.is_file() and version_file.read_text().strip() == str(FILE_VERSION)
    configs = root / "configs"
    for arch in {a for a, _ in STANDIN_MODELS.values()}:
        config = dict(_TINY_CONFIG, quick_gelu=arch.endswith("quickgelu"))
        atomic_write(configs / f"{arch}.json", lambda tmp, c=config: tmp.write_text(json.dumps(c)))
    open_clip.add_model_config(configs)
    for name, (arch, seed) in STANDIN_MODELS.items():
        weights = root / f"{name}.safetensors"
        if not (fresh and weights.is_file()):
            _write_weights(weights, arch, seed)
        register_foundation_model(name, arch, weights=weights, builtin=True)
    archive = root / "cifar-100-python.tar.gz"
    if not (fresh and archive.is_file()):
        _write_archive(archive)
    atomic_write(version_file, lambda tmp: tmp.write_text(f"{FILE_VERSION}\n"))
    os.environ["LT_CIFAR100_URL"] = archive.resolve().as_uri()
    os.environ["LT_CIFAR100_MD5"] = hashlib.md5(archive.read_bytes()).hexdigest()
    return root


def standin_profile() -> Profile:
    """The ``"standin"`` profile (``lt.profile("standin")``): the clip profile's settings on the stand-in files,
    one epoch and one seed (``$LT_STANDIN_SEEDS="0,1,2"`` for the clip profile's three), at the tiny models'
    32 px."""
    setup()
    device = get_device()
    seeds = tuple(int(s) for s in os.environ.get("LT_STANDIN_SEEDS", "0").split(","))
    return Profile(
        name="standin", dataset="cifar100_lt", data_root=str(default_data_root()), imbalance_ratio=100,
        models=tuple(STANDIN_MODELS), control_models=("standin-clip",) * 3,
        image_size=32, peft="adaptformer", epochs=1, batch_size=64, micro_batch_size=32,
        lr=0.01, momentum=0.9, weight_decay=5e-4, tau=1.0, seeds=seeds,
        device=device, amp=device.type == "cuda", num_workers=0,
    )


register_profile("standin", standin_profile)
