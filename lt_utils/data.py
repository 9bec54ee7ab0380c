"""Data: long-tailed datasets (CIFAR-100-LT, ImageNet-LT, Places-LT and the lab world), the Many/Medium/Few
class groups, and a GPU-resident augmentation path so that data loading is never the bottleneck.

Two kinds of dataset, one interface (``.targets``, ``.classnames``, ``.class_counts``, ``len``, ``ds[i] ->
(image, label)``):
- ``InMemoryDataset`` (CIFAR, lab): every image in one uint8 tensor ``.images`` (N x 3 x H x W). Batches are cut
  by index, on the GPU if the tensor lives there, and augmented there by ``TensorAugment``.
- ``ImageListDataset`` (ImageNet-LT, Places-LT): a split file of "relative/path label" lines over an image
  folder, decoded with PIL per image and transformed with ``torchvision_transforms`` in DataLoader workers.
"""
from __future__ import annotations

import copy
import math
import os
import pickle
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

DATASET_NAMES = ("cifar100_lt", "imagenet_lt", "places_lt", "lab")
GROUP_NAMES = ("Many", "Medium", "Few")
MANY_ABOVE = 100  # D-Many: more than 100 training images (OLTR's convention, used by LIFT and the paper)
FEW_BELOW = 20  # D-Few: fewer than 20; D-Medium: 20..100
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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

class InMemoryDataset(torch.utils.data.Dataset):
    """All images in one uint8 tensor: ``images`` (N x 3 x H x W), ``targets`` (N labels), ``classnames``.

    ``ds[i]`` is ``(image, label)``: the uint8 3 x H x W image (or ``transform(image)``) and an int.
    ``ds.to("cuda")`` returns the same data resident on the GPU (still uint8: CIFAR-100-LT takes 33 MB), the
    fast path of ``make_loader`` and ``lt.train``.
    """

    def __init__(self, images, targets, classnames: Sequence[str], transform: Callable | None = None):
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
        return InMemoryDataset(self.images[indices], self.targets[indices], self.classnames, self.transform)

    def to(self, device) -> "InMemoryDataset":
        """The same dataset with ``images`` (uint8) and ``targets`` on ``device``."""
        return InMemoryDataset(self.images.to(device, non_blocking=True), self.targets.to(device, non_blocking=True),
                               self.classnames, self.transform)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape[1:]))
        return (f"InMemoryDataset({len(self)} images {shape} uint8 on {self.images.device}, "
                f"{self.num_classes} classes)")


class ImageListDataset(torch.utils.data.Dataset):
    """Images listed in a split file, one ``relative/path label`` per line, below the folder ``root``.

    ``ds[i]`` is ``(image, label)``: the PIL RGB image (or ``transform(image)``) and an int. ``paths`` holds the
    absolute paths; ``targets``, ``classnames``, ``class_counts`` as for every dataset here.
    """

    def __init__(self, root, split_file, classnames: Sequence[str], transform: Callable | None = None):
        self.root, self.split_file = Path(root).expanduser(), Path(split_file)
        self.classnames, self.transform = list(classnames), transform
        paths, labels = [], []
        with open(self.split_file) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.rsplit(maxsplit=1)
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise ValueError(f"{self.split_file}:{line_no}: expected 'relative/path label', got {line!r}.")
                label = int(parts[1])
                if not 0 <= label < len(self.classnames):
                    raise ValueError(f"{self.split_file}:{line_no}: label {label} is outside [0, "
                                     f"{len(self.classnames)}).")
                paths.append(self.root / parts[0])
                labels.append(label)
        if not paths:
            raise ValueError(f"{self.split_file} lists no images.")
        if not paths[0].is_file():  # one cheap check catches a wrong root before training starts
            raise FileNotFoundError(f"{self.split_file.name} lists {paths[0].relative_to(self.root)} but "
                                    f"{paths[0]} does not exist: root= must be the folder that holds the images "
                                    "(the split paths are relative to it).")
        self.paths = paths
        self.targets = torch.tensor(labels, dtype=torch.long)
        self.class_counts = torch.bincount(self.targets, minlength=len(self.classnames))

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image
        with Image.open(self.paths[index]) as image:
            image = image.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def __repr__(self) -> str:
        return f"ImageListDataset({len(self)} images from {self.split_file.name}, {self.num_classes} classes)"


# ---------------------------------------------------------------------------------------------------------------
# Loading

def default_data_root() -> Path:
    """``$LT_DATA_ROOT``, else ``~/data`` (the clip profile's default)."""
    return Path(os.environ.get("LT_DATA_ROOT") or "~/data").expanduser()


def load_dataset(name: str, root=None, split: str = "train", imbalance_ratio: float = 100,
                 transform: Callable | None = None, download: bool = False, seed: int = 0):
    """One split of a long-tailed dataset: ``"cifar100_lt" | "imagenet_lt" | "places_lt" | "lab"``.

    - ``cifar100_lt`` (split ``train`` | ``test``): CIFAR-100 from ``root/cifar-100-python/`` (``download=True``
      fetches it). Train keeps ``long_tail_counts(100, 500, imbalance_ratio)`` images per class, the first n_i of
      a per-class shuffle seeded ``seed`` (0 = the peers' selection); test is the balanced 10,000. Returns an
      ``InMemoryDataset`` (uint8 N x 3 x 32 x 32).
    - ``imagenet_lt`` / ``places_lt`` (split ``train`` | ``val`` | ``test``): the OLTR split files
      (``ImageNet_LT_train.txt``, ...) found in ``root`` or ``root/ImageNet_LT`` (``root/Places_LT``) over the
      image folder ``root``. Returns an ``ImageListDataset`` (PIL images, 1000 or 365 classes).
    - ``lab`` (split ``train`` | ``val`` | ``test``): the generated world ``lt.lab.make_world(seed)``.

    ``root=None`` means ``$LT_DATA_ROOT`` or ``~/data``. ``imbalance_ratio`` applies to CIFAR-100-LT only.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"Unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}.")
    splits = ("train", "test") if name == "cifar100_lt" else ("train", "val", "test")
    if split not in splits:
        raise ValueError(f"{name} has the splits {', '.join(splits)}; got split={split!r}.")
    if not imbalance_ratio >= 1:
        raise ValueError(f"imbalance_ratio must be >= 1 (1 = balanced; CIFAR-100-LT uses 10, 50 or 100), got "
                         f"{imbalance_ratio!r}.")
    if name != "cifar100_lt" and imbalance_ratio != 100:
        raise ValueError(f"imbalance_ratio applies to cifar100_lt only; {name} has a fixed split (leave it at 100).")
    if name == "lab":
        from .lab import make_world  # lazy: the lab module is only needed by the lab profile
        dataset = getattr(make_world(seed), split)
        if transform is not None:
            dataset = copy.copy(dataset)  # do not change the world's (possibly shared) dataset
            dataset.transform = transform
        return dataset
    root = default_data_root() if root is None else Path(root).expanduser()
    if name == "cifar100_lt":
        return _load_cifar100_lt(root, split, imbalance_ratio, transform, download, seed)
    if download:
        raise ValueError(f"{name} cannot be downloaded automatically (ImageNet and Places365 need a licence "
                         "agreement); download the images by hand and pass root=, with download=False.")
    return _load_image_list(name, root, split, transform)


def _cifar100_reader():
    """torchvision's CIFAR-100 reader, checking that the files exist instead of their MD5 sums, so that a tiny
    folder in the same pickle format (the tests fabricate one) loads too. The download still checks its archive."""
    import torchvision  # lazy: importing torchvision takes a second

    class CIFAR100Files(torchvision.datasets.CIFAR100):
        train_list = [["train", None]]
        test_list = [["test", None]]
        meta = {"filename": "meta", "key": "fine_label_names", "md5": None}

    return CIFAR100Files


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


def _load_cifar100_lt(root: Path, split, imbalance_ratio, transform, download, seed) -> InMemoryDataset:
    folder = root / "cifar-100-python"
    missing = [f for f in ("train", "test", "meta") if not (folder / f).is_file()]
    if missing and not download:
        raise FileNotFoundError(
            f"CIFAR-100 was not found in {folder} (missing: {', '.join(missing)}). Pass download=True to fetch it "
            f"(about 170 MB) into {root}, or point root= (or $LT_DATA_ROOT) at the folder that holds "
            "cifar-100-python/.")
    try:
        base = _cifar100_reader()(str(root), train=split == "train", download=download and bool(missing))
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
        raise RuntimeError(f"Could not read CIFAR-100 from {folder} ({type(err).__name__}: {err}): the files are "
                           "corrupted or not the python pickle version. Delete the folder and load again with "
                           "download=True.") from err
    except OSError as err:  # the download failed (no network, disk full, ...)
        raise RuntimeError(f"Downloading CIFAR-100 into {root} failed ({err}). Download cifar-100-python.tar.gz "
                           f"from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into {root}.") from err
    images = torch.from_numpy(np.ascontiguousarray(base.data.transpose(0, 3, 1, 2)))  # N x 32 x 32 x 3 -> NCHW
    targets = np.asarray(base.targets, dtype=np.int64)
    classnames = [c.replace("_", " ") for c in base.classes]  # "aquarium_fish" -> "aquarium fish"
    if split == "train":
        n_max = len(targets) / len(classnames)  # 500.0, as LIFT's img_max
        keep = lift_selection(targets, long_tail_counts(len(classnames), n_max, imbalance_ratio), seed)
        images, targets = images[torch.from_numpy(keep)], targets[keep]
    return InMemoryDataset(images, torch.from_numpy(targets), classnames, transform)


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


def places365_classnames() -> list[str]:
    """The 365 Places classes, readable: ``"apartment_building-outdoor"`` -> ``"apartment building outdoor"``."""
    return [f.replace("_", " ").replace("-", " ") for f in _PLACES365_FOLDERS]


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet classes in label order, with the readable names CLIP's authors curated (open_clip)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES  # lazy: open_clip is slow to import
    return list(IMAGENET_CLASSNAMES)


_SPLIT_FILES = {  # dataset -> (file prefix, sub-folder the OLTR/LIFT releases use, class names)
    "imagenet_lt": ("ImageNet_LT", "ImageNet_LT", imagenet_classnames),
    "places_lt": ("Places_LT", "Places_LT", places365_classnames),
}


def _load_image_list(name: str, root: Path, split: str, transform) -> ImageListDataset:
    prefix, sub, classnames = _SPLIT_FILES[name]
    fname = f"{prefix}_{split}.txt"
    candidates = [root / fname, root / sub / fname]
    split_file = next((p for p in candidates if p.is_file()), None)
    if split_file is None:
        raise FileNotFoundError(
            f"{fname} was not found (looked for {' and '.join(map(str, candidates))}). The {prefix} split files "
            f"(several MB) are not shipped with lt_utils: copy them from LIFT "
            f"(https://github.com/shijxcs/LIFT/tree/main/datasets/{sub}) or from the OLTR release "
            f"(https://github.com/zhmiao/OpenLongTailRecognition-OLTR, README 'Data Preparation') into {root / sub}, "
            "with root= the folder that holds the images.")
    return ImageListDataset(root, split_file, classnames(), transform)


# ---------------------------------------------------------------------------------------------------------------
# Class groups

def _as_vector(values, what: str) -> torch.Tensor:
    v = torch.as_tensor(values).detach().cpu().to(torch.float64)
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence with one value per class, got shape "
                         f"{tuple(v.shape)}.")
    if not torch.isfinite(v).all() or (v < 0).any():
        raise ValueError(f"{what} must be finite and non-negative.")
    return v


def data_groups(class_counts, reference=None) -> torch.Tensor:
    """D-groups per class: 0 = Many (> 100 training images), 1 = Medium (20..100), 2 = Few (< 20).

    ``reference``: counts that define the groups instead of ``class_counts`` (same length). The peers report
    CIFAR-100-LT at IR 10 and 50 with the IR-100 grouping (35 / 35 / 30 classes), since at IR 10 no class has fewer
    than 20 images: ``data_groups(counts, reference=long_tail_counts(100, 500, 100))``, or
    ``cifar100_lt_groups()``.
    """
    counts = _as_vector(class_counts, "class_counts")
    if reference is not None:
        ref = _as_vector(reference, "reference")
        if len(ref) != len(counts):
            raise ValueError(f"reference has {len(ref)} classes but class_counts has {len(counts)}.")
        counts = ref
    groups = torch.ones(len(counts), dtype=torch.long)
    groups[counts > MANY_ABOVE] = 0
    groups[counts < FEW_BELOW] = 2
    return groups


def cifar100_lt_groups() -> torch.Tensor:
    """The D-groups the peers use for CIFAR-100-LT at every imbalance ratio: those of IR 100 (35 / 35 / 30)."""
    return data_groups(long_tail_counts(100, 500, 100))


def prior_groups(prior) -> torch.Tensor:
    """P-groups per class: 0 = P-Many, 1 = P-Medium, 2 = P-Few, by terciles of the sorted ``prior``.

    The classes are ranked by decreasing prior (ties keep class order: a stable sort) and the ranks cut in three
    equal parts, the first ones larger by one when C is not a multiple of 3 (100 classes -> 34 / 33 / 33). GLA's
    code uses equal-size terciles; the paper's own threshold rule is unknown.
    """
    p = _as_vector(prior, "prior")
    if len(p) < 3:
        raise ValueError(f"prior_groups needs at least 3 classes to form terciles, got {len(p)}.")
    order = torch.sort(p, descending=True, stable=True).indices
    rank = torch.empty(len(p), dtype=torch.long)
    rank[order] = torch.arange(len(p))
    return rank * 3 // len(p)


def balanced_subset(labels, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` samples of every class, drawn at random (seeded): a smaller balanced held-out set.

    Used to measure how an estimate (e.g. of the pre-training prior) depends on the size of its balanced set.
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
# Augmentation

def torchvision_transforms(image_size: int, mean=CLIP_MEAN, std=CLIP_STD, train: bool = True,
                           scale=(0.08, 1.0)):
    """The classic per-image pipeline (LIFT's): train = RandomResizedCrop + horizontal flip; test = Resize to
    ``image_size * 8 // 7`` (256 for 224) + CenterCrop; then float in [0, 1] and normalisation. Takes a PIL image
    or a uint8 3 x H x W tensor."""
    from torchvision.transforms import v2  # lazy: importing torchvision takes a second
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


class TensorAugment:
    """Batched augmentation on uint8 image batches (B x 3 x H x W), on whatever device the batch lives.

    ``train=True``: a random-resized crop per sample (torchvision's rule: area fraction in ``scale``, aspect ratio
    in ``ratio``, 10 tries then a center crop), a horizontal flip with probability 1/2, resized to ``out_size``;
    ``train=False``: resize the short side to ``test_resize`` (default ``out_size * 8 // 7``, i.e. 256 for 224;
    pass ``test_resize=out_size`` for a plain resize) and center-crop ``out_size``. Both end as normalised
    float32 (B x 3 x out_size x out_size).

    Crop, flip and resize are separable, so the whole batch is two batched matrix products with per-sample
    interpolation matrices: no per-sample Python loop, tensor cores on the GPU. The result equals torchvision's
    bilinear ``Resize`` (antialiased when shrinking) of the same box. Call with ``generator=`` (on the batch's
    device, as ``lt.train`` does) for reproducible crops.
    """

    def __init__(self, out_size: int, mean=CLIP_MEAN, std=CLIP_STD, train: bool = True, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), flip: bool = True, test_resize: int | None = None):
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

    def __repr__(self) -> str:
        mode = f"train, scale={self.scale}, flip={self.flip}" if self.train else f"test, resize={self.test_resize}"
        return f"TensorAugment({self.out_size}, {mode})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        single = images.dim() == 3  # one image, e.g. as an InMemoryDataset transform
        x = images.unsqueeze(0) if single else images
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"TensorAugment expects B x 3 x H x W (or 3 x H x W), got shape {tuple(images.shape)}.")
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
            x0, y0, w, h, flip = self._random_boxes(batch, height, width, generator, rand_device)
        else:
            x0, y0, w, h = self._center_boxes(batch, height, width, rand_device)
            flip = torch.zeros(batch, dtype=torch.bool, device=rand_device)
        # Crop + resize + flip is separable: out = rows @ x @ cols^T, with one (out x H) and one (out x W)
        # interpolation matrix per sample: two batched matrix products for the whole batch.
        no_flip = torch.zeros_like(flip)
        rows = _interpolation_matrix(y0, h, no_flip, height, self.out_size, x.device)
        cols = _interpolation_matrix(x0, w, flip, width, self.out_size, x.device)
        out = rows.unsqueeze(1) @ (x @ cols.transpose(1, 2).unsqueeze(1))
        return out[0] if single else out

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

    def _center_boxes(self, batch, height, width, device):
        """The input box that Resize(test_resize) + CenterCrop(out_size) shows, as torchvision computes them."""
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.test_resize * long / short)
        new_h, new_w = (self.test_resize, new_long) if height <= width else (new_long, self.test_resize)
        top, left = int(round((new_h - self.out_size) / 2.0)), int(round((new_w - self.out_size) / 2.0))
        fy, fx = new_h / height, new_w / width
        box = torch.tensor([left / fx, top / fy, self.out_size / fx, self.out_size / fy], dtype=torch.float64,
                           device=device)
        return box.expand(batch, 4).unbind(1)  # x0, y0, w, h


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
