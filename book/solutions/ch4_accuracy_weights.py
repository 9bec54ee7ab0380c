"""A solution to Exercise 1 of chapter 4 (book/04_backdoor_adjustment.ipynb):
Weights of the ensemble members from their validation accuracy.

Backdoor adjustment with P(c) = 1/M treats every foundation model as an equally likely
value of the semantic factor. Weighting the members instead by a softmax of their
validation accuracy asks whether a better member deserves more say; the temperature runs
from "the best member alone" (near 0) to equal weights (large). The validation set sets
the weights; the test set only scores the fused model.
"""
import torch

import lt_utils as lt


def accuracy_weights(member_runs, temperature=1.0):
    """Member weights softmax(val accuracy / temperature), summing to 1.

    Args:
        member_runs: a list of M `fine_tune` results; `run["val"]` holds "logits"
            (N x C) and "labels" (N).
        temperature: the softmax temperature, in accuracy points (> 0).

    Returns:
        (M,) float64 tensor of weights summing to 1, in the order of `member_runs`.
    """
    if temperature <= 0:
        raise ValueError(f"the temperature must be > 0, got {temperature}.")
    # overall validation accuracy of each member, in percent
    accuracies = torch.tensor([lt.accuracy(run["val"]["logits"], run["val"]["labels"])
                               for run in member_runs], dtype=torch.float64)
    # softmax subtracts the largest value first: no overflow at a small temperature
    return torch.softmax(accuracies / temperature, dim=0)
