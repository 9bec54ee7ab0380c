"""A solution to Exercise 2 of chapter 1 (book/01_data_imbalance.ipynb):
Post-hoc logit correction.

A CE-trained model fits the training posterior, log p(x | y) + log P_D(y) up to a
constant. Subtracting tau * log P_D(y) after training (tau = 1) removes the prior and
leaves the balanced classifier's scores: the correction LA bakes into training, applied
afterwards instead.
"""
import torch


def post_hoc_correction(logits, prior, tau=1.0):
    """Post-hoc logit adjustment of a CE model: subtract tau * log P_D.

    Args:
        logits: (N, C) float tensor, the CE run's logits.
        prior: (C,) tensor, the training label prior P_D (`data_prior`).
        tau: the strength of the correction (0 leaves the logits unchanged).

    Returns:
        (N, C) float tensor, the corrected logits z - tau * log P_D; predict
        with their argmax.
    """
    logits = torch.as_tensor(logits).float()
    prior = torch.as_tensor(prior, device=logits.device).float()
    # probabilities or raw counts: normalising makes both the same correction
    prior = prior / prior.sum()
    # a head class (large P_D) loses more than a tail class (small P_D)
    return logits - tau * prior.log()
