"""A solution to Exercise 1 of chapter 1 (book/01_data_imbalance.ipynb):
Balanced Softmax from scratch.

Balanced Softmax (Ren et al. 2020) trains on the logits shifted by the log of the raw
class counts, CE(z + log n_y, y). Since log n_y = log P_D(y) + log N and a softmax
ignores a constant added to every logit, this is exactly the logit-adjusted loss with
tau = 1: both losses train the same classifier.
"""
import torch


def balanced_softmax_loss(logits, targets, class_counts):
    """Balanced Softmax (Ren et al. 2020), written from scratch.

    Compute the mean cross-entropy of the logits shifted by the log of the raw
    training counts, CE(z + log n_y, y): the counts are not normalised.

    Args:
        logits: (N, C) float tensor, a model's logits.
        targets: (N,) integer tensor, the true classes.
        class_counts: (C,) tensor, training images per class (`class_counts`).

    Returns:
        A scalar float tensor: the loss averaged over the N samples.
    """
    logits = torch.as_tensor(logits).float()
    counts = torch.as_tensor(class_counts, device=logits.device).float()
    # every class's logit starts log n_y higher: the head classes get a head start
    shifted = logits + counts.log()
    # the ordinary softmax cross-entropy of the shifted logits, averaged over the batch
    return torch.nn.functional.cross_entropy(shifted, torch.as_tensor(targets).long())
