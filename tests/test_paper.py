"""The paper's pipeline (`python -m lt_utils paper`) end to end on fabricated ImageNet-LT / Places-LT / iNaturalist
2018 folders in their real layouts (small JPEGs and split files), with the stand-in's tiny random-weight open_clip
models: one process, resumed after a crash, re-run (idempotent), and under torchrun with two gloo processes."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

import lt_utils as lt
from lt_utils import paper, standin
from lt_utils.__main__ import main

MODELS = ["standin-clip", "standin-openclip", "standin-metaclip"]
INAT_COUNTS = [60, 40, 30, 20, 12, 8, 5, 4, 3, 2, 2, 1]  # 12 classes, long-tailed: 187 training images
# the methods of one seed (lt_utils.experiments.seed_comparison), the first model named in brackets
METHODS = ["zero-shot (standin-clip)", "CE (standin-clip)", "LA (standin-clip)", "GLA-Train (standin-clip)",
           "LA + post-hoc (standin-clip)", "LA, best single (by val)", "same backbone x3", "backdoor x3"]


def _args(dataset, root, out, *extra, device="cpu"):
    return ["paper", "--dataset", dataset, "--data-root", str(root), "--out", str(out), "--models", *MODELS,
            "--control-models", *["standin-clip"] * 3, "--epochs", "1", "--device", device, *extra]


@pytest.fixture(scope="module")
def standin_models(tmp_path_factory):
    standin.setup(tmp_path_factory.mktemp("standin"))
    return MODELS


@pytest.fixture(scope="module")
def inat_root(tmp_path_factory):
    return standin.write_image_list_folder(tmp_path_factory.mktemp("inat"), "inat2018", num_classes=12,
                                           train_counts=INAT_COUNTS, per_class_val=1, per_class_test=2, seed=0)


@pytest.fixture(scope="module")
def inat_run(standin_models, inat_root, tmp_path_factory):
    """One single-process run of the whole pipeline on the fabricated iNaturalist folder, two seeds."""
    out = tmp_path_factory.mktemp("inat_out")
    patch = pytest.MonkeyPatch()
    patch.setenv("LT_CACHE_DIR", str(out / "cache"))
    try:
        assert main(_args("inat2018", inat_root, out, "--seeds", "0", "1")) == 0
    finally:
        patch.undo()
    return out


def test_results_file_holds_every_method_group_and_setting(inat_run):
    results = paper.read_results(inat_run)
    assert results["dataset"] == "inat2018" and results["seeds"] == [0, 1] and results["models"] == MODELS
    assert results["settings"]["epochs"] == 1 and results["settings"]["dataset"] == "inat2018"
    assert results["code"]["lt_utils_version"] == lt.__version__ and len(results["code"]["source_sha256"]) == 64
    data = results["data"]
    assert data == dict(data, num_classes=12, train_images=sum(INAT_COUNTS), val_images=12, test_images=24)
    assert sum(data["d_group_classes"]) == 12 and data["p_group_classes"] == [4, 4, 4]
    for seed in ("0", "1"):
        assert list(results["methods"][seed]) == METHODS
        for report in results["methods"][seed].values():
            assert 0 <= report["overall"] <= 100 and len(report["p_group"]) == 3 and len(report["matrix"]) == 3
        assert set(results["knn"][seed]) == {"zero-shot (standin-clip)", "CE (standin-clip)", "LA (standin-clip)"}
    # 8 fine-tunes per seed: LA x3, CE, GLA-Train, the control's three (from their own seed block)
    assert len(results["runs"]) == 16 and {r["seed"] for r in results["runs"]} == {0, 1, 1000, 1001, 1002, 1003,
                                                                                    1004, 1005}
    summary = {row["method"]: row for row in results["summary"]}
    overall = [results["methods"][s]["backdoor x3"]["overall"] for s in ("0", "1")]
    assert summary["backdoor x3"]["overall"] == pytest.approx(sum(overall) / 2)
    assert summary["backdoor x3"]["overall std"] == pytest.approx(torch.tensor(overall).std().item())
    assert set(results["prior_estimate"]) == {"standin-clip", "standin-openclip", "standin-metaclip"}
    csv = pd.read_csv(inat_run / "results.csv")
    assert len(csv) == 2 * len(METHODS) and {"D-Few x P-Few", "P-Many", "overall"} <= set(csv.columns)


def test_the_numbers_are_those_of_the_cached_runs(inat_run, monkeypatch):
    """The results file reports what the runs computed: backdoor adjustment's accuracy from the cached LA runs."""
    monkeypatch.setenv("LT_CACHE_DIR", str(inat_run / "cache"))
    profile = lt.profiles.paper_profile("inat2018", device="cpu").replace(
        data_root=json.loads((inat_run / "results.json").read_text())["settings"]["data_root"],
        models=tuple(MODELS), control_models=("standin-clip",) * 3, epochs=1)
    monkeypatch.setattr(lt.runs, "train", _refuse("trained"))
    la = [lt.fine_tune(profile, m, loss="la", seed=1, progress=False) for m in MODELS]
    fused = lt.backdoor_adjust([r["test"]["logits"] for r in la])
    results = paper.read_results(inat_run)
    expected = lt.accuracy(fused, la[0]["test"]["labels"])
    assert results["methods"]["1"]["backdoor x3"]["overall"] == pytest.approx(expected)


def _refuse(what):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} again: the pipeline should have loaded it from the cache")
    return refuse


def test_a_second_call_trains_nothing_and_rewrites_the_same_files(inat_run, inat_root, monkeypatch):
    before = {name: (inat_run / name).read_bytes() for name in paper.RESULT_FILES.values()}
    monkeypatch.setenv("LT_CACHE_DIR", str(inat_run / "cache"))
    monkeypatch.setattr(lt.runs, "train", _refuse("trained"))
    monkeypatch.setattr(lt.runs, "predict", _refuse("predicted"))
    assert main(_args("inat2018", inat_root, inat_run, "--seeds", "0", "1")) == 0
    assert {name: (inat_run / name).read_bytes() for name in paper.RESULT_FILES.values()} == before


def test_a_crash_mid_pipeline_resumes_where_it_stopped(standin_models, inat_root, inat_run, tmp_path, monkeypatch):
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    real_train, calls = lt.training.train, []

    def crash_on_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated crash")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(lt.runs, "train", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        main(_args("inat2018", inat_root, tmp_path / "out", "--seeds", "0"))
    assert not (tmp_path / "out" / "results.json").exists()
    calls.clear()
    monkeypatch.setattr(lt.runs, "train", lambda *a, **k: (calls.append(1), real_train(*a, **k))[1])
    assert main(_args("inat2018", inat_root, tmp_path / "out", "--seeds", "0")) == 0
    assert len(calls) == 8 - 3  # the three runs finished before the crash are loaded
    resumed, whole = paper.read_results(tmp_path / "out"), paper.read_results(inat_run)
    assert resumed["methods"]["0"] == whole["methods"]["0"]  # the same numbers as an uninterrupted run


@pytest.mark.parametrize("dataset", ["imagenet_lt", "places_lt"])
def test_imagenet_and_places_layouts_run_end_to_end(dataset, standin_models, tmp_path, monkeypatch):
    num_classes = 1000 if dataset == "imagenet_lt" else 365
    counts = [3 if c < num_classes // 3 else 1 for c in range(num_classes)]
    root = standin.write_image_list_folder(tmp_path / "data", dataset, num_classes=num_classes, train_counts=counts,
                                           per_class_val=1, per_class_test=1, seed=1)
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    assert main(_args(dataset, root, tmp_path / "out", "--models", *MODELS[:2], "--control-models",
                      "standin-clip", "standin-clip")) == 0
    results = paper.read_results(tmp_path / "out")
    assert results["data"]["num_classes"] == num_classes and results["data"]["train_images"] == sum(counts)
    assert results["data"]["test_images"] == num_classes and results["models"] == MODELS[:2]
    assert all(0 <= r["overall"] <= 100 for r in results["methods"]["0"].values())


def test_results_table_labels_each_file_and_refuses_other_files(inat_run, tmp_path):
    table = paper.results_table(f"{inat_run}{os.pathsep}{inat_run / 'results.json'}")
    assert len(table) == 2 * len(METHODS) and set(table["dataset"]) == {"inat2018"}
    assert set(table["seeds"]) == {"0, 1"} and set(table["models"]) == {", ".join(MODELS)}
    assert paper.results_table("").empty
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"accuracy": 1}))
    with pytest.raises(ValueError, match="not a results file"):
        paper.results_table([other])
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        paper.read_results(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="lt_utils paper"):
        paper.read_results(tmp_path / "missing.json")


def test_clear_errors_before_any_work(standin_models, tmp_path, capsys):
    assert main(["paper", "--dataset", "inat2018", "--data-root", str(tmp_path), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--models", *MODELS]) == 2
    assert "iNaturalist18_train.txt" in capsys.readouterr().err  # names the missing split file
    (tmp_path / "file").write_text("x")
    assert main(["paper", "--dataset", "inat2018", "--out", str(tmp_path / "file"), "--device", "cpu"]) == 2
    assert "is a file" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, nproc: int, args: list) -> None:
    """``torchrun --nproc_per_node=nproc`` of the CLI on the stand-in models (made in ``tmp_path/standin``)."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import sys
        import torch
        from lt_utils import standin
        from lt_utils.__main__ import main
        torch.set_num_threads(1)
        standin.setup()  # the same seeded tiny models as in the test process, in $LT_STANDIN_ROOT
        sys.exit(main(sys.argv[1:]))
    """))
    env = dict(os.environ, LT_CACHE_DIR=str(tmp_path / "cache"), LT_STANDIN_ROOT=str(tmp_path / "standin"),
               OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", str(script), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _assert_same_results(one: dict, other: dict, seeds=("0", "1")) -> None:
    """Equal up to float noise: priors to 1e-4, each accuracy to one test image (a rare near-tie may flip)."""
    for m in one["prior_estimate"]:
        torch.testing.assert_close(torch.tensor(other["prior_estimate"][m]), torch.tensor(one["prior_estimate"][m]),
                                   atol=1e-4, rtol=0)
    one_image = 100 / one["data"]["test_images"]
    for seed in seeds:
        for method, report in one["methods"][seed].items():
            assert abs(other["methods"][seed][method]["overall"] - report["overall"]) <= one_image, (seed, method)


def test_torchrun_with_two_processes_gives_the_results_of_one(inat_run, inat_root, tmp_path):
    """`torchrun --nproc_per_node=2` (gloo on the CPU): DDP training, sharded evaluation and kNN; rank 0 writes."""
    _torchrun(tmp_path, 2, _args("inat2018", inat_root, tmp_path / "out", "--seeds", "0", "1"))
    two, one = paper.read_results(tmp_path / "out"), paper.read_results(inat_run)
    assert two["world_size"] == 2 and one["world_size"] == 1
    _assert_same_results(one, two)


@pytest.mark.gpu
def test_on_cuda_one_process_and_torchrun_with_nccl_agree(standin_models, inat_root, tmp_path, monkeypatch):
    """The pipeline on a GPU (AMP), then under torchrun (NCCL, one process per GPU this machine has)."""
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache_one"))
    assert main(_args("inat2018", inat_root, tmp_path / "one", device="cuda")) == 0
    one = paper.read_results(tmp_path / "one")
    assert one["settings"]["amp"] and one["settings"]["device"] == "cuda"
    nproc = torch.cuda.device_count()
    _torchrun(tmp_path, nproc, _args("inat2018", inat_root, tmp_path / "many", device="cuda"))
    many = paper.read_results(tmp_path / "many")
    assert many["world_size"] == nproc
    _assert_same_results(one, many, seeds=("0",))


def test_the_readme_gpu_hours_are_computed_from_the_measured_rates(inat_run):
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import paper_hours
    finally:
        sys.path.pop(0)
    assert paper_hours.table() in (root / "README.md").read_text(), "paste `python benchmarks/paper_hours.py`"
    for dataset in paper_hours.DATASETS:  # every dataset's rates were measured with its own head
        assert paper_hours.rates(dataset)["source"] == f"clip_step_h100_{dataset}.json"
    # it counts the fine-tunes the pipeline runs (the fixture ran two seeds)
    assert len(paper.read_results(inat_run)["runs"]) == 2 * paper_hours.FINE_TUNES_PER_SEED


def test_load_split_gives_the_chapters_what_the_runs_see(inat_root, tmp_path, monkeypatch):
    """Chapters load data with `lt.load_split(cfg, split)`: image files decoded once, in memory, as the runs use."""
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    profile = lt.profiles.paper_profile("inat2018", device="cpu").replace(data_root=str(inat_root), image_size=32)
    test = lt.load_split(profile, "test", progress=False)
    assert lt.data.is_in_memory(test) and test.images.shape == (24, 3, 36, 36)  # decode_size(32) = 36
    raw = lt.load_dataset("inat2018", inat_root, "test")
    assert torch.equal(test.targets, raw.targets) and torch.equal(test.ids, raw.ids)
    assert torch.equal(test.images[0], torch.from_numpy(lt.decoded.decode_image(raw.paths[0], 36)))


def _git(folder, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                   capture_output=True)


def test_code_version_names_the_commit_of_lt_utils_own_checkout_only(tmp_path):
    own = tmp_path / "own"  # a checkout of the book: lt_utils/ at its top
    (own / "lt_utils").mkdir(parents=True)
    (own / "lt_utils" / "a.py").write_text("x = 1\n")
    _git(own, "init", "-q")
    _git(own, "add", "-A")
    _git(own, "commit", "-qm", "c")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=own, capture_output=True, text=True).stdout.strip()
    version = paper.code_version(own / "lt_utils")
    assert (version["git_commit"], version["git_dirty"]) == (head, False)
    (own / "lt_utils" / "a.py").write_text("x = 2\n")  # edited since the commit: the commit alone misleads
    changed = paper.code_version(own / "lt_utils")
    assert changed["git_dirty"] is True and changed["source_sha256"] != version["source_sha256"]

    project = tmp_path / "project"  # lt_utils installed in a venv inside some other repository
    installed = project / ".venv" / "site-packages" / "lt_utils"
    installed.mkdir(parents=True)
    (installed / "a.py").write_text("x = 1\n")
    _git(project, "init", "-q")
    _git(project, "commit", "-q", "--allow-empty", "-m", "project")
    outside = paper.code_version(installed)
    assert (outside["git_commit"], outside["git_dirty"]) == (None, None)
    assert outside["source_sha256"] == version["source_sha256"]  # the same sources, told apart by their digest
