"""The book's experiments that span many runs: the headline comparison over seeds (chapter 5, the results page)."""
from __future__ import annotations

import pandas as pd
import torch

from .backdoor import backdoor_adjust
from .groups import data_groups, prior_groups
from .lab import upstream_priors
from .metrics import accuracy, accuracy_report, report_row
from .runs import estimate_pretrain_prior, fine_tune, resolve_profile, zero_shot

# Fine-tuning seeds of a one-backbone control start here: a block disjoint from the main runs' seeds.
CONTROL_SEEDS_FROM = 1000


def headline_comparison(profile=None, seeds=None) -> pd.DataFrame:
    """The book's headline comparison over fine-tuning seeds (chapter 5 and the results page), from cached runs.

    For each seed: CE, LA, GLA-Train and LA + post-hoc ``-log P^_P`` on the profile's first model; the best single
    LA model (chosen on val); the same-backbone control (LA, ``profile.control_models``, fused by logit sum);
    backdoor adjustment (LA, ``profile.models``, logit sum); and, for reference, the first model's zero-shot.
    Every method of a seed is grouped by ONE P-partition, ``"estimated"``: terciles of the mean estimated
    pre-training prior of the ensemble's members (``profile.models``, the partition chapter 4 uses); in the lab also
    ``"true"``, the same from their true priors. As a sensitivity check, ``"estimated (per method)"`` (and
    ``"true (per method)"``) group each method by its own members' prior.

    Args:
        profile: a ``Profile`` or its name (None: ``$LT_PROFILE``).
        seeds: fine-tuning seeds (default: the profile's); missing runs are fine-tuned.

    Returns:
        A DataFrame with one row per (seed, method, P-groups source) and ``lt.report_row``'s columns (percent).
        It prints one line: how many of the fine-tunes were trained now and how many loaded from the cache.
    """
    profile = resolve_profile(profile)
    seeds = profile.seeds if seeds is None else tuple(seeds)
    est_prior = {m: estimate_pretrain_prior(profile, m) for m in dict.fromkeys(profile.models + profile.control_models)}
    priors = {"estimated": est_prior}
    if profile.dataset == "lab":
        priors["true"] = upstream_priors()
    rows, runs = [], []
    for seed in seeds:
        comparison = seed_comparison(profile, seed, est_prior)
        runs += comparison["runs"]
        labels, d_groups = comparison["labels"], comparison["d_groups"]
        for method, (logits, members) in comparison["methods"].items():
            for source, prior in priors.items():
                # the table's one partition, then the method's own members' (a sensitivity check)
                for label, models in ((source, profile.models), (f"{source} (per method)", members)):
                    p_groups = prior_groups(torch.stack([prior[m] for m in models]).mean(0))
                    report = accuracy_report(logits, labels, d_groups=d_groups, p_groups=p_groups)
                    rows.append(report_row(report, seed=seed, method=method, **{"P-groups from": label}))
    report_runs(f"headline comparison, seeds {list(seeds)}", runs)
    return pd.DataFrame(rows)


def seed_comparison(profile, seed: int, est_prior: dict, zero_shot_test_logits=None) -> dict:
    """The methods of one fine-tuning seed of the headline comparison, from cached runs (missing ones are trained).

    Shared by ``headline_comparison`` (chapter 5, the results page) and ``lt_utils.paper`` (the paper's datasets).

    Args:
        profile: a ``Profile``.
        seed: the fine-tuning seed.
        est_prior: model name -> GLA's estimated pre-training prior (GLA-Train and the post-hoc method use the
            first model's).
        zero_shot_test_logits: the first model's zero-shot test logits, when the caller holds them already (on
            iNaturalist they are 0.5 GB); None loads them from the cache.

    Returns:
        ``dict(methods={name: (test logits, the models whose prior defines the per-method P-groups)}, labels,
        d_groups, runs, la, ce)``: ``runs`` every ``fine_tune`` result used, ``la`` the LA run per model and
        ``ce`` the first model's CE run.
    """
    main = profile.models[0]
    la = {m: fine_tune(profile, m, loss="la", seed=seed, progress=False) for m in profile.models}
    ce = fine_tune(profile, main, loss="ce", seed=seed, progress=False)
    gla = fine_tune(profile, main, loss="gla_train", seed=seed, pretrain_prior=est_prior[main], progress=False)
    control = _control_runs(profile, seed, "la")
    best = max(profile.models, key=lambda m: accuracy(la[m]["val"]["logits"], la[m]["val"]["labels"]))
    methods = {  # name -> (test logits, the models whose prior defines the per-method P-groups)
        f"zero-shot ({main})": (zero_shot(profile, main, progress=False)["test"]["logits"]
                                if zero_shot_test_logits is None else zero_shot_test_logits, [main]),
        f"CE ({main})": (ce["test"]["logits"], [main]),
        f"LA ({main})": (la[main]["test"]["logits"], [main]),
        f"GLA-Train ({main})": (gla["test"]["logits"], [main]),
        f"LA + post-hoc ({main})": (la[main]["test"]["logits"] - est_prior[main].clamp_min(1e-12).log(), [main]),
        "LA, best single (by val)": (la[best]["test"]["logits"], [best]),
        "same backbone x3": (backdoor_adjust([r["test"]["logits"] for r in control]), list(profile.control_models)),
        "backdoor x3": (backdoor_adjust([la[m]["test"]["logits"] for m in profile.models]), list(profile.models)),
    }
    d_groups = data_groups(la[main]["class_counts"], reference=la[main]["group_counts"])
    return dict(methods=methods, labels=la[main]["test"]["labels"], d_groups=d_groups,
                runs=[*la.values(), ce, gla, *control], la=la, ce=ce)


def report_runs(what: str, runs: list[dict]) -> None:
    """One line for a call that makes several fine-tunes: how many were trained now, how many loaded."""
    trained = [r for r in runs if not r["from_cache"]]
    took = sum(r["train_time_s"] for r in trained)
    print(f"{what}: {len(runs)} fine-tunes, {len(trained)} trained now"
          + (f" ({took / 60:.1f} min of training)" if trained else "") + f", {len(runs) - len(trained)} loaded "
          "from the cache")


def control_runs(profile=None, seed: int = 0, loss: str = "la", progress: bool = False) -> list[dict]:
    """The same-backbone control of fine-tuning seed ``seed``: one ``fine_tune`` run per ``profile.control_models``.

    Used in chapters 4 and 5. When the control models are one backbone (the clip profile: CLIP three times), the
    members differ by fine-tuning seed, drawn from a block of their own (``CONTROL_SEEDS_FROM + M * seed + i``), so
    no control run is a main run of another seed and paired differences over seeds stay independent. In the lab
    the members are pre-trained separately and share the seed.

    Args:
        profile: a ``Profile`` or its name (None: ``$LT_PROFILE``).
        seed: the fine-tuning seed of the comparison.
        loss: the members' loss (LA in the book).
        progress: show each run's progress bars and line.

    Returns:
        A list of ``fine_tune`` results, one per control model. It prints one line: how many were trained now
        and how many loaded from the cache.
    """
    runs = _control_runs(resolve_profile(profile), seed, loss, progress)
    report_runs(f"same-backbone control, seed {seed}", runs)
    return runs


def _control_runs(profile, seed: int, loss: str, progress: bool = False) -> list[dict]:
    members = profile.control_models
    one_backbone = len(set(members)) == 1
    return [fine_tune(profile, m, loss=loss, progress=progress,
                      seed=CONTROL_SEEDS_FROM + len(members) * seed + i if one_backbone else seed)
            for i, m in enumerate(members)]
