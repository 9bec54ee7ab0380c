"""The helpers the chapters lean on beyond the engine: report rows, Grad-CAM, inference cost, the fine-tuned model
rebuilt from the cache, the headline comparison, and the book's presentation helpers (the prose cells' Markdown, the
Colab install pinned to the book's release)."""
import json
import re
import shutil
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from open_clip.transformer import VisionTransformer
from torch import nn

import lt_utils as lt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import book_tools  # noqa: E402


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


def test_show_markdown_displays_the_dedented_text_in_a_kernel(monkeypatch, capsys):
    IPython = pytest.importorskip("IPython")  # comes with Jupyter (the book extra) and Colab
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())  # as in a kernel (Jupyter, Colab, nbmake)
    monkeypatch.setattr(IPython.display, "display", shown.append)
    text = """
        **What the lab shows.** D-Few reaches 41.5%,
        $\\hat P_P$ by the estimate.
        """
    assert lt.show_markdown(text) is None  # displayed, not returned: a cell shows it once
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.Markdown)
    assert shown[0].data == "**What the lab shows.** D-Few reaches 41.5%,\n$\\hat P_P$ by the estimate."
    assert shown[0]._repr_markdown_() == shown[0].data  # the text/markdown output the book renders
    assert capsys.readouterr().out == ""


def test_show_markdown_prints_outside_ipython(monkeypatch, capsys):
    try:
        import IPython
    except ImportError:  # no IPython at all: printed as well
        pass
    else:
        monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    lt.show_markdown("  one line\n  two lines\n")
    assert capsys.readouterr().out == "one line\ntwo lines\n"


# --- the Colab install: lt_utils at the release the book was built from


def test_colab_badges_and_installs_follow_the_release_of_config():
    config = book_tools.load_config()
    release = config["repository"]["release"]
    assert release == f"v{lt.__version__}", "a release bumps lt_utils' version and repository.release together"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == lt.__version__
    slug, _ = book_tools.repository(config)
    assert book_tools.install_spec(config) == f"lt_utils @ git+https://github.com/{slug}@{release}"
    assert f"/blob/{release}/" in book_tools.colab_link("book/01_data_imbalance.ipynb", config)
    assert book_tools.release_problems() == []
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        setup = next("".join(c["source"]) for c in cells if "remove-cell" in c["metadata"].get("tags", []))
        assert f'"{book_tools.install_spec(config)}"' in setup, path.name
        assert "@main\"" not in setup, f"{path.name}: Colab must not install a moving branch"


def test_release_falls_back_to_the_branch_only_where_none_is_set():
    config = {"repository": {"url": "https://github.com/someone/fork", "branch": "dev"}}
    assert book_tools.install_spec(config) == "lt_utils @ git+https://github.com/someone/fork@dev"
    config["repository"]["release"] = "v2.0.0"
    assert book_tools.install_spec(config) == "lt_utils @ git+https://github.com/someone/fork@v2.0.0"


def test_committed_notebooks_are_in_sync_with_config():
    assert book_tools.sync_colab(check=True) == [], "run `make sync-colab`"


def _book_copy(tmp_path, release):
    """A copy of the repository's config, version file and template chapter, with another release."""
    (tmp_path / "book").mkdir()
    (tmp_path / "lt_utils").mkdir()
    shutil.copy2(ROOT / "lt_utils" / "version.py", tmp_path / "lt_utils" / "version.py")
    shutil.copy2(ROOT / "book" / "_template.ipynb", tmp_path / "book" / "c.ipynb")
    config = (ROOT / "_config.yml").read_text()
    assert config.count(f"release: v{lt.__version__}") == 1
    (tmp_path / "_config.yml").write_text(config.replace(f"release: v{lt.__version__}", f"release: {release}"))
    return tmp_path


def test_sync_colab_reports_and_fixes_a_release_drift(tmp_path):
    root = _book_copy(tmp_path, "v9.9.9")
    path = root / "book" / "c.ipynb"
    assert book_tools.sync_colab(root, check=True) == [path]  # --check: drift reported, nothing written
    assert "@v9.9.9" not in path.read_text()
    assert book_tools.sync_colab(root) == [path]
    assert "foundation-lt-book@v9.9.9" in path.read_text() and "/blob/v9.9.9/book/c.ipynb" in path.read_text()
    assert book_tools.sync_colab(root, check=True) == []
    assert "release is 'v9.9.9'" in book_tools.release_problems(root)[0]  # and the version was not bumped


def test_sync_colab_check_fails_on_drift(monkeypatch, capsys):
    monkeypatch.setattr(book_tools, "sync_colab", lambda check=False: [ROOT / "book" / "results.ipynb"])
    assert book_tools.main(["sync-colab", "--check"]) == 1
    assert "out of date: book/results.ipynb" in capsys.readouterr().out


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
    monkeypatch.setattr(lt.experiments, "fine_tune",
                        lambda p, m, seed, **kw: dict(seed=seed, from_cache=True, train_time_s=0.0))

    def seeds(profile, seed):
        return [run["seed"] for run in lt.experiments.control_runs(profile, seed)]

    blocks = [set(seeds(profile, s)) for s in (0, 1, 2)]
    assert all(len(b) == 3 for b in blocks) and not (blocks[0] & blocks[1] or blocks[1] & blocks[2])
    assert not set().union(*blocks) & set(range(100))  # never a main run's seed
    lab_control = lt.profile("lab")  # three separately pre-trained members share the seed
    assert seeds(lab_control, 2) == [2, 2, 2]


def test_glued_compares_the_prose_of_two_executed_builds(tmp_path, capsys, monkeypatch):
    """`book_tools.py glued DIR --compare DIR2`: the text each prose cell showed, keyed by chapter and title."""
    import nbformat

    root = tmp_path / "repo"
    (root / "book").mkdir(parents=True)
    shutil.copy2(ROOT / "_config.yml", root / "_config.yml")
    (root / "references.bib").write_text("")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/a\n")
    (root / "book" / "intro.md").write_text("# Intro\n")
    prose = "#@title What this run shows\nlt.show_markdown(text)"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# a"), nbformat.v4.new_code_cell(prose),
                                         nbformat.v4.new_code_cell(prose), nbformat.v4.new_code_cell("1 + 1")])
    nbformat.write(nb, root / "book" / "a.ipynb")
    monkeypatch.setattr(book_tools, "ROOT", root)
    builds = []
    for gain in ("+1.0", "+2.0"):
        dest = book_tools.stage(root / "builds" / gain, root)
        copy = nbformat.read(dest / "book" / "a.ipynb", as_version=4)
        for cell, text in zip(copy.cells[1:3], (f"gain {gain} points", "35/35/30")):
            cell.outputs = [nbformat.v4.new_output("display_data", data={"text/markdown": text, "text/plain": "<M>"})]
        copy.cells[3].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
        nbformat.write(copy, dest / "book" / "a.ipynb")
        builds.append(dest)
    assert book_tools.glued_values(builds[0], root) == {"a:What this run shows": "gain +1.0 points",
                                                        "a:What this run shows (2)": "35/35/30"}
    assert book_tools.main(["glued", str(builds[0]), "--compare", str(builds[0])]) == 0
    capsys.readouterr()
    assert book_tools.main(["glued", str(builds[0]), "--compare", str(builds[1])]) == 1
    assert json.loads(capsys.readouterr().out) == {"a:What this run shows": ["gain +1.0 points", "gain +2.0 points"]}
