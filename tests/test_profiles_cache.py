"""lt.profile() (the settings every chapter reads) and lt.cached (the one load-or-compute helper)."""
import dataclasses
import json

import pytest
import torch

import lt_utils as lt
from lt_utils import cache as cache_module

# --- profiles


def test_lab_is_the_default_profile(monkeypatch):
    monkeypatch.delenv("LT_PROFILE", raising=False)
    P = lt.profile()
    assert P.name == "lab" and P.dataset == "lab" and P.device == torch.device("cpu") and P.amp is False
    assert P.models == ("lab-clip", "lab-openclip", "lab-metaclip")
    assert P.control_models == ("lab-clip", "lab-clip-s1", "lab-clip-s2")
    assert (P.epochs, P.batch_size, P.seeds, P.imbalance_ratio, P.peft) == (5, 128, (0, 1, 2), 100, "adaptformer")
    assert (P.lr, P.momentum, P.weight_decay, P.tau) == (0.01, 0.9, 5e-4, 1.0)


def test_unknown_profile_names_the_valid_ones(monkeypatch):
    with pytest.raises(ValueError, match="lab.*clip"):
        lt.profile("imagenet")
    monkeypatch.setenv("LT_PROFILE", "nope")
    with pytest.raises(ValueError, match="LT_PROFILE"):
        lt.profile()


def test_lt_profile_env_selects_the_profile_and_an_argument_wins(monkeypatch):
    monkeypatch.setenv("LT_PROFILE", " LAB ")
    assert lt.profile().name == "lab"
    monkeypatch.setenv("LT_PROFILE", "clip")
    assert lt.profile("lab").name == "lab"
    if torch.cuda.is_available():
        P = lt.profile()
        assert (P.name, P.dataset, P.device.type, P.amp) == ("clip", "cifar100_lt", "cuda", True)
        assert P.models == ("clip", "openclip", "metaclip") and P.epochs == 10 and P.micro_batch_size == 64
    else:
        with pytest.raises(RuntimeError, match="LT_PROFILE=lab"):
            lt.profile()


def test_profile_is_frozen_and_replace_makes_a_copy():
    P = lt.profile("lab")
    with pytest.raises(dataclasses.FrozenInstanceError):
        P.epochs = 1
    Q = P.replace(epochs=2)
    assert (P.epochs, Q.epochs) == (5, 2) and Q.models == P.models
    d = P.as_dict()
    assert json.loads(json.dumps(d)) == d and d["device"] == "cpu"


def test_set_seed_makes_draws_repeat():
    lt.profiles.set_seed(3)
    a = torch.rand(4)
    lt.profiles.set_seed(3)
    assert torch.equal(a, torch.rand(4))


def test_get_device_honours_a_preference():
    assert lt.profiles.get_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="GPU"):
            lt.profiles.get_device("cuda")


# --- cache


@dataclasses.dataclass
class _Plain:
    x: int


def test_cache_dir_follows_lt_cache_dir(tmp_cache, monkeypatch):
    assert lt.cache.cache_dir() == tmp_cache
    monkeypatch.delenv("LT_CACHE_DIR")
    assert lt.cache.cache_dir().parts[-2:] == (".cache", "lt_utils")


def test_cached_computes_once_then_reloads(tmp_cache):
    calls = []

    def compute():
        calls.append(1)
        return {"logits": torch.arange(6.0).view(2, 3), "acc": 0.5, "names": ["a", "b"]}

    key = {"model": "lab-clip", "seed": 0}
    first = lt.cached("runs", key, compute)
    second = lt.cached("runs", key, compute)
    assert len(calls) == 1
    assert torch.equal(first["logits"], second["logits"]) and second["acc"] == 0.5 and second["names"] == ["a", "b"]
    files = sorted(p.name for p in (tmp_cache / "runs").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".pt")
    assert json.loads((tmp_cache / "runs" / files[0]).read_text())["key"] == key, "the sidecar holds the key"


def test_a_changed_key_recomputes(tmp_cache):
    calls = []
    lt.cached("runs", {"seed": 0}, lambda: calls.append(0) or torch.zeros(1))
    lt.cached("runs", {"seed": 1}, lambda: calls.append(1) or torch.ones(1))
    assert calls == [0, 1]
    assert lt.cache.cache_key({"a": 1, "b": 2}) == lt.cache.cache_key({"b": 2, "a": 1}), "key order does not matter"
    assert lt.cache.cache_key({"a": 1}) != lt.cache.cache_key({"a": 2})


def test_the_source_of_depends_on_is_part_of_the_key():
    key = {"a": 1}
    assert lt.cache.cache_key(key, depends_on=["profiles"]) != lt.cache.cache_key(key, depends_on=["cache"])
    assert lt.cache.cache_key(key, depends_on=["profiles"]) == lt.cache.cache_key(key, depends_on=["profiles"])


def test_a_corrupted_file_is_recomputed(tmp_cache):
    key = {"seed": 0}
    lt.cached("runs", key, lambda: torch.ones(3))
    (path,) = (tmp_cache / "runs").glob("*.pt")
    path.write_bytes(b"not a torch file")
    calls = []
    with pytest.warns(UserWarning, match="corrupt"):
        value = lt.cached("runs", key, lambda: calls.append(1) or torch.full((3,), 2.0))
    assert calls == [1] and torch.equal(value, torch.full((3,), 2.0))
    assert torch.equal(lt.cache.safe_torch_load(path), value), "the repaired file is on disk"


def test_a_failed_compute_leaves_nothing_behind(tmp_cache):
    def boom():
        raise KeyError("interrupted")

    with pytest.raises(KeyError):
        lt.cached("runs", {"seed": 0}, boom)
    assert not (tmp_cache / "runs").exists() or not any((tmp_cache / "runs").iterdir())


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "x.pt"
    lt.cache.atomic_torch_save({"w": torch.ones(2)}, path)
    with pytest.raises(Exception):
        lt.cache.atomic_torch_save({"f": lambda: 0}, path)  # a lambda cannot be pickled
    assert torch.equal(lt.cache.safe_torch_load(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"], "no temporary file is left"


def test_safe_load_refuses_code_and_names_missing_files(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": _Plain(1)}, path)  # an arbitrary object: loading it would run pickle code
    with pytest.raises(RuntimeError, match="delete it"):
        lt.cache.safe_torch_load(path)
    with pytest.raises(FileNotFoundError):
        lt.cache.safe_torch_load(tmp_path / "missing.pt")


def test_lt_no_cache_always_recomputes(tmp_cache, monkeypatch):
    calls = []
    lt.cached("runs", {"k": 1}, lambda: calls.append(1) or torch.zeros(1))
    monkeypatch.setenv("LT_NO_CACHE", "1")
    lt.cached("runs", {"k": 1}, lambda: calls.append(2) or torch.zeros(1))
    assert calls == [1, 2]
    assert cache_module.cache_dir() == tmp_cache
