"""`python -m lt_utils cache export | import`: one GPU run serves a class. A teacher's results travel in one zip
archive; an import verifies every byte before writing any (tampered, unsafe or unlisted members are refused), never
overwrites a differing result silently, and the chapters then load the results instead of computing them."""
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

import lt_utils as lt
import lt_utils.cache as cache_module
import lt_utils.lab as lab
import lt_utils.runs as runs_module
from lt_utils.__main__ import main
from lt_utils.cache import CacheArchiveError, export_cache, import_cache

KEYS = [("zeroshot", {"model": "m", "seed": 0}), ("zeroshot", {"model": "m", "seed": 1}),
        ("finetune", {"model": "m", "loss": "la"})]


def _value(kind, key):
    g = torch.Generator().manual_seed(key.get("seed", 7))
    return {"logits": torch.randn(50, 10, generator=g), "kind": kind, "labels": torch.arange(50) % 10}


def _fill(folder: Path, monkeypatch) -> dict:
    """Cache A: real entries written by ``cached``; returns path -> value."""
    monkeypatch.setenv("LT_CACHE_DIR", str(folder))
    for kind, key in KEYS:
        lt.cached(kind, key, lambda: _value(kind, key), depends_on=["profiles"])
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _files(folder: Path) -> list:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _rewrite(archive: Path, out: Path, change) -> Path:
    """A copy of ``archive`` with its members (name -> bytes; the manifest parsed) changed by ``change``."""
    with zipfile.ZipFile(archive) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    change(members, manifest)
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("manifest.json", json.dumps(manifest))
    return out


@pytest.fixture
def exported(tmp_path, monkeypatch):
    """An archive of cache A's three results, and an empty cache B set as LT_CACHE_DIR."""
    _fill(tmp_path / "a", monkeypatch)
    archive = tmp_path / "results.zip"
    export_cache(archive)
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "b"))
    return archive


def test_round_trip_loads_without_computing(tmp_path, monkeypatch):
    stored = _fill(tmp_path / "a", monkeypatch)
    archive = tmp_path / "out" / "results.zip"
    summary = export_cache(archive)
    assert summary["exported"] == 3 and summary["kinds"] == {"finetune": 1, "zeroshot": 2} and not summary["skipped"]
    with zipfile.ZipFile(archive) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert sorted(zf.namelist()) == sorted([*stored, "manifest.json"]), "the entries' files as they are stored"
    assert (manifest["format_version"], manifest["cache_version"]) == (1, cache_module.CACHE_VERSION)
    assert manifest["lt_utils_version"] and manifest["created"]
    for entry in manifest["entries"]:
        data = stored[entry["path"]]
        assert entry["kind"] == entry["path"].split("/")[0] and entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()

    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "b"))
    summary = import_cache(archive)
    assert (summary["written"], summary["skipped"], summary["conflicts"]) == (3, 0, [])
    assert {p: (tmp_path / "b" / p).read_bytes() for p in _files(tmp_path / "b")} == stored
    for kind, key in KEYS:
        value = lt.cached(kind, key, lambda: pytest.fail("computed again after the import"), depends_on=["profiles"])
        expected = _value(kind, key)
        assert torch.equal(value["logits"], expected["logits"]) and value["kind"] == kind
    assert import_cache(archive)["skipped"] == 3, "identical results are skipped"


def test_export_leaves_out_corrupt_unfinished_and_in_progress_files(tmp_path, monkeypatch):
    folder = tmp_path / "a"
    _fill(folder, monkeypatch)
    corrupt, unfinished = sorted((folder / "zeroshot").glob("*.pt"))
    corrupt.write_bytes(corrupt.read_bytes()[:-1] + b"x")
    unfinished.with_suffix(".json").unlink()
    (folder / "finetune_checkpoints" / "0123456789abcdef0123").mkdir(parents=True)
    (folder / "finetune_checkpoints" / "0123456789abcdef0123" / "last.pt").write_bytes(b"epoch 3")
    (folder / "finetune" / ".0123456789abcdef0123.pt.x.tmp").write_bytes(b"half a file")
    summary = export_cache(tmp_path / "results.zip")
    assert summary["exported"] == 1 and summary["kinds"] == {"finetune": 1}
    reasons = dict(summary["skipped"])
    assert "corrupt" in reasons[f"zeroshot/{corrupt.name}"] and "no sidecar" in reasons[f"zeroshot/{unfinished.name}"]
    with zipfile.ZipFile(tmp_path / "results.zip") as zf:
        assert all(n.startswith("finetune/") and ".tmp" not in n for n in zf.namelist() if n != "manifest.json")
    with pytest.raises(ValueError, match="No cached results of kind 'lab_world'.*finetune, zeroshot"):
        export_cache(tmp_path / "other.zip", kinds=["lab_world"])


def _flip_result_byte(members, manifest):
    name = next(n for n in members if n.endswith(".pt"))
    members[name] = members[name][:-10] + bytes([members[name][-10] ^ 1]) + members[name][-9:]


def _flip_and_fix_manifest(members, manifest):
    """A forger who also updates the manifest: the sidecar (the cache's own record) still disagrees."""
    _flip_result_byte(members, manifest)
    for entry in manifest["entries"]:
        entry["sha256"] = hashlib.sha256(members[entry["path"]]).hexdigest()


@pytest.mark.parametrize("change, message", [
    (_flip_result_byte, "does not match its manifest"),
    (_flip_and_fix_manifest, "does not vouch for"),
], ids=["result-byte", "result-byte-and-manifest"])
def test_a_tampered_member_is_refused_and_nothing_is_written(exported, tmp_path, change, message):
    tampered = _rewrite(exported, tmp_path / "tampered.zip", change)
    with pytest.raises(CacheArchiveError, match=message):
        import_cache(tampered)
    assert _files(tmp_path / "b") == []


def test_a_damaged_archive_byte_is_refused(exported, tmp_path):
    with zipfile.ZipFile(exported) as zf:
        info = max(zf.infolist(), key=lambda i: i.compress_size)
    data = bytearray(exported.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CacheArchiveError, match="damaged|does not match"):
        import_cache(damaged)
    assert _files(tmp_path / "b") == []


@pytest.mark.parametrize("name", ["../evil.pt", "/tmp/lt_evil.pt", "zeroshot/../../evil.pt", "..\\evil.pt"])
def test_a_path_outside_the_cache_is_refused(exported, tmp_path, name):
    def add(members, manifest):  # listed in the manifest too: only the path is wrong
        members[name] = b"payload"
        manifest["entries"].append(dict(path=name, kind="zeroshot", size=7,
                                        sha256=hashlib.sha256(b"payload").hexdigest(),
                                        sidecar=dict(path=name, size=7, sha256=hashlib.sha256(b"payload").hexdigest())))
    evil = _rewrite(exported, tmp_path / "evil.zip", add)
    with pytest.raises(CacheArchiveError, match="unsafe path"):
        import_cache(evil)
    assert _files(tmp_path / "b") == [] and not (tmp_path / "evil.pt").exists() and not Path("/tmp/lt_evil.pt").exists()


def test_a_symbolic_link_member_is_refused(exported, tmp_path):
    link = tmp_path / "link.zip"
    link.write_bytes(exported.read_bytes())
    with zipfile.ZipFile(link, "a") as zf:
        info = zipfile.ZipInfo("zeroshot/link")
        info.external_attr = (0o120777) << 16  # a symlink to /etc/passwd
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(CacheArchiveError, match="symbolic link"):
        import_cache(link)
    assert _files(tmp_path / "b") == []


@pytest.mark.parametrize("change, message", [
    (lambda members, manifest: members.update({"zeroshot/notes.txt": b"hi"}), "not listed in its manifest"),
    (lambda members, manifest: members.pop(sorted(members)[0]), "lacks"),
    (lambda members, manifest: manifest.update(cache_version=1), "cache version 1"),
    (lambda members, manifest: manifest.update(format_version=99), "archive format 99"),
], ids=["unlisted-member", "missing-member", "other-cache-version", "other-archive-format"])
def test_unlisted_members_and_other_versions_are_refused(exported, tmp_path, change, message):
    with pytest.raises(CacheArchiveError, match=message):
        import_cache(_rewrite(exported, tmp_path / "changed.zip", change))
    assert _files(tmp_path / "b") == []


def test_an_archive_without_a_manifest_is_refused(tmp_path, tmp_cache):
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as zf:
        zf.writestr("zeroshot/0123456789abcdef0123.pt", b"x")
    with pytest.raises(CacheArchiveError, match="no manifest.json"):
        import_cache(tmp_path / "plain.zip")


def test_a_differing_result_is_left_alone_unless_overwrite(exported, tmp_path):
    kind, key = KEYS[0]
    mine = {"logits": torch.zeros(2), "kind": "mine", "labels": torch.zeros(2)}
    lt.cached(kind, key, lambda: mine, depends_on=["profiles"])
    summary = import_cache(exported)
    assert (summary["written"], len(summary["conflicts"])) == (2, 1) and summary["conflicts"][0].startswith(kind)
    kept = lt.cached(kind, key, lambda: pytest.fail("computed"), depends_on=["profiles"])
    assert kept["kind"] == "mine", "never overwritten silently"
    summary = import_cache(exported, overwrite=True)
    assert (summary["written"], summary["skipped"], summary["overwritten"]) == (1, 2, summary["overwritten"][:1])
    replaced = lt.cached(kind, key, lambda: pytest.fail("computed"), depends_on=["profiles"])
    assert torch.equal(replaced["logits"], _value(kind, key)["logits"])


def test_cli_exit_codes(tmp_path, monkeypatch, capsys):
    _fill(tmp_path / "a", monkeypatch)
    archive = tmp_path / "results.zip"
    assert main(["cache", "export", str(archive), "--kinds", "zeroshot"]) == 0
    assert "exported 2 cached results" in capsys.readouterr().out
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "b"))
    assert main(["cache", "import", str(archive)]) == 0
    assert "imported 2 of 2 cached results" in capsys.readouterr().out

    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"not a zip at all")
    tampered = _rewrite(archive, tmp_path / "tampered.zip", _flip_result_byte)
    for argv, message in [(["cache", "import", str(tmp_path / "missing.zip")], "No archive at"),
                          (["cache", "import", str(garbage)], "not a zip archive"),
                          (["cache", "import", str(tampered)], "does not match its manifest"),
                          (["cache", "export", str(tmp_path / "x.zip"), "--kinds", "nosuch"], "'nosuch'")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"usage: python -m lt_utils cache {argv[1]}" in err and message in err
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "empty"))
    assert main(["cache", "export", str(tmp_path / "none.zip")]) == 2
    assert "No complete cached results" in capsys.readouterr().err and not (tmp_path / "none.zip").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["cache"])
    assert exit_info.value.code == 2


def test_a_lab_run_imported_into_a_fresh_cache_trains_nothing(tiny_lab, monkeypatch, one_thread):
    P = lt.profile("lab")
    zero = lt.zero_shot(P, "lab-clip", progress=False)
    with monkeypatch.context() as patch:  # the teacher's run, its training loop skipped (the cache is the point)
        patch.setattr(runs_module, "train", lambda *a, **k: dict(loss=[1.0], acc=[0.5], lr=[0.01], time_s=[0.1]))
        tuned = lt.fine_tune(P, "lab-clip", epochs=1, progress=False)
    summary = export_cache(tiny_lab / "results.zip")
    assert {"zeroshot", "finetune", "lab_world", "lab_pretrain"} <= set(summary["kinds"])

    monkeypatch.setenv("LT_CACHE_DIR", str(tiny_lab / "student"))
    assert import_cache(tiny_lab / "results.zip")["written"] == summary["exported"]
    monkeypatch.setattr(runs_module, "load_foundation_model", lambda *a, **k: pytest.fail("zero-shot ran again"))
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: pytest.fail("fine_tune trained again"))
    monkeypatch.setattr(lab, "_train_model", lambda *a, **k: pytest.fail("pre-trained again"))
    assert torch.equal(lt.zero_shot(P, "lab-clip", progress=False)["test"]["logits"], zero["test"]["logits"])
    again = lt.fine_tune(P, "lab-clip", epochs=1, progress=False)
    assert torch.equal(again["test"]["logits"], tuned["test"]["logits"])
    assert lt.lab.pretrain("lab-clip")["classnames"] == list(lab.CLASSNAMES)
