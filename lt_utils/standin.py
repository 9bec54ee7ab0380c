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
from PIL import Image
from safetensors.torch import save_file

from .cache import atomic_write, atomic_write_text, cache_dir
from .data import places365_folders
from .models import register_foundation_model
from .profiles import Profile, default_data_root, get_device, paper_profile, register_profile

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


# ---------------------------------------------------------------------------------------------------------------
# Fabricated image-list folders (ImageNet-LT, Places-LT, iNaturalist 2018) in their real layouts

_IMAGE_LIST_CLASSES = {"imagenet_lt": 1000, "places_lt": 365}  # fixed label spaces; iNaturalist's is num_classes
_INAT_SUPERCATEGORIES = ("Plantae", "Insecta", "Aves", "Reptilia", "Mammalia", "Fungi", "Amphibia", "Mollusca")


def write_image_list_folder(root, dataset: str, *, num_classes: int, train_counts, per_class_val: int,
                            per_class_test: int, image_size=(40, 30), seed: int = 0) -> Path:
    """Small random JPEGs and split files under ``root`` in the real layout of ``dataset``, read by the real
    loaders (``lt.load_dataset(dataset, root, split)``); returns ``root``.

    * ``"imagenet_lt"``: ``ImageNet_LT/ImageNet_LT_{train,val,test}.txt`` over ``train/n0000000c/n0000000c_17.JPEG``
      (train) and ``val/n0000000c/ILSVRC2012_val_00000001.JPEG`` (val, test); ``num_classes`` must be 1000.
    * ``"places_lt"``: ``Places_LT/Places_LT_{train,val,test}.txt`` over ``data_256/a/airfield/00000001.jpg``
      (train, val) and ``val_256/Places365_val_00000001.jpg`` (test); ``num_classes`` must be 365.
    * ``"inat2018"``: ``iNaturalist18/iNaturalist18_{train,val}.txt`` over
      ``train_val2018/Plantae/<id>/<32 hex>.jpg`` and ``iNaturalist18/categories.json`` (``num_classes`` entries,
      written in a shuffled order: the loader maps by "id"). The official val file gets ``per_class_val +
      per_class_test`` images per class and the loader holds one per class out as val, so ``per_class_val`` must
      be 1. The split files' lines are shuffled, as the real ones are.

    ``train_counts``: training images per class (``num_classes`` of them, each >= 1: a class without training
    images would have log 0 in a logit-adjusted prior). Images are JPEG quality 90 of smooth random colour, their
    sides within 25% of ``image_size`` (width, height), about half of them portrait; every draw comes from
    ``np.random.default_rng(seed)``. A fabricated ImageNet-LT of 3 images per class (4,000 files) is a few MB.
    """
    if dataset not in (*_IMAGE_LIST_CLASSES, "inat2018"):
        raise ValueError(f"dataset must be one of imagenet_lt, places_lt, inat2018; got {dataset!r}.")
    expected = _IMAGE_LIST_CLASSES.get(dataset)
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if expected is not None and num_classes != expected:
        raise ValueError(f"{dataset}'s loader uses its {expected} real class names, so num_classes must be {expected} "
                         f"(got {num_classes}); only inat2018 reads its classes from the categories.json written here.")
    train_counts = [int(c) for c in train_counts]
    if len(train_counts) != num_classes or min(train_counts) < 1:
        raise ValueError(f"train_counts must give each of the {num_classes} classes at least 1 training image "
                         f"(got {len(train_counts)} counts, smallest {min(train_counts, default=None)}).")
    if per_class_val < 1 or per_class_test < 1:
        raise ValueError(f"per_class_val and per_class_test must be >= 1 (balanced val and test splits), got "
                         f"{per_class_val} and {per_class_test}.")
    if dataset == "inat2018" and per_class_val != 1:
        raise ValueError(f"inat2018's loader holds out exactly 1 image per class of the official val as val "
                         f"(lt_utils.data.INAT2018_VAL_PER_CLASS), so per_class_val must be 1, got {per_class_val}.")
    root = Path(root)
    rng = np.random.default_rng(seed)
    base_w, base_h = (int(v) for v in image_size)

    def save_jpeg(rel: str) -> None:
        w, h = (max(8, round(v * rng.uniform(0.75, 1.25))) for v in (base_w, base_h))
        if rng.random() < 0.5:
            w, h = h, w  # portrait and landscape alike
        coarse = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)  # smooth content, as photos are
        atomic_write(root / rel, lambda tmp: image.save(tmp, format="JPEG", quality=90))

    def write_split(path: Path, rows: list, shuffle: bool) -> None:
        order = rng.permutation(len(rows)) if shuffle else range(len(rows))
        text = "".join(f"{rows[i][0]} {rows[i][1]}\n" for i in order)
        for rel, _ in rows:
            save_jpeg(rel)
        atomic_write_text(text, path)

    if dataset == "imagenet_lt":
        wnid = [f"n{c:08d}" for c in range(num_classes)]
        train = [(f"train/{wnid[c]}/{wnid[c]}_{k + 1}.JPEG", c) for c in range(num_classes)
                 for k in range(train_counts[c])]
        val_test = [(f"val/{wnid[c]}/ILSVRC2012_val_{c * (per_class_val + per_class_test) + k + 1:08d}.JPEG", c)
                    for c in range(num_classes) for k in range(per_class_val + per_class_test)]
        val = [row for i, row in enumerate(val_test) if i % (per_class_val + per_class_test) < per_class_val]
        test = [row for i, row in enumerate(val_test) if i % (per_class_val + per_class_test) >= per_class_val]
        for split, rows in (("train", train), ("val", val), ("test", test)):
            write_split(root / "ImageNet_LT" / f"ImageNet_LT_{split}.txt", rows, shuffle=False)
    elif dataset == "places_lt":
        folders = [f.replace("-", "/") for f in places365_folders()]  # "apartment_building-outdoor" is two levels
        train = [(f"data_256/{folders[c][0]}/{folders[c]}/{k + 1:08d}.jpg", c) for c in range(num_classes)
                 for k in range(train_counts[c])]
        val = [(f"data_256/{folders[c][0]}/{folders[c]}/{train_counts[c] + k + 1:08d}.jpg", c)
               for c in range(num_classes) for k in range(per_class_val)]
        test = [(f"val_256/Places365_val_{c * per_class_test + k + 1:08d}.jpg", c) for c in range(num_classes)
                for k in range(per_class_test)]
        for split, rows in (("train", train), ("val", val), ("test", test)):
            write_split(root / "Places_LT" / f"Places_LT_{split}.txt", rows, shuffle=False)
    else:
        supers = [_INAT_SUPERCATEGORIES[c % len(_INAT_SUPERCATEGORIES)] for c in range(num_classes)]

        def rows_of(counts):
            return [(f"train_val2018/{supers[c]}/{c}/{rng.bytes(16).hex()}.jpg", c) for c in range(num_classes)
                    for _ in range(counts[c])]

        folder = root / "iNaturalist18"
        write_split(folder / "iNaturalist18_train.txt", rows_of(train_counts), shuffle=True)
        write_split(folder / "iNaturalist18_val.txt", rows_of([per_class_val + per_class_test] * num_classes),
                    shuffle=True)
        categories = [{"id": c, "name": f"Fabricata species{c}", "supercategory": supers[c],
                       "kingdom": "Plantae" if supers[c] == "Plantae" else "Animalia"} for c in range(num_classes)]
        categories = [categories[i] for i in rng.permutation(num_classes)]
        atomic_write_text(json.dumps(categories), folder / "categories.json")
    return root


# ---------------------------------------------------------------------------------------------------------------
# The paper-scale code path on a fabricated Places-LT: `LT_PROFILE=standin-places_lt`

PLACES_STANDIN_MAX = 120  # Places-LT's 365 classes with 120 .. 1 training images (IR 120): all three D-groups


def places_standin_root() -> Path:
    """A fabricated Places-LT folder in the real layout (365 classes, 120 .. 1 training images per class, 1 val
    and 1 test image per class), written once below ``standin_root()``."""
    root = standin_root() / "places_lt"
    done = root / "VERSION"
    if not (done.is_file() and done.read_text().strip() == str(FILE_VERSION)):
        shutil.rmtree(root, ignore_errors=True)  # an unfinished folder from an interrupted write: made again whole
        counts = [max(1, int(PLACES_STANDIN_MAX * (1 / PLACES_STANDIN_MAX) ** (i / 364))) for i in range(365)]
        write_image_list_folder(root, "places_lt", num_classes=365, train_counts=counts, per_class_val=1,
                                per_class_test=1, seed=0)
        atomic_write_text(f"{FILE_VERSION}\n", done)  # last: the folder is complete
    return root


def standin_places_profile() -> Profile:
    """The ``"standin-places_lt"`` profile: the paper's profiles' code path (``paper_profile``: an image-list
    dataset decoded once, the prompt ensemble, one micro-batch) on a fabricated Places-LT and the stand-in models,
    at their 32 px, one epoch, one seed (``$LT_STANDIN_SEEDS``). It shows that every chapter runs on the paper's
    datasets (``LT_PROFILE=places_lt`` on a GPU node); its numbers mean nothing."""
    setup()
    device = get_device()
    seeds = tuple(int(s) for s in os.environ.get("LT_STANDIN_SEEDS", "0").split(","))
    return paper_profile("places_lt", device=device).replace(
        name="standin-places_lt", data_root=str(places_standin_root()), models=tuple(STANDIN_MODELS),
        control_models=("standin-clip",) * 3, image_size=32, epochs=1, batch_size=64, micro_batch_size=32,
        seeds=seeds, num_workers=0)


register_profile("standin-places_lt", standin_places_profile)
