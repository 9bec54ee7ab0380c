"""The lab world: determinism, shapes, the ground-truth priors describe the generated data, cell balance, and the
load-or-train round trip of the lab foundation models (on a tiny config)."""
import hashlib

import pytest
import torch
from scipy.stats import chisquare

import lt_utils as lt
from lt_utils import lab


@pytest.fixture(scope="module")
def world():
    return lab.make_world(0)


def test_classes_are_20_superclasses_of_5_named_siblings():
    assert len(lab.CLASSNAMES) == 100 and len(set(lab.CLASSNAMES)) == 100
    assert torch.equal(torch.bincount(lab.SUPERCLASS), torch.full((20,), 5))
    for name, sup in zip(lab.CLASSNAMES, lab.SUPERCLASS.tolist()):
        assert name.endswith(" " + lab.SUPERCLASS_NAMES[sup])
    assert set(lab.SHAPE_SDF) == set(lab.SHAPES)


def test_render_is_deterministic_and_seed_dependent():
    labels = torch.arange(0, 100, 3)
    a = lab.render_images(labels, seed=0)
    assert a.dtype == torch.uint8 and a.shape == (len(labels), 3, 24, 24)
    assert torch.equal(a, lab.render_images(labels, seed=0))
    assert not torch.equal(a, lab.render_images(labels, seed=1))
    assert not torch.equal(a, lab.render_images(labels, seed=0, style="upstream"))
    # chunking does not change the stream's meaning for a given chunk size, and images are not blank
    assert a.float().std() > 20
    with pytest.raises(ValueError, match="style"):
        lab.render_images(labels, style="cartoon")
    with pytest.raises(ValueError, match="Labels"):
        lab.render_images(torch.tensor([100]))


def test_downstream_counts_follow_the_cifar100_lt_profile():
    counts = lab.downstream_counts(0)
    profile = lt.data.long_tail_counts(100, 500, 100)
    assert sorted(counts.tolist(), reverse=True) == profile and counts.sum() == 10847
    assert not torch.equal(counts, lab.downstream_counts(1))  # the class order is seeded
    assert torch.equal(counts, lab.downstream_counts(0))


def test_upstream_priors_ground_truth():
    priors = lab.upstream_priors(0)
    assert tuple(priors) == lab.LAB_MODELS
    for name, p in priors.items():
        assert p.dtype == torch.float32 and p.shape == (100,) and (p > 0).all()
        assert abs(p.sum().item() - 1) < 1e-5
        ratio = (p.max() / p.min()).item()
        assert ratio == pytest.approx(10.0 if name == "lab-metaclip" else 100.0, rel=1e-3)
    assert torch.equal(priors["lab-clip-s1"], priors["lab-clip"])
    assert torch.equal(priors["lab-clip-s2"], priors["lab-clip"])
    # own head/tail orderings: not the same ranking for different priors, nor across world seeds
    assert not torch.equal(priors["lab-clip"].argsort(), priors["lab-openclip"].argsort())
    assert not torch.equal(priors["lab-clip"], lab.upstream_priors(1)["lab-clip"])
    assert all(torch.equal(p, q) for p, q in zip(priors.values(), lab.upstream_priors(0).values()))


@pytest.mark.parametrize("seed", [0, 1])
def test_every_d_by_p_cell_holds_10_to_12_classes(seed):
    d_groups = lt.data_groups(lab.downstream_counts(seed))  # the book's own grouping functions
    assert torch.bincount(torch.as_tensor(d_groups), minlength=3).tolist() == list(lab.D_GROUP_SIZES)
    for name, prior in lab.upstream_priors(seed).items():
        p_groups = torch.as_tensor(lt.prior_groups(prior))
        cells = torch.zeros(3, 3, dtype=torch.long)
        cells.index_put_((torch.as_tensor(d_groups), p_groups), torch.ones(100, dtype=torch.long), accumulate=True)
        assert cells.tolist() == [list(r) for r in lab.CELL_SIZES], name


@pytest.mark.parametrize("name", ["lab-clip", "lab-metaclip", "lab-clip-s1"])
def test_corpus_labels_are_drawn_from_the_true_prior(name):
    prior = lab.upstream_priors(0)[name]
    labels = lab.upstream_labels(name, 0)
    assert len(labels) == lab.PRETRAIN_CONFIG["corpus_size"]
    counts = torch.bincount(labels, minlength=100).double()
    expected = prior.double() * len(labels)
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-4  # within sampling error
    # a wrong prior (another model's ordering) is clearly rejected: the test can fail
    wrong = lab.upstream_priors(0)["lab-openclip"].double() * len(labels)
    assert chisquare(counts.numpy(), wrong.numpy()).pvalue < 1e-6
    assert counts.min() >= 1  # the rarest class still appears (about 10 images for ratio 100)


def test_same_prior_controls_draw_other_samples():
    assert not torch.equal(lab.upstream_labels("lab-clip", 0, 500), lab.upstream_labels("lab-clip-s1", 0, 500))
    assert torch.equal(lab.upstream_labels("lab-clip", 0, 500), lab.upstream_labels("lab-clip", 0, 500))


def test_upstream_corpus_dataset(monkeypatch):
    corpus = lab.upstream_corpus("lab-openclip", 0, corpus_size=64)
    assert isinstance(corpus, lt.data.InMemoryDataset)
    assert corpus.images.shape == (64, 3, 24, 24) and corpus.images.dtype == torch.uint8
    assert torch.equal(corpus.targets, lab.upstream_labels("lab-openclip", 0, 64))
    assert corpus.classnames == lab.CLASSNAMES
    with pytest.raises(ValueError, match="lab-metaclip"):
        lab.upstream_corpus("clip")


def test_make_world_splits(world):
    assert world.classnames == lab.CLASSNAMES and torch.equal(world.superclass, lab.SUPERCLASS)
    for split, n in (("train", 10847), ("val", 2000), ("test", 10000)):
        ds = getattr(world, split)
        assert isinstance(ds, lt.data.InMemoryDataset)
        assert ds.images.shape == (n, 3, 24, 24) and ds.images.dtype == torch.uint8
        assert ds.targets.dtype == torch.long and len(ds) == n
    assert torch.equal(world.train.class_counts, lab.downstream_counts(0))
    assert (world.val.class_counts == 20).all() and (world.test.class_counts == 100).all()
    assert all(torch.equal(world.upstream_priors[k], v) for k, v in lab.upstream_priors(0).items())
    for split, offset in (("train", 0), ("val", 1_000_000), ("test", 2_000_000)):  # ids: metadata, per split
        ds = getattr(world, split)
        assert torch.equal(ds.ids, offset + torch.arange(len(ds)))
        assert torch.equal(ds.group_counts, lab.downstream_counts(0))  # the D-groups of the training counts
    images, labels = world.examples(per_class=2)
    assert images.shape == (200, 3, 24, 24) and torch.equal(labels, torch.arange(100).repeat_interleave(2))
    with pytest.raises(ValueError, match="split"):
        world.examples(split="holdout")


def test_make_world_is_deterministic(world):
    fresh = lab._split_tensors(0, "val")  # regenerated, not read from the cache (train and test: same code path)
    assert torch.equal(fresh["images"], world.val.images) and torch.equal(fresh["targets"], world.val.targets)
    assert not torch.equal(fresh["images"], lab._split_tensors(1, "val")["images"])


# sha256 of (images, targets) of make_world(0), as the book's numbers were computed: they must not move
WORLD0_DIGESTS = {"train": "15f63c179cb600f6", "val": "93aea13fa89416a7", "test": "713297c175942679"}


def test_world_0_is_the_books(world):
    for split, digest in WORLD0_DIGESTS.items():
        ds = getattr(world, split)
        h = hashlib.sha256(ds.images.numpy().tobytes())
        h.update(ds.targets.numpy().tobytes())
        assert h.hexdigest()[:16] == digest, f"the {split} images or labels of the lab world changed"


def test_world_is_cached_once_per_size(tmp_cache, monkeypatch):
    monkeypatch.setattr(lab, "DOWNSTREAM_N_MAX", 20)
    monkeypatch.setattr(lab, "DOWNSTREAM_IR", 10)
    monkeypatch.setattr(lab, "VAL_PER_CLASS", 1)
    monkeypatch.setattr(lab, "TEST_PER_CLASS", 1)
    calls = []
    split_tensors = lab._split_tensors
    monkeypatch.setattr(lab, "_split_tensors", lambda *a: calls.append(a) or split_tensors(*a))
    first = lab.make_world(0)
    assert len(calls) == 3 and len(list((tmp_cache / "lab_world").glob("*.pt"))) == 1
    assert torch.equal(lab.make_world(0).train.images, first.train.images) and len(calls) == 3  # loaded
    assert torch.equal(lab.make_world(0, imbalance_ratio=10).train.images, first.train.images)  # the default
    assert len(calls) == 3
    monkeypatch.setattr(lab, "IMAGE_SIZE", 20)  # another size is another world
    lab.make_world(0)
    assert len(calls) == 6 and len(list((tmp_cache / "lab_world").glob("*.pt"))) == 2


def test_shift_flip_only_moves_pixels():
    images = lab.render_images(torch.arange(8), seed=3)
    out = lab._shift_flip(images, 0, torch.Generator().manual_seed(0))
    for a, b in zip(images, out):
        assert torch.equal(a, b) or torch.equal(a.flip(-1), b)
    assert lab._shift_flip(images, 2, torch.Generator().manual_seed(0)).shape == images.shape


def test_rank_groups():
    groups = lt.groups.rank_groups(torch.linspace(1, 0, 100), lab.P_GROUP_SIZES)
    assert groups[:34].eq(0).all() and groups[34:67].eq(1).all() and groups[67:].eq(2).all()
    assert torch.equal(groups, torch.as_tensor(lt.prior_groups(torch.linspace(1, 0, 100))))
    with pytest.raises(ValueError, match="add up"):
        lt.groups.rank_groups(torch.ones(10), lab.P_GROUP_SIZES)


@pytest.fixture
def tiny_pretrain(monkeypatch, tmp_cache):
    monkeypatch.setitem(lab.LAB_VIT, "width", 16)
    monkeypatch.setitem(lab.LAB_VIT, "layers", 1)
    monkeypatch.setitem(lab.LAB_VIT, "heads", 2)
    monkeypatch.setitem(lab.LAB_VIT, "output_dim", 8)
    monkeypatch.setitem(lab.PRETRAIN_CONFIG, "corpus_size", 256)
    monkeypatch.setitem(lab.PRETRAIN_CONFIG, "epochs", 2)
    monkeypatch.setitem(lab.PRETRAIN_CONFIG, "batch_size", 64)
    calls = []
    train = lab._train_model
    monkeypatch.setattr(lab, "_train_model", lambda *a, **k: calls.append(a) or train(*a, **k))
    return calls


def test_pretrain_load_or_train_round_trip(tiny_pretrain, tmp_cache):
    out = lab.pretrain("lab-clip-s1", progress=False)
    assert len(tiny_pretrain) == 1 and list((tmp_cache / "lab_pretrain").glob("*.pt"))
    assert out["class_embeddings"].shape == (100, 8)
    assert torch.allclose(out["class_embeddings"].norm(dim=-1), torch.ones(100), atol=1e-5)
    assert out["classnames"] == lab.CLASSNAMES and isinstance(out["logit_scale"], float)
    visual = lab.build_vit()
    visual.load_state_dict(out["state_dict"])  # the state dict fits open_clip's VisionTransformer(**LAB_VIT)
    again = lab.pretrain("lab-clip-s1", progress=False)
    assert len(tiny_pretrain) == 1  # loaded, not retrained
    assert all(torch.equal(again["state_dict"][k], v) for k, v in out["state_dict"].items())
    assert torch.equal(again["class_embeddings"], out["class_embeddings"])
    lab.PRETRAIN_CONFIG["epochs"] = 1  # (restored by monkeypatch) another config is another cache entry
    lab.pretrain("lab-clip-s1", progress=False)
    assert len(tiny_pretrain) == 2
    feats = lab.encode_images(visual, lab.render_images(torch.arange(4)), project=False)
    assert feats.shape == (4, 16)
    with pytest.raises(ValueError, match="Unknown lab model"):
        lab.pretrain("lab-siglip")
