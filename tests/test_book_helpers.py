"""The helpers the chapters lean on beyond the engine: report rows, Grad-CAM, inference cost, the fine-tuned model
rebuilt from the cache, the headline comparison, and the book's presentation helpers."""
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from open_clip.transformer import VisionTransformer
from torch import nn

import lt_utils as lt


def test_report_row_flattens_a_report_with_gaps():
    logits = torch.eye(6)[[0, 1, 2, 3, 4, 0]]  # class 5 is always wrong
    labels = torch.arange(6)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    row = lt.report_row(lt.accuracy_report(logits, labels, d_groups=groups, p_groups=groups), model="m")
    assert list(row)[:2] == ["model", "overall"] and row["model"] == "m"
    assert row["overall"] == pytest.approx(500 / 6)
    assert (row["D-Many"], row["D-Few"], row["D-gap"]) == (100.0, 50.0, 50.0)
    assert row["P-gap"] == 50.0 and all(isinstance(v, float) for k, v in row.items() if k != "model")
    assert "P-Many" not in lt.report_row(lt.accuracy_report(logits, labels, d_groups=groups))


def _tiny_vit_classifier(num_classes=5):
    torch.manual_seed(0)
    visual = VisionTransformer(image_size=8, patch_size=4, width=16, layers=2, heads=2, mlp_ratio=2, output_dim=8)
    visual.proj = None  # pre-projection features, as the zoo's backbones
    return lt.models.Classifier(visual, lt.models.LinearHead(16, num_classes), image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_grad_cam_maps_one_normalised_map_per_image_and_depend_on_the_target():
    classifier = _tiny_vit_classifier()
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    cams = lt.grad_cam(classifier, images, targets=[0, 1, 2])
    assert cams.shape == (3, 2, 2) and cams.min() >= 0 and cams.amax(dim=(1, 2)).allclose(torch.ones(3))
    other = lt.grad_cam(classifier, images, targets=[3, 3, 3])
    assert not torch.allclose(cams, other)
    assert all(not p.requires_grad or p.grad is None for p in classifier.parameters())  # leaves no gradients behind


def test_inference_cost_counts_the_flops_of_a_linear_model_exactly():
    models = [nn.Linear(32, 10), nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 10))]
    cost = lt.inference_cost(models, torch.randn(16, 32), repeats=3)
    assert [c["flops_per_image"] for c in cost] == [2 * 32 * 10, 2 * (32 * 64 + 64 * 10)]
    assert all(c["ms_per_image"] > 0 for c in cost)
    with torch.device("meta"):  # counting needs no weights: the meta device holds shapes only
        big = nn.Linear(1000, 1000)
    assert lt.count_flops(big, torch.empty(4, 1000, device="meta")) == 4 * 2 * 1000 * 1000


def test_hide_progress_follows_the_argument_and_tqdm_disable(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not lt.profiles.hide_progress(True) and lt.profiles.hide_progress(False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert lt.profiles.hide_progress(True)


def test_causal_graph_and_cam_overlays_draw():
    ax = lt.plot_causal_graph()
    assert {"D", "C", "X", "B", "Y"} <= {t.get_text() for t in ax.texts}
    fig, axes = plt.subplots(1, 2)
    lt.show_cams(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.rand(2, 2, 2), axes)
    assert all(len(a.images) == 2 for a in axes)
    with pytest.raises(ValueError, match="one map and one axes per image"):
        lt.show_cams(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), torch.rand(2, 2, 2), axes)
    plt.close("all")


def test_glue_returns_its_value():
    assert lt.glue("test_value", 3.5) == 3.5


def test_load_fine_tuned_reproduces_the_cached_logits(tiny_lab):
    profile = lt.profile("lab").replace(epochs=1)
    run = lt.fine_tune(profile, "lab-clip", loss="la", seed=1, progress=False)
    model = lt.load_fine_tuned(profile, "lab-clip", loss="la", seed=1)
    world = lt.lab.make_world(0)
    again = lt.metrics.predict(model, world.test, transform=lt.test_transform(profile, model), progress=False)
    torch.testing.assert_close(again["logits"], run["test"]["logits"], atol=1e-4, rtol=1e-4)


def test_headline_comparison_scores_every_method_on_one_partition_per_table(tiny_lab):
    # two foundation models and a same-backbone control of fine-tuning seeds (the clip profile's kind) keep it quick
    profile = lt.profile("lab").replace(epochs=1, models=("lab-clip", "lab-metaclip"),
                                        control_models=("lab-clip", "lab-clip"))
    table = lt.headline_comparison(profile, seeds=(0,))
    assert isinstance(table, pd.DataFrame)
    methods = set(table.method)
    assert {"LA (lab-clip)", "GLA-Train (lab-clip)", "same backbone x3", "backdoor x3"} <= methods
    sources = {"estimated", "true", "estimated (per method)", "true (per method)"}
    assert len(table) == len(sources) * len(methods) and set(table["P-groups from"]) == sources
    la = {0: lt.fine_tune(profile, "lab-clip", loss="la", seed=0, progress=False)["test"]}
    expected = 100 * (la[0]["logits"].argmax(1) == la[0]["labels"]).double().mean().item()
    assert table[table.method == "LA (lab-clip)"]["overall"].iloc[0] == pytest.approx(expected)
    # one partition per table: every method's P-groups come from the ensemble members' mean estimated prior
    p_groups = lt.prior_groups(torch.stack([lt.estimate_pretrain_prior(profile, m) for m in profile.models]).mean(0))
    report = lt.accuracy_report(la[0]["logits"], la[0]["labels"], p_groups=p_groups)
    row = table[(table.method == "LA (lab-clip)") & (table["P-groups from"] == "estimated")].iloc[0]
    assert row["P-Few"] == pytest.approx(float(report["p_group"][2]))
    per_method = table[(table.method == "LA (lab-clip)") & (table["P-groups from"] == "estimated (per method)")]
    own = lt.accuracy_report(la[0]["logits"], la[0]["labels"],
                             p_groups=lt.prior_groups(lt.estimate_pretrain_prior(profile, "lab-clip")))
    assert per_method["P-Few"].iloc[0] == pytest.approx(float(own["p_group"][2]))


def test_the_one_backbone_control_uses_a_seed_block_of_its_own(tiny_lab, monkeypatch):
    profile = lt.profile("lab").replace(epochs=1, control_models=("lab-clip", "lab-clip", "lab-clip"))
    seen = []
    monkeypatch.setattr(lt.experiments, "fine_tune", lambda p, m, seed, **kw: seen.append(seed) or seed)
    blocks = [set(lt.experiments.control_runs(profile, s)) for s in (0, 1, 2)]
    assert all(len(b) == 3 for b in blocks) and not (blocks[0] & blocks[1] or blocks[1] & blocks[2])
    assert not set().union(*blocks) & set(range(100))  # never a main run's seed
    lab_control = lt.profile("lab")  # three separately pre-trained members share the seed
    assert lt.experiments.control_runs(lab_control, 2) == [2, 2, 2]
