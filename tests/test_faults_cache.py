"""lt.cached under faults: a file it cannot read is kept and named, a provably corrupt one (its bytes do not match
the SHA-256 in its sidecar, or it does not parse) is deleted and recomputed with a warning, files follow the umask,
keys tell large tensors apart, and a failed final save of a fine-tuning run keeps its checkpoints."""
import builtins
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lt_utils as lt
import lt_utils.cache as cache_module
import lt_utils.training as lt_train


def _files(folder: Path):
    (pt,) = folder.glob("*.pt")
    return pt, pt.with_suffix(".json")


def test_the_version_is_2():
    assert cache_module.CACHE_VERSION == 2


def test_the_sidecar_records_the_key_and_the_sha256_of_the_file(tmp_cache):
    key = {"model": "lab-clip", "seed": 0}
    lt.cached("runs", key, lambda: {"w": torch.arange(5.0)})
    pt, sidecar = _files(tmp_cache / "runs")
    meta = json.loads(sidecar.read_text())
    assert meta["key"] == key
    assert meta["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_a_file_it_cannot_read_raises_names_it_and_is_kept(tmp_cache, monkeypatch, suffix):
    key = {"seed": 0}
    lt.cached("runs", key, lambda: torch.ones(3))
    pt, sidecar = _files(tmp_cache / "runs")
    target = pt if suffix == ".pt" else sidecar
    before = target.read_bytes()
    real_open = builtins.open

    def denying_open(file, *args, **kwargs):  # as chmod 000 would (the tests may run as root, where it does not)
        if isinstance(file, (str, os.PathLike)) and Path(file) == target:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denying_open)
    monkeypatch.setattr(io, "open", denying_open)
    calls = []
    with pytest.raises(PermissionError, match=re.escape(str(target))):
        lt.cached("runs", key, lambda: calls.append(1) or torch.zeros(3))
    monkeypatch.undo()
    assert calls == [], "nothing is recomputed over a file that may be fine"
    assert target.read_bytes() == before and pt.is_file() and sidecar.is_file(), "the file is kept"


def test_a_bit_flip_is_detected_warned_deleted_and_recomputed(tmp_cache):
    key = {"seed": 0}
    lt.cached("runs", key, lambda: torch.ones(1000))
    pt, _ = _files(tmp_cache / "runs")
    data = bytearray(pt.read_bytes())
    at = data.find(torch.ones(4).numpy().tobytes())  # inside the tensor's bytes: torch still parses the file
    assert at > 0
    data[at + 2] ^= 0x01  # 1.0 becomes 1.0078
    pt.write_bytes(bytes(data))
    assert not torch.equal(lt.cache.safe_torch_load(pt), torch.ones(1000)), "a changed value, a file that parses"
    calls = []
    with pytest.warns(UserWarning, match=re.escape(pt.name)):
        value = lt.cached("runs", key, lambda: calls.append(1) or torch.full((1000,), 2.0))
    assert calls == [1] and torch.equal(value, torch.full((1000,), 2.0))
    assert torch.equal(lt.cache.safe_torch_load(pt), value), "the repaired file is on disk"
    assert json.loads(pt.with_suffix(".json").read_text())["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()


def test_a_file_that_does_not_parse_is_deleted_and_recomputed_with_a_warning(tmp_cache):
    key = {"seed": 0}
    lt.cached("runs", key, lambda: torch.ones(3))
    pt, sidecar = _files(tmp_cache / "runs")
    pt.write_bytes(b"not a torch file")  # and a sidecar that vouches for these bytes: they still do not parse
    sidecar.write_text(json.dumps({"key": key, "sha256": hashlib.sha256(b"not a torch file").hexdigest()}))
    calls = []
    with pytest.warns(UserWarning, match=re.escape(pt.name)):
        value = lt.cached("runs", key, lambda: calls.append(1) or torch.full((3,), 2.0))
    assert calls == [1] and torch.equal(lt.cache.safe_torch_load(pt), value)


@pytest.mark.parametrize("sidecar_text", [None, '{"seed": 0}', '{"key": {"seed": 0}}', "{not json"])
def test_a_file_without_a_recorded_hash_is_recomputed_and_overwritten(tmp_cache, sidecar_text):
    key = {"seed": 0}
    lt.cached("runs", key, lambda: torch.ones(3))
    pt, sidecar = _files(tmp_cache / "runs")
    if sidecar_text is None:
        sidecar.unlink()  # e.g. the run died between writing the result and its sidecar
    else:
        sidecar.write_text(sidecar_text)  # the old format (the key alone) or a damaged sidecar
    calls = []
    with pytest.warns(UserWarning, match=re.escape(pt.name)):
        value = lt.cached("runs", key, lambda: calls.append(1) or torch.full((3,), 2.0))
    assert calls == [1] and torch.equal(lt.cache.safe_torch_load(pt), value)
    meta = json.loads(sidecar.read_text())
    assert meta["key"] == key and meta["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert torch.equal(lt.cached("runs", key, lambda: calls.append(2)), value) and calls == [1], "then it loads"


def test_the_umask_is_read_once_at_import():
    current = os.umask(0)
    os.umask(current)
    assert cache_module._UMASK == current


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_cached_files_follow_the_umask_not_0600(tmp_cache, monkeypatch, umask, mode):
    monkeypatch.setattr(cache_module, "_UMASK", umask)
    lt.cached("runs", {"seed": 0}, lambda: torch.ones(3))
    pt, sidecar = _files(tmp_cache / "runs")
    assert (pt.stat().st_mode & 0o777, sidecar.stat().st_mode & 0o777) == (mode, mode)
    written = cache_module.atomic_write_text("x", tmp_cache / "plain.txt")
    assert written.stat().st_mode & 0o777 == mode


def test_keys_tell_large_tensors_and_arrays_apart():
    a = torch.zeros(10_000)
    b = a.clone()
    b[5_000] = 1.0
    assert str(a) == str(b), "their str() is abbreviated: the key must not rely on it"
    key = cache_module.cache_key
    assert key({"w": a}) != key({"w": b})
    assert key({"w": a}) == key({"w": a.clone()}) == key({"w": torch.zeros(10_000)}), "the same tensor, the same key"
    assert key({"w": a}) != key({"w": a.double()}), "the dtype counts"
    assert key({"w": a}) != key({"w": a.view(100, 100)}), "the shape counts"
    assert key({"w": a[::2]}) == key({"w": a[::2].contiguous()}), "a view hashes like its contents"
    x = np.zeros(10_000)
    y = x.copy()
    y[5_000] = 1.0
    assert key({"nested": [{"x": x}]}) != key({"nested": [{"x": y}]})
    assert key({"x": x}) == key({"x": x.copy()})


def test_under_torchrun_only_rank_0_writes(tmp_cache, monkeypatch):
    """Two writers of one result could pair one's sidecar with the other's bytes, which would then look corrupt."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    assert torch.equal(lt.cached("runs", {"seed": 0}, lambda: torch.ones(3)), torch.ones(3))
    assert not (tmp_cache / "runs").exists() or not any((tmp_cache / "runs").iterdir())
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 0)
    lt.cached("runs", {"seed": 0}, lambda: torch.ones(3))
    assert len(list((tmp_cache / "runs").iterdir())) == 2


# --- a fine-tuning run under a failing final save


def test_a_failed_final_save_keeps_the_checkpoints_and_the_next_call_resumes(tiny_lab, monkeypatch):
    # keys from a snapshot of the source: an edit to the package while the test runs must not change them
    source = tiny_lab / "lt_utils_src"
    shutil.copytree(cache_module._PACKAGE_DIR, source, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache_module, "_PACKAGE_DIR", source)
    profile = lt.profile("lab")
    real_save = cache_module.atomic_torch_save

    def disk_full(obj, path):
        if Path(path).parent.name == "finetune":
            raise OSError("disk full")
        return real_save(obj, path)

    monkeypatch.setattr(cache_module, "atomic_torch_save", disk_full)
    with pytest.raises(OSError, match="disk full"):
        lt.fine_tune(profile, "lab-clip", epochs=1, progress=False)
    folders = list((lt.cache.cache_dir() / "finetune_checkpoints").iterdir())
    assert len(folders) == 1 and (folders[0] / "last.pt").is_file(), "the trained epochs survive the fault"
    assert not list((lt.cache.cache_dir() / "finetune").glob("*.pt"))

    monkeypatch.setattr(cache_module, "atomic_torch_save", real_save)
    steps = []
    real_step = lt_train.train_step
    monkeypatch.setattr(lt_train, "train_step", lambda *a, **kw: steps.append(1) or real_step(*a, **kw))
    run = lt.fine_tune(profile, "lab-clip", epochs=1, progress=False)
    assert steps == [], "the finished epochs are resumed, not retrained"
    assert len(run["history"]["loss"]) == 1 and run["test"]["logits"].shape[0] > 0
    assert not folders[0].exists(), "the checkpoints go once the result is on disk"
    assert len(list((lt.cache.cache_dir() / "finetune").glob("*.pt"))) == 1
