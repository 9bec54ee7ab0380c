"""Backdoor adjustment over M fine-tuned foundation models (the paper's Sec. 5), on cached logits only.

The paper writes P(y | do(x)) = sum_c P(y | x, c) P(c) with one model per value of the confounder c and
P(c) = 1/M: an average of the models' *probabilities* (``mode="probs"``).  The official code instead sums the
models' raw *logits* (``mode="logits"``): softmax(sum_m z_m) is the normalised product of the models' softmaxes,
a product of experts, so its argmax is that of prod_m P_m(y|x).  The book shows both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_finite

BACKDOOR_MODES = ("logits", "probs")


def _as_list(logits_per_model) -> list[torch.Tensor]:
    names = None
    if isinstance(logits_per_model, dict):
        names = list(logits_per_model)
        logits_per_model = list(logits_per_model.values())
    if isinstance(logits_per_model, torch.Tensor):
        if logits_per_model.ndim != 3:
            raise ValueError(f"a stacked tensor of logits must be (M, N, C), got {tuple(logits_per_model.shape)}.")
        logits_per_model = list(logits_per_model.unbind(0))
    logits = [torch.as_tensor(z) for z in logits_per_model]
    if len(logits) == 0:
        raise ValueError("backdoor_adjust needs the logits of at least one model.")
    shape = logits[0].shape
    for m, z in enumerate(logits):
        if z.ndim != 2:
            raise ValueError(f"the logits of model {m} must be (N, C), got shape {tuple(z.shape)}.")
        if z.shape != shape:
            raise ValueError(f"all models need logits of the same shape (N samples x C classes): model 0 has "
                             f"{tuple(shape)}, model {m} has {tuple(z.shape)}. Evaluate them on the same set.")
        name = f" ({names[m]!r})" if names is not None else ""
        check_finite(z, f"the logits of model {m}{name}")  # a NaN row would fuse into a fixed class
    return logits


def _as_weights(weights, num_models: int) -> list[float]:
    if weights is None:
        return [1.0 / num_models] * num_models
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != num_models:
        raise ValueError(f"need one weight per model ({num_models}), got {w.numel()}.")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}.")
    return (w / w.sum()).tolist()


def backdoor_adjust(logits_per_model, weights=None, mode: str = "logits") -> torch.Tensor:
    """Fuse M models' logits on the same N x C set into one N x C score tensor (no forward pass).

    - ``mode="logits"``: sum_m w_m z_m, a (weighted) product of experts.  With equal weights this is the mean
      of the logits, i.e. the official code's sum divided by M: the same argmax, a softer softmax.
    - ``mode="probs"``: log sum_m w_m softmax(z_m), the log of the paper's P(y | do(x)); computed stably with
      ``logaddexp``.

    Taught in chapter 4.

    Args:
        logits_per_model: a list/tuple of N x C tensors, a dict name -> tensor, or an (M, N, C) tensor; NaN or
            inf in a model's logits is a ValueError naming the model.
        weights: one non-negative weight per model, normalised to sum to 1 (default: equal, P(c) = 1/M).
        mode: ``"logits"`` (the official code) or ``"probs"`` (the paper's equation).

    Returns:
        An N x C tensor, float32 (float64 if the inputs are), on the inputs' device: the weighted logits for
        ``mode="logits"``, log-probabilities for ``mode="probs"`` (``.exp()`` gives the averaged distribution).
    """
    if mode not in BACKDOOR_MODES:
        raise ValueError(f"Unknown mode {mode!r}; choose 'logits' (sum of logits, the official code) or "
                         f"'probs' (average of probabilities, the paper's equation).")
    logits = _as_list(logits_per_model)
    w = _as_weights(weights, len(logits))
    dtype = torch.float64 if logits[0].dtype == torch.float64 else torch.float32
    device = logits[0].device
    # accumulate model by model: never stack M x N x C in memory
    fused = None
    for w_m, z in zip(w, logits):
        if w_m == 0:
            continue
        z = z.to(device, dtype)
        if mode == "logits":
            term = z * w_m
        else:
            term = F.log_softmax(z, dim=1) + torch.log(torch.tensor(w_m, dtype=dtype, device=device))
        if fused is None:
            fused = term  # a fresh tensor: safe to update in place
        elif mode == "logits":
            fused.add_(term)
        else:
            fused = torch.logaddexp(fused, term, out=fused)
    return fused
