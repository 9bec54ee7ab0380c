"""The foundation-model zoo, heads, classifiers and checkpoints, on tiny open_clip models built offline."""
import json
import types

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from safetensors.torch import load_file, save_file

import lt_utils.lab as lab
import lt_utils.models as models
import lt_utils.standin as standin
from lt_utils.models import (FOUNDATION_MODELS, CosineHead, LinearHead, build_classifier, load_checkpoint,
                             load_foundation_model, register_foundation_model, save_checkpoint,
                             save_foundation_model)

TINY_CFG = {"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
NAMES = ["cat", "dog", "aquarium_fish"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny open_clip CLIP (config registered with open_clip), its weights saved as a plain .pt state dict."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "lt-tiny-test.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(root)
    register_foundation_model("tiny-test", "lt-tiny-test", None)
    torch.manual_seed(0)
    ref = open_clip.create_model("lt-tiny-test").eval()
    torch.save(ref.state_dict(), root / "tiny.pt")
    fm = load_foundation_model("tiny-test", pretrained=root / "tiny.pt", device="cpu")
    return types.SimpleNamespace(ref=ref, fm=fm, file=root / "tiny.pt", root=root)


@pytest.fixture
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))


# --- the zoo -----------------------------------------------------------------------------------------------------
def test_real_pairs_exist_in_open_clip():
    real = {n: pair for n, pair in FOUNDATION_MODELS.items()
            if pair[0] != lab.LAB_ARCH and n not in standin.STANDIN_MODELS}  # the stand-in registers when used
    assert set(real) == {"clip", "openclip", "metaclip"}
    for pair in real.values():
        assert pair in open_clip.list_pretrained()
    assert {n for n, (a, _) in FOUNDATION_MODELS.items() if a == lab.LAB_ARCH} >= {
        "lab-clip", "lab-openclip", "lab-metaclip", "lab-clip-s1", "lab-clip-s2"}


def test_real_pairs_use_the_activation_their_weights_were_trained_with():
    for name in ("clip", "openclip", "metaclip"):
        arch, tag = FOUNDATION_MODELS[name]
        trained_quick = open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False)
        built_quick = open_clip.get_model_config(arch).get("quick_gelu", False)
        assert trained_quick == built_quick, name
        assert models._force_quick_gelu(arch, tag) is False
    assert FOUNDATION_MODELS["openclip"] == ("ViT-B-16", "laion2b_s34b_b88k")  # GELU kept
    # a QuickGELU-trained tag on a GELU config is forced to QuickGELU; a GELU tag on "-quickgelu" does not exist
    assert models._force_quick_gelu("ViT-B-16", "openai") is True
    with pytest.raises(ValueError, match="tags"):
        models._force_quick_gelu("ViT-B-16-quickgelu", "laion2b_s34b_b88k")


def test_unknown_name_and_missing_file_fail_before_any_download(monkeypatch, tmp_path):
    def no_download(*args, **kwargs):
        raise AssertionError("must not reach open_clip")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_download)
    with pytest.raises(ValueError, match="lab-clip") as err:
        load_foundation_model("clipp")
    assert "openclip" in str(err.value) and "metaclip" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_foundation_model("clip", pretrained=tmp_path / "nope.pt")


def test_register_refuses_unknown_architecture_and_builtin_overwrite():
    with pytest.raises(ValueError, match="add_model_config"):
        register_foundation_model("mine", "ViT-X-99", None)
    with pytest.raises(ValueError, match="built-in"):
        register_foundation_model("clip", "ViT-B-16", "openai")


# --- real-format loading on a tiny model --------------------------------------------------------------------------
def test_load_from_local_file_matches_open_clip(tiny, images):
    fm = tiny.fm
    assert (fm.feature_dim, fm.embed_dim, fm.image_size) == (32, 16, 32)
    assert fm.visual.proj is None and fm.proj.shape == (32, 16)
    assert not any(p.requires_grad for p in fm.parameters())
    assert fm.train_transform is not None and fm.test_transform is not None
    assert fm.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert isinstance(fm.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)  # native config kept
    with torch.no_grad():
        feats = fm.encode_image(images)
        assert feats.shape == (3, 32)
        torch.testing.assert_close(feats @ fm.proj, tiny.ref.encode_image(images))
    assert fm.logit_scale == pytest.approx(tiny.ref.logit_scale.exp().item())


def test_corrupted_checkpoint_gives_clear_error(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RuntimeError, match="broken.pt"):
        load_foundation_model("tiny-test", pretrained=bad)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(RuntimeError, match="corrupted"):
        load_foundation_model("tiny-test", pretrained=bad)


def test_text_features_single_and_ensemble(tiny):
    fm, ref = tiny.fm, tiny.ref
    single = fm.text_features(NAMES)
    assert single.shape == (3, 16)
    torch.testing.assert_close(single.norm(dim=-1), torch.ones(3))
    tokenizer = open_clip.get_tokenizer("lt-tiny-test")
    with torch.no_grad():
        manual = ref.encode_text(tokenizer([f"a photo of a {c.replace('_', ' ')}." for c in NAMES]), normalize=True)
    torch.testing.assert_close(single, manual)
    assert len(open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES) == 80
    ensemble = fm.text_features(NAMES, templates="ensemble")
    assert ensemble.shape == (3, 16) and not torch.allclose(ensemble, single)
    torch.testing.assert_close(ensemble.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="templates"):
        fm.text_features(NAMES, templates="many")


def test_zero_shot_head_is_clip_zero_shot(tiny, images):
    fm, ref = tiny.fm, tiny.ref
    head = fm.zero_shot_head(NAMES)
    with torch.no_grad():
        feats = fm.encode_image(images)
        expected = fm.logit_scale * F.normalize(feats @ fm.proj, dim=-1) @ fm.text_features(NAMES).T
        torch.testing.assert_close(head(feats), expected)
        # ... which is open_clip's own image-text logits
        tokens = open_clip.get_tokenizer("lt-tiny-test")([f"a photo of a {c.replace('_', ' ')}." for c in NAMES])
        img = ref.encode_image(images, normalize=True)
        clip_logits = ref.logit_scale.exp() * img @ ref.encode_text(tokens, normalize=True).T
        torch.testing.assert_close(fm.zero_shot_classifier(NAMES)(images), clip_logits)


def test_save_foundation_model_round_trip_open_clip(tiny, tmp_path, images):
    path = save_foundation_model(tmp_path / "tiny.safetensors", tiny.fm)
    again = load_foundation_model("tiny-test", pretrained=path, device="cpu")
    with torch.no_grad():
        assert torch.equal(again.encode_image(images), tiny.fm.encode_image(images))
    assert torch.equal(again.text_features(NAMES), tiny.fm.text_features(NAMES))
    with pytest.raises(ValueError, match="safetensors"):
        save_foundation_model(tmp_path / "tiny.pt", tiny.fm)


def test_broken_lt_utils_metadata_names_the_file(tiny, tmp_path):
    path = save_foundation_model(tmp_path / "tiny.safetensors", tiny.fm)
    save_file(load_file(path), str(path), metadata={"lt_utils": '{"kind": "open_clip", '})  # cut short
    with pytest.raises(ValueError, match="not valid JSON") as err:
        load_foundation_model("tiny-test", pretrained=path, device="cpu")
    assert str(path) in str(err.value)


def test_drop_text_tower_keeps_computed_features(tiny):
    fm = load_foundation_model("tiny-test", pretrained=tiny.file, device="cpu")
    kept = fm.text_features(NAMES)
    fm.drop_text_tower()
    assert fm.text_model is None
    assert torch.equal(fm.text_features(NAMES), kept)
    with pytest.raises(RuntimeError, match="dropped"):
        fm.text_features(["zebra"])


# --- lab models (lt_utils.lab is faked with a tiny pretrain) -------------------------------------------------------
LAB_VIT = dict(image_size=16, patch_size=4, width=24, layers=2, heads=2, mlp_ratio=2.0, output_dim=12)


@pytest.fixture
def fake_lab(monkeypatch):
    calls = []

    def pretrain(name, seed=0):
        calls.append(name)
        torch.manual_seed(len(name))
        vit = VisionTransformer(**LAB_VIT)
        return dict(state_dict=vit.state_dict(), class_embeddings=torch.randn(5, 12),
                    classnames=[f"class{i}" for i in range(5)], logit_scale=30.0, mean=[0.5] * 3, std=[0.25] * 3)

    monkeypatch.setattr(lab, "LAB_VIT", LAB_VIT)
    monkeypatch.setattr(lab, "pretrain", pretrain)
    return calls


def test_lab_model_loads_and_looks_up_class_embeddings(fake_lab, tmp_path):
    fm = load_foundation_model("lab-openclip", device="cpu")
    assert fake_lab == ["lab-openclip"]
    assert (fm.feature_dim, fm.embed_dim, fm.image_size, fm.logit_scale) == (24, 12, 16, 30.0)
    assert fm.train_transform is None and fm.test_transform is None
    feats = fm.text_features(["class3", "class0"])
    expected = F.normalize(fm.class_embeddings[[3, 0]], dim=-1)
    torch.testing.assert_close(feats, expected)
    assert torch.equal(fm.text_features(["class3", "class0"], templates="ensemble"), feats)
    with pytest.raises(KeyError, match="zebra"):
        fm.text_features(["class1", "zebra"])
    x = torch.randn(2, 3, 16, 16)
    assert fm.encode_image(x).shape == (2, 24)

    path = save_foundation_model(tmp_path / "lab.safetensors", fm)
    again = load_foundation_model("lab-openclip", pretrained=path, device="cpu")
    assert fake_lab == ["lab-openclip"]  # the file, not pre-training
    with torch.no_grad():
        assert torch.equal(again.encode_image(x), fm.encode_image(x))
    assert torch.equal(again.text_features(["class3"]), fm.text_features(["class3"]))
    with pytest.raises(ValueError, match="lab-openclip"):
        load_foundation_model("lab-clip", pretrained=path)
    with pytest.raises(ValueError, match="'lab'"):
        load_foundation_model("tiny-test", pretrained=path)


# --- heads, classifier, checkpoints -------------------------------------------------------------------------------
def test_heads():
    text, proj = F.normalize(torch.randn(4, 6), dim=-1), torch.randn(10, 6)
    head = CosineHead.from_text_features(text, proj)
    assert head.weight.shape == (4, 10) and not hasattr(head, "bias")
    torch.testing.assert_close(head.weight, F.normalize(text @ proj.T, dim=-1))
    feats = torch.randn(3, 10)
    cos = F.normalize(feats, dim=-1) @ F.normalize(head.weight, dim=-1).T
    torch.testing.assert_close(head(feats), 25.0 * cos)
    assert head(feats).abs().max() <= 25.0 + 1e-4
    linear = LinearHead.from_text_features(text, proj)
    torch.testing.assert_close(linear(feats), feats @ linear.weight.T)


def test_build_classifier_trains_adapters_and_head_only(tiny, images):
    fm = tiny.fm
    clf = build_classifier(fm, NAMES, peft="adaptformer", head="cosine")
    assert fm.visual.transformer.resblocks[0].__class__.__name__ == "ResidualAttentionBlock"  # copy by default
    names = list(clf.trainable_state_dict())
    assert "head.weight" in names and all(n == "head.weight" or ".adaptformer." in n for n in names)
    assert clf.meta["num_classes"] == 3 and clf.meta["peft_config"] == {"bottleneck": 1}
    assert (clf.image_size, clf.mean, clf.std) == (fm.image_size, fm.mean, fm.std)
    with torch.no_grad():
        feats = fm.encode_image(images)
        assert torch.equal(clf.features(images), feats)  # AdaptFormer starts as the frozen model
        torch.testing.assert_close(clf(images), CosineHead.from_text_features(fm.text_features(NAMES), fm.proj)(feats))
    clf(images).logsumexp(-1).sum().backward()
    assert clf.head.weight.grad is not None
    with pytest.raises(ValueError, match="cosine"):
        build_classifier(fm, NAMES, head="mlp")


def test_checkpoint_round_trip_and_refusals(tiny, tmp_path, images):
    clf = build_classifier(tiny.fm, NAMES, peft="lora")
    with torch.no_grad():
        for p in clf.trainable_state_dict().values():
            p.add_(0.1 * torch.randn_like(p))
    path = save_checkpoint(tmp_path / "run" / "clf.safetensors", clf, meta={"seed": 3})
    assert [f.name for f in path.parent.iterdir()] == ["clf.safetensors"]  # no temp file left behind

    fresh = build_classifier(tiny.fm, NAMES, peft="lora")
    with torch.no_grad():
        assert not torch.allclose(fresh(images), clf(images))
        meta = load_checkpoint(path, fresh)
        torch.testing.assert_close(fresh(images), clf(images))
    assert meta["seed"] == 3 and meta["peft"] == "lora"

    with pytest.raises(ValueError, match="4 classes") as err:
        load_checkpoint(path, build_classifier(tiny.fm, NAMES + ["bird"], peft="lora"))
    assert "3 classes" in str(err.value)
    with pytest.raises(ValueError, match="adaptformer"):
        load_checkpoint(path, build_classifier(tiny.fm, NAMES, peft="adaptformer"))
    with pytest.raises(ValueError, match="class names"):
        load_checkpoint(path, build_classifier(tiny.fm, NAMES[::-1], peft="lora"))

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RuntimeError, match="corrupted"):
        load_checkpoint(broken, fresh)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.safetensors", fresh)
    with pytest.raises(ValueError, match="nothing to save"):
        save_checkpoint(tmp_path / "x.safetensors", torch.nn.Linear(2, 2).requires_grad_(False))
