"""The clip profile as a Colab user meets it (issue 11): the data downloads wherever a chapter needs it, the
session-sized clip-lite profile, FLOPs counted without autograd, and the offline stand-in that CI runs every
chapter in."""
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from open_clip.transformer import VisionTransformer

import lt_utils as lt
from lt_utils import standin
from lt_utils.data import cifar100_source, download_and_extract

ROOT = Path(__file__).resolve().parent.parent


def _tar_gz(members: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_download_checks_the_md5_and_keeps_nothing_broken(tmp_path):
    source = tmp_path / "mirror.tar.gz"
    source.write_bytes(_tar_gz({"folder/a.txt": b"hello"}))
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    root = tmp_path / "data"
    with pytest.raises(RuntimeError, match="not kept"):
        download_and_extract(source.as_uri(), root / "x.tar.gz", "0" * 32)
    assert not root.exists() or not any(root.iterdir())  # no half file, no wrong file
    download_and_extract(source.as_uri(), root / "x.tar.gz", md5)
    assert (root / "folder" / "a.txt").read_bytes() == b"hello"


def test_extraction_refuses_a_member_outside_the_folder(tmp_path):
    source = tmp_path / "evil.tar.gz"
    source.write_bytes(_tar_gz({"../escaped.txt": b"x"}))
    with pytest.raises(tarfile.TarError):
        download_and_extract(source.as_uri(), tmp_path / "data" / "evil.tar.gz",
                             hashlib.md5(source.read_bytes()).hexdigest())
    assert not (tmp_path / "escaped.txt").exists()


def test_a_mirror_needs_its_md5(monkeypatch):
    monkeypatch.delenv("LT_CIFAR100_URL", raising=False)
    monkeypatch.delenv("LT_CIFAR100_MD5", raising=False)
    assert cifar100_source() == (lt.data.CIFAR100_URL, lt.data.CIFAR100_TGZ_MD5)
    monkeypatch.setenv("LT_CIFAR100_URL", "file:///somewhere/cifar-100-python.tar.gz")
    with pytest.raises(ValueError, match="LT_CIFAR100_MD5"):
        cifar100_source()


def test_clip_lite_is_the_clip_recipe_with_fewer_epochs_and_one_seed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    clip, lite = lt.profile("clip"), lt.profile("clip-lite")
    assert (lite.name, lite.epochs, lite.seeds) == ("clip-lite", 3, (0,))
    assert lite.replace(name="clip", epochs=clip.epochs, seeds=clip.seeds) == clip


def test_flops_are_counted_without_autograd_and_with_the_attention(monkeypatch):
    vit = VisionTransformer(image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_ratio=4.0,
                            output_dim=32).eval()
    x = torch.randn(1, 3, 32, 32)
    tokens, width = 17, 64  # 16 patches + class token
    attention = 2 * (3 * tokens * width * width + tokens * width * width + 2 * tokens * tokens * width)
    mlp = 2 * 2 * tokens * width * 4 * width
    expected = 2 * (attention + mlp) + 2 * 16 * (3 * 8 * 8) * width + 2 * width * 32
    seen = []
    vit.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    assert lt.count_flops(vit, x) == expected  # the MHA fast path would hide the attention's matmuls
    assert seen == [False] and torch.backends.mha.get_fastpath_enabled()  # no graph kept; setting restored
    cost = lt.inference_cost([vit], torch.randn(8, 3, 32, 32), repeats=2)
    assert cost[0]["flops_per_image"] == expected  # per image, counted on one


def test_the_standin_serves_the_clip_path_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LT_DATA_ROOT", str(tmp_path / "data"))  # empty: the run must download
    monkeypatch.setenv("LT_STANDIN_ROOT", str(tmp_path / "internet"))
    for var in ("LT_CIFAR100_URL", "LT_CIFAR100_MD5"):
        monkeypatch.delenv(var, raising=False)
    P = lt.profile("standin")
    assert P.dataset == "cifar100_lt" and P.models == tuple(standin.STANDIN_MODELS)
    fm = lt.models.load_foundation_model("standin-openclip", device="cpu")
    gelu = {type(m).__name__ for m in fm.visual.modules()}
    assert "QuickGELU" not in gelu  # OpenCLIP: GELU; the CLIP and MetaCLIP stand-ins: QuickGELU, as the real ones
    assert "QuickGELU" in {type(m).__name__ for m in lt.models.load_foundation_model("standin-clip").modules()}
    zero_shot = lt.zero_shot(P, "standin-clip", progress=False)
    assert zero_shot["templates"] == "ensemble" and zero_shot["test"]["logits"].shape == (2000, 100)
    assert (tmp_path / "data" / "cifar-100-python" / "train").is_file()  # fetched through download=True


@pytest.mark.gpu
def test_on_cuda_the_clip_path_keeps_its_images_on_the_gpu_and_uses_amp(tmp_path, monkeypatch):
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LT_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("LT_STANDIN_ROOT", str(tmp_path / "internet"))
    P = lt.profile("standin")
    assert P.device.type == "cuda" and P.amp
    devices = []
    augment = lt.augment.TensorAugment.__call__

    def spy(self, images, generator=None):
        devices.append(images.device.type)  # uint8 batches are indexed and augmented where they live
        return augment(self, images, generator)

    monkeypatch.setattr(lt.augment.TensorAugment, "__call__", spy)
    run = lt.fine_tune(P, "standin-clip", loss="la", progress=False)
    assert devices and set(devices) == {"cuda"}
    assert torch.isfinite(run["test"]["logits"]).all()


def _clip_time():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import clip_time
    finally:
        sys.path.pop(0)
    return clip_time


def test_the_time_tables_are_computed_from_the_counted_runs_and_the_measured_minutes():
    clip_time = _clip_time()
    assert clip_time.table() in (ROOT / "README.md").read_text(), "paste `python benchmarks/clip_time.py`"
    for chapter in [c["chapter"] for c in clip_time.chapter_runs("clip-lite")]:
        abstract = "".join(json.loads((ROOT / "book" / f"{chapter}.ipynb").read_text())["cells"][0]["source"])
        assert clip_time.time_line(chapter) in " ".join(abstract.split()), \
            f"{chapter}: run `python benchmarks/clip_time.py --write-abstracts`"
    lite = {c["chapter"]: clip_time.chapter_minutes(c, "clip-lite", "T4") for c in clip_time.chapter_runs("clip-lite")}
    assert max(lite.values()) <= 120, "clip-lite must fit a 1-2 h T4 session opened cold"


def test_cache_only_loads_what_is_there_and_refuses_to_compute(tmp_path, monkeypatch):
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path))
    assert lt.cached("demo", {"x": 1}, lambda: torch.ones(2), depends_on=["groups"]).sum() == 2
    monkeypatch.setenv("LT_CACHE_ONLY", "1")
    assert lt.cached("demo", {"x": 1}, lambda: torch.zeros(2), depends_on=["groups"]).sum() == 2  # loaded
    with pytest.raises(lt.cache.CacheMissError, match="cache import"):
        lt.cached("demo", {"x": 2}, lambda: torch.zeros(2), depends_on=["groups"])
    assert len(list((tmp_path / "demo").glob("*.pt"))) == 1  # nothing computed, nothing written


def test_a_run_says_whether_it_trained_or_loaded(tiny_lab, capsys):
    profile = lt.profile("lab")
    first = lt.fine_tune(profile, "lab-clip", seed=0, epochs=1)
    trained = capsys.readouterr().out.strip().splitlines()[-1]
    again = lt.fine_tune(profile, "lab-clip", seed=0, epochs=1)
    loaded = capsys.readouterr().out.strip().splitlines()
    assert (first["from_cache"], again["from_cache"]) == (False, True)
    assert trained.startswith("fine-tune lab-clip, LA, seed 0: computed in ")
    assert loaded == [f"fine-tune lab-clip, LA, seed 0: loaded from the cache ({trained.split(': ')[1]} when it "
                      "was made)"]
    lt.fine_tune(profile, "lab-clip", seed=0, epochs=1, progress=False)
    assert capsys.readouterr().out == ""  # quiet when asked


def test_write_time_line_replaces_the_paragraph_once_and_refuses_a_cell_without_one(tmp_path):
    clip_time = _clip_time()
    notebook = tmp_path / "c.ipynb"
    cell = {"cell_type": "markdown", "metadata": {}, "source": ["# T\n", "\n", "**Time.** old.\n", "\n", "Next."]}
    notebook.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 4}))
    line = "**Time.** lab: " + "word " * 40 + "end."
    for _ in range(2):  # a second write changes nothing
        clip_time.write_time_line(notebook, line)
        text = "".join(json.loads(notebook.read_text())["cells"][0]["source"])
        assert " ".join(text.split()) == f"# T {' '.join(line.split())} Next."
    cell["source"] = ["# T\n", "no time here"]
    notebook.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 4}))
    with pytest.raises(ValueError, match="no '\\*\\*Time"):
        clip_time.write_time_line(notebook, line)
