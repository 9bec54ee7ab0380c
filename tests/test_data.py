"""Tests of lt_utils.data: counts, groups, the dataset loaders on fabricated files, TensorAugment, loaders."""
import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

import lt_utils as lt
from lt_utils import data as D

# ----------------------------------------------------------------------------------------------- long-tail profile


@pytest.mark.parametrize("ratio, total", [(100, 10847), (50, 12608), (10, 19573)])
def test_cifar100_lt_totals(ratio, total):
    counts = lt.data.long_tail_counts(100, 500, ratio)
    assert sum(counts) == total
    assert counts[0] == 500 and counts[-1] == 500 // ratio
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_balanced_profile():
    assert lt.data.long_tail_counts(5, 30, 1) == [30] * 5


@pytest.mark.parametrize("args, match", [
    ((1, 500, 100), "num_classes"), ((2.5, 500, 100), "num_classes"), ((10, 0, 100), "n_max"),
    ((10, 500, 0.5), "imbalance_ratio must be >= 1"), ((10, 500, float("nan")), "imbalance_ratio"),
])
def test_long_tail_counts_errors(args, match):
    with pytest.raises(ValueError, match=match):
        lt.data.long_tail_counts(*args)


# ----------------------------------------------------------------------------------------------- groups

def test_cifar100_groups_35_35_30():
    groups = lt.data_groups(lt.data.long_tail_counts(100, 500, 100))
    assert torch.bincount(groups).tolist() == [35, 35, 30]
    assert groups.tolist() == sorted(groups.tolist())  # head classes first
    assert torch.equal(lt.data.cifar100_lt_groups(), groups)
    assert lt.GROUP_NAMES == ("Many", "Medium", "Few")


def test_data_group_thresholds_and_reference():
    assert lt.data_groups([101, 100, 20, 19, 0]).tolist() == [0, 1, 1, 2, 2]
    ir10 = lt.data.long_tail_counts(100, 500, 10)
    assert torch.bincount(lt.data_groups(ir10), minlength=3).tolist()[2] == 0  # IR 10 alone has no Few class
    ir100 = lt.data.long_tail_counts(100, 500, 100)
    assert torch.equal(lt.data_groups(ir10, reference=ir100), lt.data.cifar100_lt_groups())
    with pytest.raises(ValueError, match="reference has 3 classes"):
        lt.data_groups(ir10, reference=[1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        lt.data_groups([5, -1, 3])
    with pytest.raises(ValueError, match="1-D"):
        lt.data_groups(torch.ones(2, 2))


def test_prior_groups_terciles():
    prior = torch.rand(100, generator=torch.Generator().manual_seed(0))
    groups = lt.prior_groups(prior)
    assert torch.bincount(groups).tolist() == [34, 33, 33]
    assert prior[groups == 0].min() > prior[groups == 1].max() > 0
    assert prior[groups == 1].min() > prior[groups == 2].max()
    assert torch.bincount(lt.prior_groups(torch.rand(7))).tolist() == [3, 2, 2]


def test_prior_groups_ties_are_stable():
    assert lt.prior_groups([0.2] * 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert lt.prior_groups(np.array([0.1, 0.5, 0.1, 0.3, 0.0, 0.0])).tolist() == [1, 0, 1, 0, 2, 2]
    with pytest.raises(ValueError, match="at least 3"):
        lt.prior_groups([0.5, 0.5])


# ----------------------------------------------------------------------------------------------- InMemoryDataset

def tiny_dataset(n=10, classes=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    targets = torch.arange(n) % classes
    return lt.data.InMemoryDataset(images, targets, [f"class {i}" for i in range(classes)])


def test_in_memory_dataset_basics():
    ds = tiny_dataset(n=10, classes=4)
    assert len(ds) == 10 and ds.num_classes == 4
    assert ds.class_counts.tolist() == [3, 3, 2, 2] and ds.class_counts.dtype == torch.long
    image, label = ds[5]
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8) and label == 1 and isinstance(label, int)
    sub = ds.subset([0, 4, 8])
    assert sub.targets.tolist() == [0, 0, 0] and sub.class_counts.tolist() == [3, 0, 0, 0]
    assert torch.equal(sub.images[1], ds.images[4])
    assert len(ds.subset(ds.targets == 2)) == 2
    moved = ds.to("cpu")
    assert torch.equal(moved.images, ds.images) and moved.classnames == ds.classnames
    with_tf = lt.data.InMemoryDataset(ds.images, ds.targets, ds.classnames, transform=lambda x: x.float() / 255)
    assert with_tf[0][0].dtype == torch.float32
    assert ds.ids is None and sub.ids is None  # built without ids
    assert torch.equal(ds.group_counts, ds.class_counts)  # by default a dataset's own counts define its groups


def test_in_memory_dataset_keeps_ids_and_group_counts():
    base = tiny_dataset(n=6, classes=2)
    ds = lt.data.InMemoryDataset(base.images, base.targets, base.classnames, ids=[10, 11, 12, 50, 51, 52],
                                 group_counts=[500, 5])
    assert ds.ids.dtype == torch.long and ds.ids.tolist() == [10, 11, 12, 50, 51, 52]
    sub = ds.subset([1, 3])
    assert sub.ids.tolist() == [11, 50] and sub.group_counts.tolist() == [500, 5]  # groups of the source
    assert sub.class_counts.tolist() == [0, 2]
    assert ds.subset(ds.targets == 0).ids.tolist() == [10, 12, 51]
    moved = ds.to("cpu")
    assert torch.equal(moved.ids, ds.ids) and torch.equal(moved.group_counts, ds.group_counts)
    with pytest.raises(ValueError, match="one id per image"):
        lt.data.InMemoryDataset(base.images, base.targets, base.classnames, ids=[1, 2])
    with pytest.raises(ValueError, match="unique"):
        lt.data.InMemoryDataset(base.images, base.targets, base.classnames, ids=[1, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="one count per class"):
        lt.data.InMemoryDataset(base.images, base.targets, base.classnames, group_counts=[1, 2, 3])


@pytest.mark.parametrize("images, targets, match", [
    (torch.rand(4, 3, 8, 8), [0, 1, 0, 1], "uint8"),
    (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), [0, 1, 0, 1], "N x 3 x H x W"),
    (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), [0, 1, 0], "one integer label per image"),
    (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), [0, 1, 0, 2], r"\[0, 2\)"),
])
def test_in_memory_dataset_errors(images, targets, match):
    with pytest.raises(ValueError, match=match):
        lt.data.InMemoryDataset(images, targets, ["a", "b"])


# ----------------------------------------------------------------------------------------------- load_dataset errors

def test_load_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="cifar100_lt, imagenet_lt, places_lt, inat2018, lab"):
        lt.load_dataset("cifar10_lt", tmp_path)
    with pytest.raises(ValueError, match="splits train, val, test"):
        lt.load_dataset("cifar100_lt", tmp_path, split="holdout")
    with pytest.raises(ValueError, match="imbalance_ratio must be >= 1"):
        lt.load_dataset("cifar100_lt", tmp_path, imbalance_ratio=0.5)
    with pytest.raises(ValueError, match="applies only to cifar100_lt, lab"):
        lt.load_dataset("places_lt", tmp_path, imbalance_ratio=10)
    with pytest.raises(ValueError, match="cannot be downloaded"):
        lt.load_dataset("imagenet_lt", tmp_path, download=True)


def test_cifar_missing_folder_names_folder_and_flag(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        lt.load_dataset("cifar100_lt", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-100-python") in message and "download=True" in message


def test_root_defaults_to_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LT_DATA_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "cifar-100-python")):
        lt.load_dataset("cifar100_lt")


# ----------------------------------------------------------------------------------------------- fabricated CIFAR-100

PER_CLASS_TRAIN, PER_CLASS_TEST = 8, 2
FINE_NAMES = [f"class_{i}" for i in range(100)]
FINE_NAMES[1], FINE_NAMES[47] = "aquarium_fish", "maple_tree"  # real CIFAR-100 names at their real indices


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory, fake_cifar100):
    """A CIFAR-100 folder in the real format (python pickles, N x 3072 uint8 rows, shuffled labels)."""
    return fake_cifar100(tmp_path_factory.mktemp("cifar"), PER_CLASS_TRAIN, PER_CLASS_TEST, FINE_NAMES)


def _read_split(root, split):
    with open(root / "cifar-100-python" / split, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    return entry["data"].reshape(-1, 3, 32, 32), np.asarray(entry["fine_labels"])


def _lift_reference(labels, ratio):
    """LIFT's IMBALANCECIFAR100 selection, verbatim in spirit: global np.random.seed(0), shuffle per class."""
    state = np.random.get_state()
    try:
        np.random.seed(0)
        img_max = len(labels) / 100
        keep = []
        for c in np.unique(labels):
            n = int(img_max * ((1 / ratio) ** (c / (100 - 1.0))))
            idx = np.where(labels == c)[0]
            np.random.shuffle(idx)
            keep.append(idx[:n])
        return np.concatenate(keep)
    finally:
        np.random.set_state(state)


def test_cifar100_lt_train_matches_lift_selection(cifar_root):
    ds = lt.load_dataset("cifar100_lt", cifar_root, split="train", imbalance_ratio=4)
    counts = lt.data.long_tail_counts(100, PER_CLASS_TRAIN, 4)
    assert isinstance(ds, lt.data.InMemoryDataset) and ds.images.shape == (sum(counts), 3, 32, 32)
    assert ds.images.dtype == torch.uint8 and ds.class_counts.tolist() == counts
    data, labels = _read_split(cifar_root, "train")
    keep = _lift_reference(labels, 4)
    assert torch.equal(ds.images, torch.from_numpy(data[keep]))
    assert torch.equal(ds.targets, torch.from_numpy(labels[keep]))
    assert ds.classnames[1] == "aquarium fish" and ds.classnames[47] == "maple tree"
    assert all("_" not in c for c in ds.classnames)
    other_seed = lt.load_dataset("cifar100_lt", cifar_root, imbalance_ratio=4, seed=1)
    assert torch.equal(other_seed.targets, ds.targets) and not torch.equal(other_seed.images, ds.images)


def test_cifar100_val_and_test_split_the_test_file(cifar_root):
    ds = lt.load_dataset("cifar100_lt", cifar_root, split="test", imbalance_ratio=50)
    val = lt.load_dataset("cifar100_lt", cifar_root, split="val")
    data, labels = _read_split(cifar_root, "test")
    rows = np.setdiff1d(np.arange(len(labels)), val.ids.numpy() - 50_000)  # the file rows val does not hold
    assert torch.equal(ds.images, torch.from_numpy(data[rows]))
    assert torch.equal(ds.targets, torch.from_numpy(labels[rows]))
    assert ds.class_counts.tolist() == [PER_CLASS_TEST] * 100 and val.class_counts.tolist() == [20] * 100
    image, label = lt.load_dataset("cifar100_lt", cifar_root, split="test", transform=lt.augment.TensorAugment(16))[0]
    assert image.shape == (3, 16, 16) and label == labels[rows[0]]


class _Payload:
    """Unpickling this object calls ``func(*args)``: what a hostile CIFAR folder would do."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("file", ["meta", "train", "test"])
@pytest.mark.parametrize("make_payload, name", [
    (lambda marker: _Payload(__import__("os").system, f"touch {marker}"), "system"),
    (lambda marker: _Payload(exec, f"open({str(marker)!r}, 'w').close()"), "exec"),
    (lambda marker: _Payload(np.save, str(marker), np.zeros(1)), "numpy.save"),  # numpy, but not an allowed name
])
def test_cifar_pickle_that_calls_a_global_is_refused_and_not_run(tmp_path, fake_cifar100, file, make_payload, name):
    root = fake_cifar100(tmp_path / "data", 1, 1, [f"c{i}" for i in range(100)])
    marker = tmp_path / "payload_ran"
    path = root / "cifar-100-python" / file
    entry = pickle.loads(path.read_bytes(), encoding="latin1")
    entry["batch_label" if file != "meta" else "coarse_label_names"] = make_payload(marker)
    path.write_bytes(pickle.dumps(entry, protocol=2))
    for split in ("train", "val", "test"):
        if file in ("meta", "train" if split == "train" else "test"):
            with pytest.raises(RuntimeError, match=rf"{name}.*refused.*download=True"):
                lt.load_dataset("cifar100_lt", root, split=split)
    assert not marker.exists() and not marker.with_suffix(".npy").exists()


def test_cifar_reads_python2_era_numpy_pickles(tmp_path, fake_cifar100):
    """The real files name numpy.core.multiarray._reconstruct (NumPy 1); NumPy 2 writes numpy._core."""
    root = fake_cifar100(tmp_path, 2, 1, [f"c{i}" for i in range(100)])
    path = root / "cifar-100-python" / "train"
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    data, labels = _read_split(root, "train")
    ds = lt.load_dataset("cifar100_lt", root, split="train", imbalance_ratio=1)
    assert torch.equal(ds.images, torch.from_numpy(data[ds.ids.numpy()]))
    assert torch.equal(ds.targets, torch.from_numpy(labels[ds.ids.numpy()]))


def test_cifar_download_checks_the_archive_md5(tmp_path, fake_cifar100, monkeypatch):
    monkeypatch.delenv("LT_CIFAR100_URL", raising=False)
    monkeypatch.delenv("LT_CIFAR100_MD5", raising=False)
    calls = []

    def fake_download(url, archive, md5):
        calls.append(dict(url=url, archive=archive, md5=md5))
        fake_cifar100(tmp_path, 2, 1, [f"c{i}" for i in range(100)])

    monkeypatch.setattr(D, "download_and_extract", fake_download)
    ds = lt.load_dataset("cifar100_lt", tmp_path, split="test", download=True)
    assert len(ds) == 100 and len(calls) == 1
    assert calls[0]["md5"] == "eb9058c3a382ffc7106e4002c42a8d85" == torchvision.datasets.CIFAR100.tgz_md5
    assert calls[0]["url"] == torchvision.datasets.CIFAR100.url
    assert calls[0]["archive"] == tmp_path / "cifar-100-python.tar.gz"
    lt.load_dataset("cifar100_lt", tmp_path, split="test", download=True)
    assert len(calls) == 1  # present: not downloaded again

    def bad_archive(*args, **kwargs):
        raise RuntimeError("the file has MD5 0123, not eb90: corrupted or another file, so it was not kept")

    monkeypatch.setattr(D, "download_and_extract", bad_archive)
    with pytest.raises(RuntimeError, match="cifar-100-python.tar.gz"):
        lt.load_dataset("cifar100_lt", tmp_path / "elsewhere", download=True)


def test_cifar_corrupted_file_says_what_to_do(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(RuntimeError, match="download=True"):
        lt.load_dataset("cifar100_lt", tmp_path)


# ------------------------------------------------------------------------------------------- ImageNet-LT / Places-LT

def _fabricate_tree(root, split_dir, prefix, entries):
    """Write small JPEGs and the split files ("relative/path label" per line) under ``root``."""
    rng = np.random.default_rng(0)
    for split, rows in entries.items():
        lines = []
        for rel, label in rows:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(path)
            lines.append(f"{rel} {label}")
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / f"{prefix}_{split}.txt").write_text("\n".join(lines) + "\n")


def test_imagenet_lt_fabricated_tree(tmp_path):
    rows = [("train/n01440764/n01440764_1.JPEG", 0), ("train/n01440764/n01440764_2.JPEG", 0),
            ("train/n01443537/n01443537_1.JPEG", 1), ("train/n15075141/n15075141_1.JPEG", 999)]
    _fabricate_tree(tmp_path, tmp_path / "ImageNet_LT", "ImageNet_LT",
                    {"train": rows, "test": [("val/n01440764/ILSVRC2012_val_1.JPEG", 0)]})
    ds = lt.load_dataset("imagenet_lt", tmp_path, split="train")
    assert len(ds) == 4 and ds.targets.tolist() == [0, 0, 1, 999]
    assert ds.num_classes == 1000 and ds.class_counts.sum() == 4 and ds.class_counts[0] == 2
    assert ds.classnames[:2] == ["tench", "goldfish"]
    image, label = ds[2]
    assert isinstance(image, Image.Image) and image.size == (28, 20) and image.mode == "RGB" and label == 1
    test = lt.load_dataset("imagenet_lt", tmp_path, split="test",
                           transform=lt.augment.torchvision_transforms(16, train=False))
    x, y = test[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 0
    assert torch.equal(ds.group_counts, ds.class_counts)  # train: its own counts define the D-groups
    assert torch.equal(test.group_counts, ds.class_counts)  # test: the train split's counts, not its own
    with pytest.raises(FileNotFoundError, match="ImageNet_LT_val.txt.*shijxcs/LIFT"):
        lt.load_dataset("imagenet_lt", tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match="root= must be the folder"):
        lt.load_dataset("imagenet_lt", tmp_path / "ImageNet_LT", split="train")  # split files found, images not


def test_places_lt_fabricated_tree_and_loader(tmp_path):
    rows = [("train/airfield/00000001.jpg", 0), ("train/apartment_building-outdoor/00000002.jpg", 8),
            ("train/zen_garden/00000003.jpg", 364)]
    _fabricate_tree(tmp_path, tmp_path, "Places_LT", {"val": rows})  # split file directly in root
    transform = lt.augment.torchvision_transforms(16, train=True)
    ds = lt.load_dataset("places_lt", tmp_path, split="val", transform=transform)
    assert ds.num_classes == 365 and ds.targets.tolist() == [0, 8, 364]
    assert ds.classnames[0] == "airfield" and ds.classnames[8] == "apartment building outdoor"
    assert ds.classnames[364] == "zen garden" and all("_" not in c for c in ds.classnames)
    loader = lt.data.make_loader(ds, batch_size=2, shuffle=False)
    batches = list(loader)
    assert len(loader) == 2 and [b[0].shape for b in batches] == [(2, 3, 16, 16), (1, 3, 16, 16)]
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 8, 364]


def test_split_file_errors(tmp_path):
    (tmp_path / "Places_LT_train.txt").write_text("train/a.jpg 0\ntrain/b.jpg\n")
    with pytest.raises(ValueError, match="Places_LT_train.txt:2"):
        lt.load_dataset("places_lt", tmp_path)
    (tmp_path / "Places_LT_train.txt").write_text("train/a.jpg 365\n")
    with pytest.raises(ValueError, match="outside"):
        lt.load_dataset("places_lt", tmp_path)


# ----------------------------------------------------------------------------------------------- lab delegation

def test_lab_delegates_to_make_world(monkeypatch):
    import types
    import lt_utils.lab
    worlds = {}

    def fake_make_world(seed=0, imbalance_ratio=100):
        worlds[seed] = types.SimpleNamespace(train=tiny_dataset(seed=seed), val=tiny_dataset(4), test=None,
                                             imbalance_ratio=imbalance_ratio)
        return worlds[seed]

    monkeypatch.setattr(lt_utils.lab, "make_world", fake_make_world)
    assert lt.load_dataset("lab", split="val", seed=3) is worlds[3].val
    flipped = lt.load_dataset("lab", split="train", seed=1, transform=lambda x: x.flip(-1))
    assert flipped is not worlds[1].train and worlds[1].train.transform is None  # the world is not changed
    assert torch.equal(flipped[0][0], worlds[1].train.images[0].flip(-1))
    lt.load_dataset("lab", split="train", seed=2, imbalance_ratio=10)
    assert worlds[2].imbalance_ratio == 10  # the ratio reaches the world
    with pytest.raises(ValueError, match="splits train, val, test"):
        lt.load_dataset("lab", split="holdout")


# ----------------------------------------------------------------------------------------------- TensorAugment

def random_batch(n=6, h=32, w=32, seed=0):
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("train", [True, False])
def test_tensor_augment_shapes_and_normalisation(train):
    augment = lt.augment.TensorAugment(40, lt.augment.CLIP_MEAN, lt.augment.CLIP_STD, train=train)
    out = augment(random_batch())
    assert out.shape == (6, 3, 40, 40) and out.dtype == torch.float32
    assert augment(random_batch()[0]).shape == (3, 40, 40)
    constant = torch.full((4, 3, 32, 32), 200, dtype=torch.uint8)
    expected = (200 / 255 - torch.tensor(lt.augment.CLIP_MEAN)) / torch.tensor(lt.augment.CLIP_STD)
    torch.testing.assert_close(augment(constant), expected.view(1, 3, 1, 1).expand(4, 3, 40, 40))


@pytest.mark.parametrize("shape, out, resize", [
    ((32, 32), 56, 64), ((24, 36), 56, 64), ((40, 30), 56, 64),  # enlarging (CIFAR -> 224 style)
    ((64, 80), 24, 28), ((96, 96), 24, 24),  # shrinking: antialiased like torchvision
])
def test_tensor_augment_test_mode_equals_torchvision(shape, out, resize):
    """torchvision's Resize(short side) + CenterCrop on a float image, then Normalize."""
    x = random_batch(3, *shape).float() / 255
    ours = lt.augment.TensorAugment(out, (0.5, 0.4, 0.3), (0.2, 0.3, 0.25), train=False, test_resize=resize)(x)
    reference = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(out),
                            v2.Normalize([0.5, 0.4, 0.3], [0.2, 0.3, 0.25])])
    torch.testing.assert_close(ours, torch.stack([reference(img) for img in x]), atol=1e-4, rtol=0)


def test_tensor_augment_full_box_is_a_resize_and_flip_mirrors():
    x = random_batch(64)
    plain = lt.augment.TensorAugment(48, train=True, scale=(1, 1), ratio=(1, 1), flip=False)(x)
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Resize((48, 48), antialias=True),
                            v2.Normalize(list(lt.augment.CLIP_MEAN), list(lt.augment.CLIP_STD))])
    torch.testing.assert_close(plain, torch.stack([reference(img) for img in x]), atol=2e-5, rtol=0)
    flipped = lt.augment.TensorAugment(48, train=True, scale=(1, 1), ratio=(1, 1), flip=True)(
        x, generator=torch.Generator().manual_seed(0))
    same = (flipped - plain).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (flipped - plain.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same ^ mirrored).all()) and 10 < int(mirrored.sum()) < 54


def test_tensor_augment_is_seeded_and_per_sample():
    augment = lt.augment.TensorAugment(32, train=True)
    x = random_batch(1).expand(16, 3, 32, 32)  # 16 copies of one image
    a = augment(x, generator=torch.Generator().manual_seed(7))
    b = augment(x, generator=torch.Generator().manual_seed(7))
    c = augment(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    distinct = {tuple(v.tolist()) for v in a[:, 0, 0, :4].round(decimals=4)}
    assert len(distinct) > 12  # each copy got its own crop


def test_random_boxes_follow_torchvision_rule():
    augment = lt.augment.TensorAugment(32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    x0, y0, w, h, flip = augment._random_boxes(4000, 32, 48, torch.Generator().manual_seed(0), "cpu")
    assert bool(((x0 >= 0) & (x0 + w <= 48) & (y0 >= 0) & (y0 + h <= 32) & (w >= 1) & (h >= 1)).all())
    assert torch.equal(w, w.round()) and torch.equal(x0, x0.floor())  # integer pixel boxes, as torchvision
    area = w * h / (32 * 48)
    assert 0.05 < float(area.min()) and float(area.max()) <= 1.0
    assert 0.45 < float(flip.double().mean()) < 0.55
    # torchvision's own sampler on the same image size gives the same mean crop area
    import torchvision
    tv = torch.tensor([(lambda p: p[2] * p[3])(torchvision.transforms.RandomResizedCrop.get_params(
        torch.empty(3, 32, 48), [0.08, 1.0], [3 / 4, 4 / 3])) for _ in range(4000)], dtype=torch.float64)
    assert abs(float(area.mean()) - float(tv.mean()) / (32 * 48)) < 0.02


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tensor_augment_on_cuda():
    x = random_batch(8)
    test = lt.augment.TensorAugment(64, train=False)
    torch.testing.assert_close(test(x.cuda()).cpu(), test(x), atol=1e-4, rtol=0)
    train = lt.augment.TensorAugment(64, train=True)
    a = train(x.cuda(), generator=torch.Generator(device="cuda").manual_seed(0))
    b = train(x.cuda(), generator=torch.Generator(device="cuda").manual_seed(0))
    assert a.is_cuda and torch.equal(a, b)
    x_gpu, y_gpu = next(iter(lt.data.make_loader(tiny_dataset(), 4, shuffle=True, device="cuda", batch_transform=train)))
    assert x_gpu.is_cuda and y_gpu.is_cuda and x_gpu.shape == (4, 3, 64, 64)


def test_tensor_augment_errors():
    with pytest.raises(ValueError, match="uint8"):
        lt.augment.TensorAugment(8)(torch.zeros(2, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        lt.augment.TensorAugment(8)(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="scale"):
        lt.augment.TensorAugment(8, scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="test_resize"):
        lt.augment.TensorAugment(8, train=False, test_resize=4)


def test_torchvision_transforms_take_pil_and_tensors():
    image = random_batch(1, 20, 28)[0]
    for train in (True, False):
        tf = lt.augment.torchvision_transforms(24, train=train)
        assert tf(image).shape == (3, 24, 24)
        assert tf(v2.functional.to_pil_image(image)).shape == (3, 24, 24)


# ----------------------------------------------------------------------------------------------- make_loader

def test_tensor_loader_epochs_cover_the_data():
    ds = tiny_dataset(n=10)
    loader = lt.data.make_loader(ds, batch_size=4, shuffle=True, device="cpu", seed=5)
    assert isinstance(loader, D.TensorLoader) and len(loader) == 3
    epochs = [torch.cat([y for _, y in loader]) for _ in range(2)]
    images = torch.cat([x for x, _ in lt.data.make_loader(ds, 4, shuffle=True, seed=5)])
    assert sorted(epochs[0].tolist()) == sorted(ds.targets.tolist())
    order = [next(i for i in range(10) if torch.equal(ds.images[i], img)) for img in images]
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert torch.equal(ds.targets[order], epochs[0])  # same seed -> same first-epoch order
    assert len(list(lt.data.make_loader(ds, 4, drop_last=True))) == 2
    x, y = next(iter(lt.data.make_loader(ds, 4, batch_transform=lt.augment.TensorAugment(16, train=False))))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.tolist() == [0, 1, 2, 0]


def test_loader_uses_dataloader_for_per_image_transforms():
    ds = tiny_dataset(n=5)
    ds.transform = lt.augment.TensorAugment(12, train=False)
    loader = lt.data.make_loader(ds, batch_size=2, device="cpu")
    assert isinstance(loader, D.DeviceLoader) and len(loader) == 3
    x, y = next(iter(loader))
    assert x.shape == (2, 3, 12, 12) and y.tolist() == [0, 1]


def test_balanced_subset_takes_per_class_from_every_class_and_depends_on_seed():
    labels = torch.arange(10).repeat_interleave(torch.arange(3, 13))
    picked = lt.balanced_subset(labels, 3, seed=1)
    assert torch.equal(torch.bincount(labels[picked]), torch.full((10,), 3))
    assert len(set(picked.tolist())) == len(picked)
    assert not torch.equal(picked, lt.balanced_subset(labels, 3, seed=2))
    with pytest.raises(ValueError, match="smallest class"):
        lt.balanced_subset(labels, 4)
