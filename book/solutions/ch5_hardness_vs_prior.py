"""A solution to Exercise 4 of chapter 5 (book/05_beyond_the_paper.ipynb):
Does the estimated prior follow rarity or hardness?

GLA's estimator reads the pre-training prior off the zero-shot model's logits, so a
class the model finds hard (low zero-shot accuracy) also gets a low estimated prior. For
a model whose true prior is nearly flat (MetaCLIP's curated pre-training; lab-metaclip
in the lab), rarity cannot explain a low estimate: a strong rank correlation between
per-class zero-shot accuracy and the estimate, and low accuracy in P^-Few, point at
hardness. The accuracy is taken on the test set, disjoint from the validation set the
prior is estimated on, so the correlation is not built in by reusing the same images.
"""
import lt_utils as lt


def hardness_vs_prior(zero_shot_run, prior):
    """Per-class zero-shot test accuracy against the estimated prior.

    Args:
        zero_shot_run: an `lt.zero_shot` result; `zero_shot_run["test"]` holds
            "logits" (N x C) and "labels" (N).
        prior: (C,) the estimated pre-training prior P^_P.

    Returns:
        A dict: "rho" (Spearman's rank correlation of per-class accuracy with the
        prior), "P^-Few acc" and "other acc" (mean per-class accuracy, in percent,
        of the classes `lt.prior_groups(prior)` puts in P-Few, and of the others).
    """
    test = zero_shot_run["test"]
    # one accuracy per class (percent); the test set is balanced
    per_class = lt.accuracy_report(test["logits"], test["labels"])["per_class"]
    few = lt.prior_groups(prior) == 2
    return {"rho": lt.rank_correlation(per_class, prior),
            "P^-Few acc": float(per_class[few].nanmean()),
            "other acc": float(per_class[~few].nanmean())}
