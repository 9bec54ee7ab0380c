"""The clip profile's code path (CIFAR-100-LT + open_clip models + prompt ensemble + 224-style transforms) run end
to end on the CPU: tiny random-weight open_clip models saved to local files stand in for CLIP/OpenCLIP, and a tiny
CIFAR-100 folder in the real pickle format stands in for the download. Only the device differs from Colab."""
import json

import numpy as np
import open_clip
import pytest
import torch

import lt_utils as lt

TINY_CFG = {"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
PER_CLASS = {"train": 6, "test": 2}


@pytest.fixture(scope="module")
def clip_world(tmp_path_factory, fake_cifar100):
    root = fake_cifar100(tmp_path_factory.mktemp("clip_path"), PER_CLASS["train"], PER_CLASS["test"],
                         [f"thing_{i}" for i in range(100)], seed=0)
    (root / "lt-clip-path-test.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(root)
    for seed, name in enumerate(("tiny-clip", "tiny-openclip")):
        torch.manual_seed(seed)
        torch.save(open_clip.create_model("lt-clip-path-test").state_dict(), root / f"{name}.pt")
        lt.register_foundation_model(name, "lt-clip-path-test", weights=root / f"{name}.pt")
    yield root
    for name in ("tiny-clip", "tiny-openclip"):  # leave the zoo as other tests expect it
        lt.models.FOUNDATION_MODELS.pop(name)
        lt.models._LOCAL_WEIGHTS.pop(name)


def test_fine_tune_zero_shot_and_fusion_run_on_the_clip_path(clip_world, tmp_path, monkeypatch):
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    profile = lt.profiles.Profile(
        name="clip", dataset="cifar100_lt", data_root=str(clip_world), imbalance_ratio=100,
        models=("tiny-clip", "tiny-openclip"), control_models=("tiny-clip", "tiny-clip"), image_size=32,
        peft="adaptformer", epochs=1, batch_size=16, micro_batch_size=8, lr=0.01, momentum=0.9, weight_decay=5e-4,
        tau=1.0, seeds=(0,), device=torch.device("cpu"), amp=False, num_workers=0)
    zero_shot = lt.zero_shot(profile, "tiny-clip", progress=False)
    assert zero_shot["templates"] == "ensemble"  # the 80 CLIP templates on real models
    assert zero_shot["test"]["logits"].shape == (200, 100) and zero_shot["test"]["features"].shape == (200, 32)
    run = lt.fine_tune(profile, "tiny-clip", loss="la", seed=0, progress=False)
    counts = run["class_counts"]
    assert counts.max() == 6 and counts.sum() == sum(lt.data.long_tail_counts(100, 6, 100))  # LIFT's n_max = N / 100
    assert run["test"]["logits"].shape == (200, 100) and torch.isfinite(run["test"]["logits"]).all()
    gla = lt.fine_tune(profile, "tiny-clip", loss="gla_train", seed=0, progress=False)
    assert gla["pretrain_prior"].sum() == pytest.approx(1, abs=1e-5)
    table = lt.headline_comparison(profile)
    assert set(table["P-groups from"]) == {"estimated", "estimated (per method)"}  # no true prior outside the lab
    assert np.isfinite(table["overall"]).all()
