"""python -m lt_utils: the two-stage recipe end to end on a tiny lab, stage 2 against an independent computation,
and bad input answered with a usage message (exit 2), never a traceback."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import lt_utils as lt
import lt_utils.lab as lab
from lt_utils.__main__ import main
from lt_utils.augment import TensorAugment
from lt_utils.metrics import predict
from lt_utils.models import build_classifier, load_checkpoint, load_foundation_model

import lt_utils.runs as runs_module


def test_two_stage_recipe_on_a_tiny_lab(tiny_lab, capsys, monkeypatch):
    runs = []
    for model in ("lab-clip", "lab-metaclip"):
        out = tiny_lab / "runs" / model
        assert main(["train", "--model", model, "--epochs", "1", "--seed", "3", "--out", str(out)]) == 0
        config = json.loads((out / "config.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
        assert (config["model"], config["loss"], config["seed"], config["epochs"]) == (model, "la", 3, 1)
        assert config["profile"]["name"] == "lab" and config["peft"] == "adaptformer"
        stored = torch.load(out / "logits.pt", weights_only=True)
        test = stored["test"]
        assert test["logits"].shape == (200, 100) and torch.equal(test["labels"].bincount(), torch.full((100,), 2))
        expected = 100 * (test["logits"].argmax(1) == test["labels"]).double().mean().item()
        assert metrics["test"]["overall"] == pytest.approx(expected)
        assert len(metrics["test"]["d_group"]) == 3 and len(metrics["test"]["p_group"]) == 3
        assert len(metrics["history"]["loss"]) == 1
        # the saved adapter + head reproduce the stored logits
        classifier = build_classifier(load_foundation_model(model, device="cpu"), lab.CLASSNAMES)
        load_checkpoint(out / "adapter_head.safetensors", classifier)
        size = lab.IMAGE_SIZE
        transform = TensorAugment(size, lab.LAB_MEAN, lab.LAB_STD, train=False, test_resize=size)
        again = predict(classifier, lab.make_world(0).test, transform=transform, progress=False)
        torch.testing.assert_close(again["logits"], test["logits"], atol=1e-4, rtol=1e-4)
        runs.append(out)
    assert "test accuracy" in capsys.readouterr().out

    # a chapter's fine_tune call with the same settings loads stage 1's result: no second training
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: pytest.fail("fine_tune trained again"))
    result = lt.fine_tune(lt.profile("lab"), "lab-clip", loss="la", seed=3, epochs=1)
    stored = torch.load(runs[0] / "logits.pt", weights_only=True)
    assert torch.equal(result["test"]["logits"], stored["test"]["logits"]) and result["epochs"] == 1

    assert main(["eval", "--runs", *map(str, runs), "--mode", "probs", "--out", str(tiny_lab / "ens.json")]) == 0
    report = json.loads((tiny_lab / "ens.json").read_text())
    stored = [torch.load(r / "logits.pt", weights_only=True)["test"] for r in runs]
    mean_probs = sum(F.softmax(s["logits"], dim=1) for s in stored) / len(stored)
    expected = 100 * (mean_probs.argmax(1) == stored[0]["labels"]).double().mean().item()
    assert report["ensemble"]["overall"] == pytest.approx(expected)
    assert report["models"] == ["lab-clip", "lab-metaclip"] and set(report["members"]) == set(map(str, runs))

    prior_file = tiny_lab / "prior.json"
    assert main(["estimate-prior", "--model", "lab-clip", "--out", str(prior_file)]) == 0
    prior = json.loads(prior_file.read_text())
    assert len(prior["prior"]) == 100 and sum(prior["prior"]) == pytest.approx(1, abs=1e-4)
    assert prior["true_prior"] == pytest.approx(lab.upstream_priors()["lab-clip"].tolist())
    assert -1 <= prior["rank_correlation"] <= 1


def _fake_run(folder, logits, labels, counts, prior, model="m"):
    folder.mkdir(parents=True)
    lt.cache.atomic_torch_save(dict(model=model, val=dict(logits=logits, labels=labels),
                              test=dict(logits=logits, labels=labels), class_counts=counts,
                              pretrain_prior_estimate=prior), folder / "logits.pt")
    return str(folder)


def test_eval_sums_logits_like_the_official_code(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat(5)
    counts = torch.tensor([200, 150, 60, 30, 10, 5])
    prior = torch.tensor([0.1, 0.3, 0.2, 0.1, 0.2, 0.1])
    logits = [torch.randn(30, 6, generator=g) * 3 for _ in range(3)]
    runs = [_fake_run(tmp_path / f"r{i}", z, labels, counts, prior, f"m{i}") for i, z in enumerate(logits)]
    assert main(["eval", "--runs", *runs, "--weights", "1", "1", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    fused = logits[0] + logits[1] + 2 * logits[2]
    per_class = torch.stack([(fused.argmax(1) == labels)[labels == c].double().mean() for c in range(6)]) * 100
    assert report["ensemble"]["overall"] == pytest.approx(per_class.mean().item())
    # D-groups: > 100 images Many (classes 0, 1), 20..100 Medium (2, 3), < 20 Few (4, 5)
    expected_groups = [per_class[0:2].mean().item(), per_class[2:4].mean().item(), per_class[4:6].mean().item()]
    assert report["ensemble"]["d_group"] == pytest.approx(expected_groups)
    for name, z in zip(runs, logits):
        assert report["members"][name]["overall"] == pytest.approx(100 * (z.argmax(1) == labels).double().mean().item())


def test_eval_refuses_runs_of_other_data(tmp_path, capsys):
    counts, prior = torch.tensor([5, 5, 5]), torch.tensor([0.2, 0.3, 0.5])
    a = _fake_run(tmp_path / "a", torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]), counts, prior)
    b = _fake_run(tmp_path / "b", torch.randn(6, 3), torch.tensor([2, 1, 0, 0, 1, 2]), counts, prior)
    assert main(["eval", "--runs", a, b]) == 2
    err = capsys.readouterr().err
    assert "usage: python -m lt_utils eval" in err and "other data" in err
    assert main(["eval", "--runs", a, a, "--weights", "1"]) == 2
    assert "one weight per run" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["eval", "--runs", "no/such/run"], "holds no logits.pt"),
    (["train", "--model", "no-such-model", "--epochs", "1", "--out", "{tmp}/x"], "Unknown foundation model"),
])
def test_errors_from_lt_utils_are_usage_errors(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err and message in err


def test_clip_profile_without_gpu_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["estimate-prior", "--profile", "clip", "--model", "clip"]) == 2
    assert "LT_PROFILE=lab" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "lab-clip"], "required: --out"),
    (["train", "--model", "lab-clip", "--epochs", "0", "--out", "x"], "positive integer"),
    (["eval", "--runs", "a", "--mode", "mean"], "invalid choice"),
    (["fit"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("train", "eval", "estimate-prior", "examples:"))
    for cmd in ("train", "eval", "estimate-prior"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "--out" in capsys.readouterr().out


def test_module_entry_point():
    """The real command line (one process start: importing lt_utils takes seconds): usage, no traceback."""
    bad = subprocess.run([sys.executable, "-m", "lt_utils", "eval", "--runs", "nowhere"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert bad.returncode == 2 and "usage:" in bad.stderr and "Traceback" not in bad.stderr
