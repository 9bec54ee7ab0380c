"""The paper's own datasets (ImageNet-LT, Places-LT, iNaturalist 2018) on fabricated folders in their real layouts
(``lt_utils.standin.write_image_list_folder``), and the decode-once image cache (``lt_utils.decoded``): the splits,
their ids and D-groups, the errors bad folders give, and a cache that is pixel-exact, reused, resumable after a
crash and memory-mapped rather than loaded."""
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lt_utils as lt
from lt_utils import decoded as dec
from lt_utils.augment import CLIP_STD, TensorAugment, torchvision_transforms
from lt_utils.phases import read_phase_log
from lt_utils.standin import write_image_list_folder

SPLITS = ("train", "val", "test")
INAT_CLASSES = 12
INAT_TRAIN = [30, 20, 14, 10, 8, 6, 5, 4, 3, 2, 2, 1]  # 105 images, long-tailed
# one Many (> 100), one Medium, the rest Few: every D-group is represented in the fabricated ImageNet-LT
IMAGENET_TRAIN = [101, 25] + [1] * 998
PLACES_TRAIN = [3, 2] + [1] * 363


@pytest.fixture(scope="module")
def inat_root(tmp_path_factory):
    # images around 120 x 90: the decode at 36 px shrinks them (antialiasing matters), some sides it enlarges
    return write_image_list_folder(tmp_path_factory.mktemp("inat"), "inat2018", num_classes=INAT_CLASSES,
                                   train_counts=INAT_TRAIN, per_class_val=1, per_class_test=2,
                                   image_size=(120, 90), seed=0)


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    return write_image_list_folder(tmp_path_factory.mktemp("imagenet"), "imagenet_lt", num_classes=1000,
                                   train_counts=IMAGENET_TRAIN, per_class_val=1, per_class_test=2)


@pytest.fixture(scope="module")
def places_root(tmp_path_factory):
    return write_image_list_folder(tmp_path_factory.mktemp("places"), "places_lt", num_classes=365,
                                   train_counts=PLACES_TRAIN, per_class_val=1, per_class_test=1)


def _ids(ds) -> set:
    assert ds.ids.dtype == torch.long and len(ds.ids) == len(ds) and (ds.ids >= 0).all()
    ids = set(ds.ids.tolist())
    assert len(ids) == len(ds)
    return ids


# ------------------------------------------------------------------------------------------------ the three datasets

@pytest.mark.parametrize("name, train_counts, per_val, per_test, first_name", [
    ("imagenet_lt", IMAGENET_TRAIN, 1, 2, "tench"),
    ("places_lt", PLACES_TRAIN, 1, 1, "airfield"),
    ("inat2018", INAT_TRAIN, 1, 2, "Fabricata species0"),
])
def test_each_dataset_loads_its_three_splits(request, name, train_counts, per_val, per_test, first_name):
    root = request.getfixturevalue({"imagenet_lt": "imagenet_root", "places_lt": "places_root",
                                    "inat2018": "inat_root"}[name])
    data = {s: lt.load_dataset(name, root, split=s) for s in SPLITS}
    num_classes = len(train_counts)
    assert data["train"].class_counts.tolist() == train_counts
    assert data["val"].class_counts.tolist() == [per_val] * num_classes
    assert data["test"].class_counts.tolist() == [per_test] * num_classes
    for split, ds in data.items():
        assert ds.num_classes == num_classes and ds.classnames[0] == first_name
        assert ds.group_counts.tolist() == train_counts, split  # every split's D-groups are train's
        assert ds.name == f"{name}_{split}"
    groups = lt.data_groups(data["test"].class_counts, reference=data["test"].group_counts)
    assert torch.equal(groups, lt.data_groups(train_counts))
    ids = {s: _ids(d) for s, d in data.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    image, label = data["val"][0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and label == int(data["val"].targets[0])


def test_imagenet_lt_d_groups_use_train_counts(imagenet_root):
    test = lt.load_dataset("imagenet_lt", imagenet_root, split="test")
    groups = lt.data_groups(test.class_counts, reference=test.group_counts)
    assert groups[:3].tolist() == [0, 1, 2]  # 101 training images: Many; 25: Medium; 1: Few
    assert lt.data_groups(test.class_counts).unique().tolist() == [2]  # its own 2 per class would make all Few


def test_inat_class_names_follow_the_ids_not_the_file_order(inat_root):
    entries = json.loads((inat_root / "iNaturalist18" / "categories.json").read_text())
    assert [e["id"] for e in entries] != list(range(INAT_CLASSES))  # the writer shuffles them
    ds = lt.load_dataset("inat2018", inat_root, split="val")
    assert ds.classnames == [f"Fabricata species{i}" for i in range(INAT_CLASSES)]


def test_inat_val_is_one_fixed_image_per_class_of_the_official_val(inat_root):
    official = (inat_root / "iNaturalist18" / "iNaturalist18_val.txt").read_text().split()[::2]
    val, test = (lt.load_dataset("inat2018", inat_root, split=s) for s in ("val", "test"))
    rel = lambda ds: {p.relative_to(inat_root).as_posix() for p in ds.paths}  # noqa: E731
    assert rel(val) | rel(test) == set(official) and not rel(val) & rel(test)
    assert len(val) == INAT_CLASSES and len(test) == 2 * INAT_CLASSES
    # the cut does not move with the training seed ...
    for seed in (1, 7):
        again = lt.load_dataset("inat2018", inat_root, split="val", seed=seed)
        assert again.paths == val.paths and torch.equal(again.ids, val.ids)
    # ... is the seeded draw it claims (RandomState(0), one per class, in file order) ...
    labels = np.array([int(x) for x in
                       (inat_root / "iNaturalist18" / "iNaturalist18_val.txt").read_text().split()[1::2]])
    rng, rows = np.random.RandomState(0), []
    for c in range(INAT_CLASSES):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        rows.append(idx[0])
    assert sorted(rel(val)) == sorted(official[r] for r in rows)
    # ... and is the same in another process (another hash seed)
    code = ("import lt_utils as lt, sys; ds = lt.load_dataset('inat2018', sys.argv[1], split='val'); "
            "print(' '.join(map(str, ds.ids.tolist())))")
    out = subprocess.run([sys.executable, "-c", code, str(inat_root)], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONHASHSEED="123"))
    assert [int(x) for x in out.stdout.split()] == val.ids.tolist()


def test_held_out_rows_generalises_cifars_cut():
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(100), 25))
    assert np.array_equal(lt.data.held_out_rows(labels, 20, 0, 100), lt.data.cifar100_val_rows(labels))
    with pytest.raises(ValueError, match="no test image of class"):
        lt.data.held_out_rows(np.array([0, 0, 1]), 1, 0)


def test_ids_hash_the_relative_path_and_catch_a_shared_file(tmp_path, imagenet_root):
    train = lt.load_dataset("imagenet_lt", imagenet_root, split="train")
    rel = train.paths[5].relative_to(imagenet_root).as_posix()
    expected = int.from_bytes(hashlib.sha1(rel.encode()).digest()[:8], "big") & (2 ** 63 - 1)
    assert int(train.ids[5]) == expected
    assert torch.equal(lt.data.path_ids([f"./{rel}"]), lt.data.path_ids([rel]))  # normalised as a POSIX path
    # a val file that lists a training image: the same id, and the kNN probe refuses the overlap
    leaky = tmp_path / "ImageNet_LT_val.txt"
    leaky.write_text((imagenet_root / "ImageNet_LT" / "ImageNet_LT_val.txt").read_text() + f"{rel} 0\n")
    val = lt.data.ImageListDataset(imagenet_root, leaky, train.classnames)
    assert int(val.ids[-1]) == expected
    feats = torch.randn(len(train), 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="shares 1 sample"):
        lt.knn_predict(feats, train.targets, torch.randn(len(val), 8), k=5, bank_ids=train.ids, query_ids=val.ids)


# ------------------------------------------------------------------------------------------------ bad folders

def _copy_inat(src: Path, dst: Path) -> Path:
    """A writable copy of the fabricated iNat split files (the images stay in ``src``: ``root=src``)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in (src / "iNaturalist18").iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_inat_missing_files_say_where_to_get_them(tmp_path, inat_root):
    with pytest.raises(FileNotFoundError, match="iNaturalist18_train.txt.*classifier-balancing"):
        lt.load_dataset("inat2018", tmp_path, split="train")
    folder = _copy_inat(inat_root, tmp_path / "iNaturalist18")
    (folder / "categories.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"categories.json.*inat_comp/tree/master/2018.*Un-obfuscated.*"
                                                + re.escape(str(folder))):
        lt.load_dataset("inat2018", tmp_path, split="val")
    (folder / "iNaturalist18_train.txt").unlink()
    (folder / "categories.json").write_text(json.dumps([{"id": i, "name": str(i)} for i in range(INAT_CLASSES)]))
    with pytest.raises(FileNotFoundError, match="iNaturalist18_train.txt"):  # val / test need train's counts
        lt.load_dataset("inat2018", tmp_path, split="test")


@pytest.mark.parametrize("categories, match", [
    ([{"id": i + 1, "name": str(i)} for i in range(INAT_CLASSES)], r"exactly 0\.\.11.*missing \[0\]"),
    ([{"id": i % 6, "name": str(i)} for i in range(INAT_CLASSES)], r"exactly 0\.\.11"),
    ([{"id": i, "name": str(i)} for i in range(8)], r"label \d+ is outside \[0, 8\).*same release"),
    ({"0": "a"}, "JSON list of objects"),
    ([{"id": "0", "name": "a"}], "integer"),
    ("{not json", "not valid JSON"),
])
def test_inat_bad_categories_are_clear_errors(tmp_path, inat_root, categories, match):
    folder = _copy_inat(inat_root, tmp_path / "iNaturalist18")
    text = categories if isinstance(categories, str) else json.dumps(categories)
    (folder / "categories.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        lt.load_dataset("inat2018", tmp_path, split="train")


def test_wrong_root_and_duplicate_lines_are_clear_errors(tmp_path, inat_root, places_root):
    folder = _copy_inat(inat_root, tmp_path / "iNaturalist18")  # split files found, images not below tmp_path
    with pytest.raises(FileNotFoundError, match="root= must be the folder that holds the images"):
        lt.load_dataset("inat2018", tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match="Places_LT_val.txt.*not found"):
        lt.load_dataset("places_lt", tmp_path, split="val")
    lines = (folder / "iNaturalist18_train.txt").read_text().splitlines()
    (folder / "iNaturalist18_train.txt").write_text("\n".join(lines + lines[:1]) + "\n")
    with pytest.raises(ValueError, match=f"lines 1 and {len(lines) + 1} list the same image"):
        lt.data.ImageListDataset(inat_root, folder / "iNaturalist18_train.txt", [str(i) for i in range(INAT_CLASSES)])


@pytest.mark.parametrize("kwargs, match", [
    (dict(dataset="inat2018", num_classes=4, train_counts=[2] * 4, per_class_val=2, per_class_test=2),
     "per_class_val must be 1"),
    (dict(dataset="imagenet_lt", num_classes=1000, train_counts=[1] * 10, per_class_val=1, per_class_test=1),
     "each of the 1000 classes"),
    (dict(dataset="places_lt", num_classes=10, train_counts=[1] * 10, per_class_val=1, per_class_test=1),
     "must be 365"),
    (dict(dataset="inat2018", num_classes=3, train_counts=[2, 0, 1], per_class_val=1, per_class_test=1),
     "at least 1 training image"),
    (dict(dataset="cifar100_lt", num_classes=3, train_counts=[1] * 3, per_class_val=1, per_class_test=1),
     "one of imagenet_lt"),
])
def test_fabricated_folder_argument_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_image_list_folder(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # checked before anything is written


# ------------------------------------------------------------------------------------------------ decoded_dataset

def _by_hand(path, size: int) -> np.ndarray:
    """Shorter side to ``size`` (torchvision's rule for the other side), PIL antialiased bilinear, centre crop."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    image = image.resize(new, Image.BILINEAR, reducing_gap=None)
    left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)
    return np.asarray(image.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


@pytest.fixture
def inat_train(inat_root):
    return lt.load_dataset("inat2018", inat_root, split="train")


def test_decode_size_is_the_test_transforms_resize():
    for image_size in (224, 32, 336, 100):
        assert dec.decode_size(image_size) == TensorAugment(image_size, train=False).test_resize
    assert dec.decode_size(224) == 256 and dec.decode_size(32) == 36


def test_decoded_images_are_pixel_exact_and_keep_labels_ids_groups(tmp_cache, inat_train, capsys):
    data = dec.decoded_dataset(inat_train, 36, workers=0)
    assert isinstance(data, lt.data.InMemoryDataset) and data.images.shape == (len(inat_train), 3, 36, 36)
    sizes = {Image.open(p).size for p in inat_train.paths}
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)  # landscape and portrait both covered
    for i, path in enumerate(inat_train.paths):
        assert np.array_equal(data.images[i].numpy(), _by_hand(path, 36)), path
    assert torch.equal(data.targets, inat_train.targets) and torch.equal(data.ids, inat_train.ids)
    assert torch.equal(data.group_counts, inat_train.group_counts) and data.classnames == inat_train.classnames
    folder = dec.default_folder(inat_train, 36)
    assert folder.parent == tmp_cache / "decoded" and folder.name.startswith("inat2018_train-36-")
    assert sorted(f.name for f in folder.iterdir() if f.name != "lock") == ["images.u8", "meta.json"]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["shape"] == [len(inat_train), 3, 36, 36] and meta["decode_version"] == dec.DECODE_VERSION
    assert f"decoded {len(inat_train)} images in" in capsys.readouterr().out


def test_eval_transform_on_the_square_matches_the_classic_pipeline(tmp_cache, inat_root):
    """TensorAugment(32, train=False) on the 36-px squares vs torchvision_transforms(32, train=False) on the
    original images. Same crop box; the resized pixels come from PIL's kernel on one side and torch's uint8
    antialiased kernel on the other, which agree to within one level of 255 (rounding), i.e. 1 / 255 / std in
    normalised units."""
    test = lt.load_dataset("inat2018", inat_root, split="test")
    data = dec.decoded_dataset(test, dec.decode_size(32), workers=0, progress=False)
    fast = TensorAugment(32, train=False)(data.images)
    classic = torch.stack([torchvision_transforms(32, train=False)(Image.open(p).convert("RGB")) for p in test.paths])
    assert fast.shape == classic.shape == (len(test), 3, 32, 32)
    tolerance = 1 / 255 / min(CLIP_STD) + 1e-5
    assert (fast - classic).abs().max() <= tolerance
    assert (fast - classic).abs().mean() < 0.05 * tolerance  # nearly every pixel is identical


def test_a_complete_cache_is_loaded_without_decoding(tmp_cache, inat_train, monkeypatch, capsys):
    first = dec.decoded_dataset(inat_train, 36, workers=0)
    capsys.readouterr()

    def refuse(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(dec, "decode_image", refuse)
    again = dec.decoded_dataset(inat_train, 36, workers=0)
    assert torch.equal(again.images, first.images)
    assert capsys.readouterr().out.strip() == (f"decoded images of iNaturalist18_train.txt (inat2018_train): loaded "
                                               f"from {dec.default_folder(inat_train, 36)}")


def test_val_and_test_of_one_file_get_their_own_caches(tmp_cache, inat_root, monkeypatch):
    val, test = (lt.load_dataset("inat2018", inat_root, split=s) for s in ("val", "test"))
    assert val.split_file == test.split_file
    assert dec.default_folder(val, 36) != dec.default_folder(test, 36)
    assert dec.default_folder(val, 36) != dec.default_folder(val, 40)
    monkeypatch.setenv("LT_DECODED_DIR", str(tmp_cache / "scratch"))
    assert dec.default_folder(val, 36).parent == tmp_cache / "scratch"


def test_a_crash_mid_way_resumes_the_missing_chunks_only(tmp_path, inat_train, monkeypatch, capsys):
    reference = dec.decoded_dataset(inat_train, 36, tmp_path / "reference", workers=0, progress=False)
    real, calls = dec.decode_image, []

    def crash_at_45(path, size):
        calls.append(path)
        if len(calls) == 45:
            raise KeyboardInterrupt("simulated crash")
        return real(path, size)

    folder = tmp_path / "crashed"
    monkeypatch.setattr(dec, "decode_image", crash_at_45)
    with pytest.raises(KeyboardInterrupt):
        dec.decoded_dataset(inat_train, 36, folder, workers=0, progress=False)
    state = json.loads((folder / "progress.json").read_text())
    chunk = state["chunk"]
    assert chunk == 27 and state["done"] == [0]  # 105 images / 4 chunks: chunk 1 (27..53) was hit at 45
    assert not (folder / "images.u8").exists() and not (folder / "meta.json").exists()  # nothing looks complete
    assert (folder / "images.u8.partial").stat().st_size == len(inat_train) * 3 * 36 * 36

    calls.clear()
    monkeypatch.setattr(dec, "decode_image", lambda path, size: calls.append(path) or real(path, size))
    resumed = dec.decoded_dataset(inat_train, 36, folder, workers=0)
    assert calls == [str(p) for p in inat_train.paths[chunk:]]  # the missing chunks, nothing else
    assert torch.equal(resumed.images, reference.images)
    assert (folder / "images.u8").read_bytes() == (tmp_path / "reference" / "images.u8").read_bytes()
    assert "(resumed: 27 were decoded before)" in capsys.readouterr().out
    assert not (folder / "progress.json").exists() and not (folder / "images.u8.partial").exists()


def test_a_crash_after_the_rename_is_finished_without_decoding(tmp_path, inat_train, monkeypatch):
    folder = tmp_path / "cache"
    dec.decoded_dataset(inat_train, 36, folder, workers=0, progress=False)
    digest = json.loads((folder / "meta.json").read_text())["digest"]
    (folder / "meta.json").unlink()
    with pytest.raises(ValueError, match="no meta.json and no progress.json"):  # not provably ours: refused
        dec.decoded_dataset(inat_train, 36, folder, workers=0, progress=False)
    n = len(inat_train)
    # the state a crash between the rename and meta.json leaves: every chunk listed as done
    (folder / "progress.json").write_text(json.dumps(dict(digest=digest, chunk=27, done=list(range(4)))))
    monkeypatch.setattr(dec, "decode_image", lambda *a: pytest.fail("decoded again"))
    data = dec.decoded_dataset(inat_train, 36, folder, workers=0, progress=False)
    assert data.images.shape[0] == n and (folder / "meta.json").is_file()


def test_a_truncated_file_is_decoded_again_with_a_warning(tmp_path, inat_train):
    folder = tmp_path / "cache"
    first = dec.decoded_dataset(inat_train, 36, folder, workers=0, progress=False).images.clone()
    with open(folder / "images.u8", "r+b") as f:
        f.truncate(1000)
    with pytest.warns(UserWarning, match="corrupt"):
        again = dec.decoded_dataset(inat_train, 36, folder, workers=0, progress=False)
    assert torch.equal(again.images, first)


def test_an_unreadable_meta_json_is_an_error_naming_the_folder(tmp_path, inat_train):
    folder = tmp_path / "cache"
    dec.decoded_dataset(inat_train, 36, folder, workers=0, progress=False)
    (folder / "meta.json").write_text("{half")
    with pytest.raises(RuntimeError, match=f"meta.json in {folder} is not readable JSON.*Delete the folder"):
        dec.decoded_dataset(inat_train, 36, folder, workers=0, progress=False)
    assert (folder / "images.u8").is_file() and (folder / "meta.json").read_text() == "{half"  # nothing deleted
    other = lt.load_dataset("inat2018", inat_train.root, split="val")
    (folder / "meta.json").write_text(json.dumps({"digest": "0" * 16, "size": 36}))
    with pytest.raises(ValueError, match="holds decoded images of something else"):
        dec.decoded_dataset(other, 36, folder, workers=0, progress=False)


def test_images_are_memory_mapped_from_the_file_not_loaded(tmp_path, inat_train):
    folder = tmp_path / "cache"
    images = dec.decoded_dataset(inat_train, 36, folder, workers=0, progress=False).images
    row = 3 * 36 * 36
    assert images[2:5].data_ptr() == images.data_ptr() + 2 * row  # a slice is a view
    maps = Path("/proc/self/maps")
    if maps.is_file():  # Linux: the tensor's memory is a mapping of images.u8
        mapped = [line.split()[0] for line in maps.read_text().splitlines() if line.endswith(str(folder / "images.u8"))]
        ranges = [tuple(int(x, 16) for x in r.split("-")) for r in mapped]
        assert any(lo <= images.data_ptr() < hi for lo, hi in ranges)
    before = (folder / "images.u8").read_bytes()
    images[0] += 1  # copy-on-write: the process sees its change, the file does not
    assert (folder / "images.u8").read_bytes() == before
    assert not np.array_equal(images[0].numpy().reshape(-1), np.frombuffer(before[:row], dtype=np.uint8))


def test_a_corrupt_image_names_the_file_and_line(tmp_path, inat_root):
    root = tmp_path / "data"
    val_file = inat_root / "iNaturalist18" / "iNaturalist18_val.txt"
    lines = val_file.read_text().splitlines()
    for line in lines:  # a copy of the val images, one of them broken
        rel = line.split()[0]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((inat_root / rel).read_bytes())
    _copy_inat(inat_root, root / "iNaturalist18")
    broken = lines[4].split()[0]
    (root / broken).write_bytes((root / broken).read_bytes()[:40] + b"not a jpeg")
    data = lt.data.ImageListDataset(root, root / "iNaturalist18" / "iNaturalist18_val.txt",
                                    [str(i) for i in range(INAT_CLASSES)])
    for workers in (0, 2):  # the message survives the trip back from a worker process
        with pytest.raises(RuntimeError, match=f"{broken}.*iNaturalist18_val.txt:5.*intact copy"):
            dec.decoded_dataset(data, 36, tmp_path / f"cache{workers}", workers=workers, progress=False)
        assert not (tmp_path / f"cache{workers}" / "images.u8").exists()


def test_workers_give_the_same_bytes_and_the_phase_is_recorded(tmp_path, inat_train, monkeypatch):
    log = tmp_path / "phases.jsonl"
    monkeypatch.setenv("LT_PHASE_LOG", str(log))
    dec.decoded_dataset(inat_train, 36, tmp_path / "w0", workers=0, progress=False)
    dec.decoded_dataset(inat_train, 36, tmp_path / "w2", workers=2, progress=False)
    assert (tmp_path / "w0" / "images.u8").read_bytes() == (tmp_path / "w2" / "images.u8").read_bytes()
    assert read_phase_log(log)["decoding"] > 0


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(size=0), ValueError, "size must be a positive integer"),
    (dict(size=36, workers=-1), ValueError, "workers must be an integer >= 0"),
])
def test_decoded_dataset_argument_errors(tmp_path, inat_train, kwargs, error, match):
    with pytest.raises(error, match=match):
        dec.decoded_dataset(inat_train, folder=tmp_path, **kwargs)
    with pytest.raises(TypeError, match="needs an image-list dataset"):
        dec.decoded_dataset(lt.data.InMemoryDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), [0, 1], "ab"), 36)
