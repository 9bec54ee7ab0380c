"""Validation is not test, and groups survive other imbalance ratios: every profile's train / val / test splits are
disjoint (checked by sample ids), CIFAR-100-LT's val is a fixed balanced part of its test file, every dataset
carries the counts that define its D-groups, and the lab world accepts an imbalance ratio without mixing up its
cached worlds."""
import pickle

import numpy as np
import pytest
import torch

import lt_utils as lt
from lt_utils import lab

SPLITS = ("train", "val", "test")
PER_CLASS_TRAIN, PER_CLASS_TEST = 8, 5  # the test file holds 20 + 5 images per class (conftest's writer)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory, fake_cifar100):
    return fake_cifar100(tmp_path_factory.mktemp("splits"), PER_CLASS_TRAIN, PER_CLASS_TEST,
                         [f"class_{i}" for i in range(100)], per_class_val=20)


def _ids(dataset) -> set:
    assert dataset.ids is not None and dataset.ids.dtype == torch.long and len(dataset.ids) == len(dataset)
    ids = set(dataset.ids.tolist())
    assert len(ids) == len(dataset)  # unique within the split
    return ids


def _assert_disjoint(ids: dict):
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not ids[a] & ids[b], f"{a} and {b} share samples"


def test_cifar100_lt_train_val_test_are_disjoint_and_val_is_balanced(cifar_root):
    data = {s: lt.load_dataset("cifar100_lt", cifar_root, split=s) for s in SPLITS}
    ids = {s: _ids(d) for s, d in data.items()}
    _assert_disjoint(ids)
    assert data["val"].class_counts.tolist() == [20] * 100
    assert data["test"].class_counts.tolist() == [PER_CLASS_TEST] * 100
    assert ids["val"] | ids["test"] == set(range(50_000, 50_000 + 2500))  # the whole test file, once
    assert ids["train"] <= set(range(100 * PER_CLASS_TRAIN))


def _test_file(root):
    """The fabricated test file, read with plain pickle (the test wrote it)."""
    with open(root / "cifar-100-python" / "test", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    return entry["data"].reshape(-1, 3, 32, 32), np.asarray(entry["fine_labels"])


def test_cifar100_val_is_a_fixed_draw_from_the_test_file(cifar_root):
    """The first 20 of each class after a RandomState(0) shuffle per class, whatever the training seed."""
    _, labels = _test_file(cifar_root)
    rng, rows = np.random.RandomState(0), []
    for c in range(100):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        rows += idx[:20].tolist()
    val = lt.load_dataset("cifar100_lt", cifar_root, split="val")
    assert sorted(val.ids.tolist()) == sorted(50_000 + r for r in rows)
    assert torch.equal(lt.load_dataset("cifar100_lt", cifar_root, split="val", seed=3).ids, val.ids)
    test = lt.load_dataset("cifar100_lt", cifar_root, split="test", imbalance_ratio=10, seed=3)
    assert torch.equal(test.ids, lt.load_dataset("cifar100_lt", cifar_root, split="test").ids)


def test_cifar100_ids_point_back_to_the_file_rows(cifar_root):
    rows, labels = _test_file(cifar_root)
    for split in ("val", "test"):
        ds = lt.load_dataset("cifar100_lt", cifar_root, split=split)
        assert torch.equal(ds.images, torch.from_numpy(rows[ds.ids.numpy() - 50_000]))
        assert torch.equal(ds.targets, torch.from_numpy(labels[ds.ids.numpy() - 50_000]))


def test_cifar100_too_few_test_images_for_val_says_so(tmp_path, fake_cifar100):
    root = fake_cifar100(tmp_path, 2, 2, [f"c{i}" for i in range(100)], per_class_val=0)  # 2 per class in all
    with pytest.raises(ValueError, match="20 images per class"):
        lt.load_dataset("cifar100_lt", root, split="val")


@pytest.mark.parametrize("ratio", [10, 50, 100])
def test_cifar100_lt_keeps_the_ir100_grouping_at_every_ratio(cifar_root, ratio):
    ir100 = lt.data.cifar100_lt_groups()
    for split in SPLITS:
        ds = lt.load_dataset("cifar100_lt", cifar_root, split=split, imbalance_ratio=ratio)
        assert torch.equal(lt.data_groups(ds.class_counts, reference=ds.group_counts), ir100)
    assert torch.bincount(ir100).tolist() == [35, 35, 30]


def test_lab_train_val_test_are_disjoint(tiny_lab):
    data = {s: lt.load_dataset("lab", split=s) for s in SPLITS}
    _assert_disjoint({s: _ids(d) for s, d in data.items()})
    world = lab.make_world(0)
    for split in SPLITS:  # ids are metadata: the images are the world's
        assert torch.equal(data[split].images, getattr(world, split).images)


def test_lab_accepts_an_imbalance_ratio_and_keeps_the_ir100_grouping(tiny_lab, monkeypatch):
    monkeypatch.setattr(lab, "DOWNSTREAM_N_MAX", 500)  # the book's profile (val / test stay tiny)
    monkeypatch.setattr(lab, "DOWNSTREAM_IR", 100)
    ir10 = lt.load_dataset("lab", split="train", imbalance_ratio=10)
    counts = ir10.class_counts
    assert counts.max() == 500 and counts.max() / counts.min() == pytest.approx(10, rel=0.03)
    assert torch.equal(counts.argsort(descending=True, stable=True), lab.downstream_class_order(0))
    assert torch.bincount(lt.data_groups(counts), minlength=3)[2] == 0  # IR 10 alone has no Few class
    standard = lt.data_groups(lab.downstream_counts(0))
    assert torch.bincount(standard).tolist() == [35, 35, 30]
    for split in SPLITS:
        ds = lt.load_dataset("lab", split=split, imbalance_ratio=10)
        assert torch.equal(lt.data_groups(ds.class_counts, reference=ds.group_counts), standard)
    profile = lt.profile("lab").replace(imbalance_ratio=10)
    again = lt.load_dataset(profile.dataset, profile.data_root, "train", imbalance_ratio=profile.imbalance_ratio)
    assert torch.equal(again.class_counts, counts)
    default = lt.load_dataset("lab", split="train")  # the standard world is still there, cached apart
    assert torch.equal(default.class_counts, lab.downstream_counts(0)) and len(default) == 10847


def test_lab_ratio_in_the_tiny_world(tiny_lab):
    counts = lt.load_dataset("lab", split="train", imbalance_ratio=10).class_counts
    assert counts.max() / counts.min() == pytest.approx(10, rel=0.05)
    ds = lt.load_dataset("lab", split="train", imbalance_ratio=5)
    assert ds.class_counts.max() / ds.class_counts.min() == pytest.approx(5, rel=0.1)
    assert torch.equal(ds.group_counts, lab.downstream_counts(0))
    with pytest.raises(ValueError, match="no training image"):
        lab.make_world(0, imbalance_ratio=200)  # n_max 120 / 200 < 1 image


def test_worlds_of_other_sizes_are_not_confused(tiny_lab, monkeypatch):
    assert (lab.make_world(0).val.class_counts == 2).all()
    monkeypatch.setattr(lab, "VAL_PER_CLASS", 3)  # same cache folder, another size
    assert (lab.make_world(0).val.class_counts == 3).all()
    monkeypatch.setattr(lab, "TEST_PER_CLASS", 1)
    assert (lab.make_world(0).test.class_counts == 1).all()
    monkeypatch.setattr(lab, "DOWNSTREAM_N_MAX", 150)
    assert lab.make_world(0).train.class_counts.max() == 150
