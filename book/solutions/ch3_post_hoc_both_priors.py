"""A solution to Exercise 1 of chapter 3 (book/03_logit_adjustment_fails.ipynb):
A post-hoc correction of a CE run for both priors.

A CE-trained model carries the downstream prior P_D in its logits, and (the chapter's
question) perhaps the pre-training prior P_P too. Subtracting tau * log P_D removes the
first, as LA does during training; subtracting lambda * log P^_P, with lambda chosen on
the validation set, removes as much of the second as helps. The test set only scores the
chosen lambda.
"""
import torch

import lt_utils as lt


def post_hoc_both_priors(run, data_prior, pretrain_prior, lambdas, tau=1.0):
    """Correct a CE run after training for both priors, lambda chosen on val.

    Args:
        run: a `fine_tune` result; `run["val"]` / `run["test"]` hold "logits"
            (N x C) and "labels" (N).
        data_prior: (C,) P_D, the downstream training prior.
        pretrain_prior: (C,) P^_P, the estimated pre-training prior.
        lambdas: the candidate weights of -log P^_P.
        tau: the weight of -log P_D (LA's tau).

    Returns:
        (lam, test_logits): the lambda with the best overall validation accuracy
        (the first of equally good ones), and the test logits corrected with it,
        z - tau * log P_D - lam * log P^_P (N_test x C).
    """
    # clamp: a class of prior 0 would otherwise get an infinite bonus
    log_data = torch.as_tensor(data_prior).float().clamp_min(1e-12).log()
    log_pretrain = torch.as_tensor(pretrain_prior).float().clamp_min(1e-12).log()

    def corrected(logits, lam):
        return torch.as_tensor(logits).float() - tau * log_data - lam * log_pretrain

    val = run["val"]

    def val_accuracy(lam):
        return lt.accuracy(corrected(val["logits"], lam), val["labels"])

    # the validation set chooses (max keeps the first of equal accuracies) ...
    lam = max((float(x) for x in lambdas), key=val_accuracy)
    # ... and the test set only scores the choice
    return lam, corrected(run["test"]["logits"], lam)
