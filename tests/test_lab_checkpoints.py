"""The pre-trained lab models shipped with lt_utils (lt_utils/lab_checkpoints, issue 13): one per lab model, each
exactly what the current pre-training code makes, loaded instead of training only when it is."""
import warnings

import pytest
import torch

from lt_utils import lab


def _expected_files():
    return {lab.shipped_checkpoint(m, s) for m in lab.LAB_MODELS for s in lab.SHIPPED_SEEDS}


def test_every_lab_model_ships_a_checkpoint_made_by_the_current_code():
    missing = sorted(p.name for p in _expected_files() if not p.is_file())
    assert not missing, (f"No shipped checkpoint made by the current pre-training code for {missing}: the code or "
                         "recipe changed since they were made. Run `make lab-checkpoints` and commit "
                         "lt_utils/lab_checkpoints.")
    stale = sorted(p.name for p in set(lab.SHIPPED_DIR.glob("*.safetensors")) - _expected_files())
    assert not stale, f"Shipped checkpoints no code loads any more: {stale}. Run `make lab-checkpoints`."


def _assert_same_result(a: dict, b: dict):
    assert a.keys() == b.keys()
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    assert torch.equal(a["class_embeddings"], b["class_embeddings"])
    rest = [k for k in a if k not in ("state_dict", "class_embeddings")]
    assert {k: a[k] for k in rest} == {k: b[k] for k in rest}


def test_a_shipped_checkpoint_is_bit_for_bit_what_pretraining_makes(tmp_cache):
    """The trust test: pre-train one lab model from scratch here (about 40 s) and compare every weight with the
    file the book loads. (Made on the CI's 2-core x86 CPU; another CPU may round differently.)"""
    model = "lab-metaclip"
    if not lab.shipped_checkpoint(model).is_file():
        pytest.fail(f"no shipped checkpoint of {model}: run `make lab-checkpoints`")
    shipped = lab.pretrain(model, progress=False)
    trained = lab._train_model(model, 0, dict(lab.PRETRAIN_CONFIG), None, progress=False)
    _assert_same_result(shipped, trained)
    assert not list(tmp_cache.rglob("*.pt")), "a shipped model is loaded, not copied into the cache"


def test_pretrain_loads_a_shipped_file_without_training(tmp_cache, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("pretrain trained although a shipped checkpoint matches")

    monkeypatch.setattr(lab, "_train_model", no_training)
    out = lab.pretrain("lab-clip", progress=False)
    visual = lab.build_vit()
    visual.load_state_dict(out["state_dict"])
    assert out["class_embeddings"].shape == (lab.NUM_CLASSES, lab.LAB_VIT["output_dim"])
    assert out["model"] == "lab-clip" and out["seed"] == 0


@pytest.fixture
def shipped_here(tmp_path, monkeypatch, tiny_lab):
    """A shipped-checkpoint folder of this test's own, with the tiny pre-training recipe."""
    folder = tmp_path / "shipped"
    monkeypatch.setattr(lab, "SHIPPED_DIR", folder)
    return folder


def test_make_lab_checkpoints_writes_what_pretrain_then_loads_and_drops_stale_files(shipped_here):
    shipped_here.mkdir()
    stale = shipped_here / "lab-clip-seed0-00000000000000000000.safetensors"
    stale.write_bytes(b"made by older code")
    other = shipped_here / "lab-openclip-seed0-00000000000000000000.safetensors"
    other.write_bytes(b"a model this call does not remake")
    written = lab.write_shipped_checkpoints(models=("lab-clip",), progress=False)
    assert written == [lab.shipped_checkpoint("lab-clip")]
    assert not stale.exists() and other.exists()
    trained = lab._train_model("lab-clip", 0, dict(lab.PRETRAIN_CONFIG), None, progress=False)
    _assert_same_result(lab.pretrain("lab-clip", progress=False), trained)


def test_a_changed_recipe_does_not_load_the_old_file(shipped_here, monkeypatch):
    lab.write_shipped_checkpoints(models=("lab-clip",), progress=False)
    old = lab.shipped_checkpoint("lab-clip")
    monkeypatch.setitem(lab.PRETRAIN_CONFIG, "lr", 1e-3)
    assert lab.shipped_checkpoint("lab-clip") != old
    calls = []
    real = lab._train_model
    monkeypatch.setattr(lab, "_train_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    lab.pretrain("lab-clip", progress=False)
    assert len(calls) == 1, "a recipe the shipped file was not made with is trained"


def test_an_unreadable_shipped_file_warns_and_trains(shipped_here):
    path = lab.shipped_checkpoint("lab-clip")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00" * 64)
    with pytest.warns(UserWarning, match="unusable.*make lab-checkpoints"):
        out = lab.pretrain("lab-clip", progress=False)
    assert out["model"] == "lab-clip"
    assert path.exists(), "a shipped file is never deleted by a reader (git has the good one)"


def test_no_cache_trains_even_with_a_shipped_file(shipped_here, monkeypatch):
    lab.write_shipped_checkpoints(models=("lab-clip",), progress=False)
    monkeypatch.setenv("LT_NO_CACHE", "1")
    calls = []
    real = lab._train_model
    monkeypatch.setattr(lab, "_train_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lab.pretrain("lab-clip", progress=False)
    assert len(calls) == 1
