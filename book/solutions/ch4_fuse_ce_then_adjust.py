"""A solution to Exercise 2 of chapter 4 (book/04_backdoor_adjustment.ipynb):
Backdoor adjustment of CE-fine-tuned members, corrected for the downstream prior after
the fusion.

Each CE member's logits carry log P_D (chapter 1). Their mean, the logit form of
backdoor adjustment with equal weights, carries it once, so one subtraction of tau * log
P_D after the fusion corrects it (the plain sum of the logits would carry it M times).
Comparing the result with the fused LA members tells whether LA has to happen during
training or can be applied to the ensemble afterwards.
"""
import torch

import lt_utils as lt


def fuse_ce_then_adjust(member_runs, data_prior, tau=1.0):
    """Fuse CE members by the mean of their test logits, then subtract tau * log P_D.

    Args:
        member_runs: a list of M `fine_tune` results trained with CE;
            `run["test"]` holds "logits" (N x C).
        data_prior: (C,) P_D, the downstream training prior.
        tau: the weight of -log P_D (LA's tau).

    Returns:
        (N, C) float tensor, the corrected fused test logits.
    """
    # equal weights 1/M: the mean of the members' logits
    fused = lt.backdoor_adjust([run["test"]["logits"] for run in member_runs],
                               mode="logits")
    log_prior = torch.as_tensor(data_prior, dtype=fused.dtype).clamp_min(1e-12).log()
    # once, not M times: the mean carries the prior once
    return fused - tau * log_prior
