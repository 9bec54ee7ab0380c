"""The paper's experiments on its own datasets at full scale (ImageNet-LT, Places-LT, iNaturalist 2018), as one
resumable pipeline and one results file:

    python -m lt_utils paper --dataset imagenet_lt --out runs/imagenet_lt                  # one GPU
    torchrun --nproc_per_node=8 -m lt_utils paper --dataset imagenet_lt --out runs/imagenet_lt  # a node

Per model: zero-shot on val and test, GLA's prior estimate from the val logits. Per seed: the headline comparison
of the book (``lt_utils.experiments.seed_comparison``: CE, LA, GLA-Train, LA + post-hoc on CLIP; LA on CLIP,
OpenCLIP and MetaCLIP and their backdoor adjustment; the best single model by val; the same-backbone control) and
the kNN probe of Table 4 (bank: val features, queries: test features). Every run is cached (``LT_CACHE_DIR``,
default ``OUT/cache``), an interrupted fine-tune resumes from its last epoch, and a second call loads everything
and rewrites the same results: ``results.json`` (settings, code version, data, every method's overall / D-group /
P-group accuracy and 3x3 matrix per seed, and mean and spread over seeds) and ``results.csv`` (one row per seed and
method). ``results_table`` reads such files back for the book's results page (``LT_RESULTS``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from pathlib import Path

import pandas as pd
import torch

from .cache import atomic_write_text
from .distributed import dist_info
from .experiments import report_runs, seed_comparison
from .groups import GROUP_NAMES, prior_groups
from .metrics import accuracy, accuracy_report
from .runs import estimate_pretrain_prior, knn_predict_sharded, resolve_profile, zero_shot
from .version import __version__

RESULTS_FORMAT = "lt_utils-paper-results"
RESULTS_VERSION = 1
RESULT_FILES = dict(json="results.json", csv="results.csv")
KNN = dict(k=200, t=0.1)  # the official code's kNN probe (paper card, section 4)


def code_version(package: Path | None = None) -> dict:
    """What code made a result: the package version, the git commit of its own checkout and whether its sources
    differ from that commit (both None when installed from a wheel, or inside some other git checkout, e.g. a
    virtual environment in a project's folder), and a SHA-256 of the package's sources (set either way)."""
    package = Path(package or Path(__file__).resolve().parent)
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    commit, dirty = _git_state(package)
    return dict(lt_utils_version=__version__, git_commit=commit, git_dirty=dirty, source_sha256=digest.hexdigest())


def _git_state(package: Path) -> tuple:
    """``(commit, sources changed since it)`` of the git checkout whose top folder holds ``package``, else
    ``(None, None)``."""
    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != package.resolve().parent:
            return None, None  # the commit of an enclosing repository would not describe these sources
        return git("rev-parse", "HEAD") or None, bool(git("status", "--porcelain", "--", "."))
    except (OSError, subprocess.SubprocessError):
        return None, None


def json_ready(x):
    """Tensors to lists, NaN (an empty group) to null: strict JSON (the CLI's files and the results file)."""
    x = x.tolist() if isinstance(x, torch.Tensor) else x
    if isinstance(x, list):
        return [json_ready(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def _json_report(report: dict) -> dict:
    """An ``accuracy_report`` as JSON: overall, mean per class, D-/P-group accuracies and the 3x3 matrix (percent;
    an empty group is null)."""
    keys = ("overall", "mean_per_class", "d_group", "p_group", "matrix", "matrix_counts")
    return {k: json_ready(report[k]) for k in keys if k in report}


def _knn_reports(comparison: dict, zero: dict, main: str, d_groups, p_groups) -> dict:
    """Table 4: kNN accuracy of the main model's features before and after fine-tuning (bank = val, queries =
    test, disjoint by sample id)."""
    reports = {}
    for name, run in ((f"zero-shot ({main})", zero), (f"CE ({main})", comparison["ce"]),
                      (f"LA ({main})", comparison["la"][main])):
        val, test = run["val"], run["test"]
        if val.get("features") is None:
            continue
        scores = knn_predict_sharded(val["features"], val["labels"], test["features"],
                                     num_classes=len(d_groups), bank_ids=val.get("ids"), query_ids=test.get("ids"),
                                     **KNN)
        reports[name] = _json_report(accuracy_report(scores, test["labels"], d_groups, p_groups))
    return reports


def _summary(per_seed: dict) -> list[dict]:
    """Mean and sample standard deviation over seeds of each method's overall and group accuracies."""
    rows = []
    methods = next(iter(per_seed.values())).keys()
    for method in methods:
        row = dict(method=method, seeds=len(per_seed))
        columns = {"overall": [r[method]["overall"] for r in per_seed.values()]}
        for prefix, key in (("D", "d_group"), ("P", "p_group")):
            for g, name in enumerate(GROUP_NAMES):
                columns[f"{prefix}-{name}"] = [r[method][key][g] for r in per_seed.values()]
        for column, values in columns.items():
            values = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
            row[column] = values.mean().item()
            row[f"{column} std"] = values.std().item() if len(values) > 1 else None
        rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return rows


def _csv_rows(per_seed: dict, dataset: str) -> list[dict]:
    rows = []
    for seed, methods in per_seed.items():
        for method, report in methods.items():
            row = dict(dataset=dataset, seed=int(seed), method=method, overall=report["overall"])
            for prefix, key in (("D", "d_group"), ("P", "p_group")):
                row.update({f"{prefix}-{g}": v for g, v in zip(GROUP_NAMES, report[key])})
            for i, d in enumerate(GROUP_NAMES):
                row.update({f"D-{d} x P-{p}": report["matrix"][i][j] for j, p in enumerate(GROUP_NAMES)})
            rows.append(row)
    return rows


def run_paper(profile, out, seeds=None, progress: bool = True) -> dict:
    """The whole pipeline on the profile's dataset, into the folder ``out`` (see the module docstring).

    Args:
        profile: a ``Profile`` (e.g. ``lt.profiles.paper_profile("imagenet_lt")``) or its name.
        out: the results folder; ``results.json`` and ``results.csv`` are written there (rank 0 only under
            torchrun), atomically.
        seeds: fine-tuning seeds (default: the profile's).
        progress: progress bars and one line per run.

    Returns:
        The results dict written to ``results.json``.
    """
    profile = resolve_profile(profile)
    seeds = profile.seeds if seeds is None else tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("Give at least one fine-tuning seed.")
    out = Path(out)
    main = profile.models[0]
    models = tuple(dict.fromkeys(profile.models + profile.control_models))
    zero = {m: zero_shot(profile, m, progress=progress) for m in models}
    est_prior = {m: estimate_pretrain_prior(profile, m) for m in models}
    # one P-partition per table: terciles of the ensemble members' mean estimated prior (as the book's)
    p_groups = prior_groups(torch.stack([est_prior[m] for m in profile.models]).mean(0))

    per_seed, knn, runs = {}, {}, []
    for seed in seeds:
        comparison = seed_comparison(profile, seed, est_prior, zero_shot_test_logits=zero[main]["test"]["logits"])
        runs += comparison["runs"]
        d_groups, labels = comparison["d_groups"], comparison["labels"]
        per_seed[str(seed)] = {method: _json_report(accuracy_report(logits, labels, d_groups, p_groups))
                               for method, (logits, _members) in comparison["methods"].items()}
        knn[str(seed)] = _knn_reports(comparison, zero[main], main, d_groups, p_groups)
    report_runs(f"{profile.dataset}, seeds {list(seeds)}", runs)

    first = runs[0]
    class_counts = first["class_counts"]
    _, _, world_size = dist_info()
    results = dict(
        format=RESULTS_FORMAT, format_version=RESULTS_VERSION, dataset=profile.dataset,
        models=list(profile.models), control_models=list(profile.control_models), seeds=list(seeds),
        settings=profile.as_dict(), code=code_version(), world_size=world_size,
        data=dict(num_classes=len(class_counts), train_images=int(class_counts.sum()),
                  val_images=len(zero[main]["val"]["labels"]), test_images=len(zero[main]["test"]["labels"]),
                  d_group_classes=torch.bincount(d_groups, minlength=3).tolist(),
                  p_group_classes=torch.bincount(p_groups, minlength=3).tolist(),
                  groups=dict(d="D-Many/Medium/Few: > 100, 20-100, < 20 training images (OLTR)",
                              p="P-Many/Medium/Few: terciles of the mean of GLA's estimated pre-training priors "
                                "of the ensemble's members")),
        zero_shot={m: dict(val_accuracy=accuracy(z["val"]["logits"], z["val"]["labels"]),
                           test_accuracy=accuracy(z["test"]["logits"], z["test"]["labels"])) for m, z in zero.items()},
        prior_estimate={m: p.tolist() for m, p in est_prior.items()},
        runs=[dict(model=r["model"], loss=r["loss"], seed=r["seed"], epochs=r["epochs"], peft=r["peft"],
                   trainable_params=r["trainable_params"], train_time_s=r["train_time_s"]) for r in runs],
        methods=per_seed, knn=knn, summary=_summary(per_seed),
    )
    if dist_info()[1] == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(results, indent=1, allow_nan=False) + "\n", out / RESULT_FILES["json"])
        atomic_write_text(pd.DataFrame(_csv_rows(per_seed, profile.dataset)).to_csv(index=False),
                          out / RESULT_FILES["csv"])
    return results


def read_results(path) -> dict:
    """A ``results.json`` written by ``run_paper`` (or its folder), checked: a clear error for anything else."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / RESULT_FILES["json"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give a results.json written by `python -m lt_utils paper` "
                                "(or the folder that holds it).")
    try:
        results = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not JSON ({err}): give a results.json written by `python -m lt_utils "
                         "paper`.") from err
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path} is not a results file of `python -m lt_utils paper` (no format "
                         f"{RESULTS_FORMAT!r}).")
    if results.get("format_version") != RESULTS_VERSION:
        raise ValueError(f"{path} has format version {results.get('format_version')}; this lt_utils reads version "
                         f"{RESULTS_VERSION}: make it again with this version.")
    return results


def results_table(paths) -> pd.DataFrame:
    """The mean (over seeds) accuracies of the methods in one or more results files, labelled with their dataset,
    models and seeds: the results page's "your own numbers" (``LT_RESULTS=path1:path2``).

    Args:
        paths: a list of paths, or one string of paths separated by ``os.pathsep`` (``:``); empty: no rows.

    Returns:
        A DataFrame, one row per (file, method): dataset, models, seeds, method, overall and group accuracies.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [p for p in str(paths).split(os.pathsep) if p.strip()]
    rows = []
    for path in paths:
        results = read_results(path)
        label = dict(dataset=results["dataset"], models=", ".join(results["models"]),
                     seeds=", ".join(map(str, results["seeds"])))
        for row in results["summary"]:
            rows.append(dict(label, **{k: v for k, v in row.items() if not k.endswith(" std") and k != "seeds"}))
    return pd.DataFrame(rows)
