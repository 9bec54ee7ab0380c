"""Estimating a foundation model's pre-training label prior P_P from its zero-shot logits (GLA's estimator).

Zhu, Tang, Sun, Zhang, "Generalized Logit Adjustment: Calibrating Fine-tuned Models by Removing Label Bias in
Foundation Models", NeurIPS 2023 (github.com/BeierZhu/GLA).  On a *balanced* labelled held-out set:

1. temperature calibration: find T with mean max-softmax confidence of z / T equal to top-1 accuracy;
2. q^ = argmin over the simplex of mean_i CE(z_i / T - log q, y_i).

Why 2 works: if z(x) = log p(x|y) + log P_P(y) + const, subtracting log P_P gives the balanced posterior, which is
what minimises the CE on a balanced set.  At the optimum the mean predicted distribution of z - log q equals the
label frequencies (the gradient below), which the tests check directly.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from .phases import phase


def _check_logits_labels(logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.as_tensor(logits).detach()
    labels = torch.as_tensor(labels).detach()
    if logits.ndim != 2:
        raise ValueError(f"logits must be (num_samples, num_classes), got shape {tuple(logits.shape)}.")
    if logits.shape[0] == 0:
        raise ValueError("logits are empty: the estimator needs a labelled held-out set (e.g. the balanced val set).")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be 1-D with one label per row of logits ({logits.shape[0]}), "
                         f"got shape {tuple(labels.shape)}.")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}.")
    labels = labels.to("cpu", torch.long)
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}] (one logit column per class), "
                         f"got range [{labels.min().item()}, {labels.max().item()}].")
    logits = logits.float()
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf; check the model outputs before estimating a prior.")
    return logits, labels


def _mean_confidence(logits: torch.Tensor, temperature: float) -> float:
    return F.softmax(logits / temperature, dim=1).amax(dim=1).mean().item()


def calibrate_temperature(logits, labels, lo: float = 0.1, hi: float = 10.0, tol: float = 1e-3,
                          max_iter: int = 100) -> float:
    """Temperature T in [lo, hi] such that the mean max-softmax confidence of ``logits / T`` equals the top-1
    accuracy (within ``tol``, a fraction: 1e-3 = 0.1 pp, as in GLA).

    Confidence falls monotonically as T grows while accuracy does not depend on T, so a bisection (on log T)
    finds it.  If even ``lo`` is not confident enough (or ``hi`` still too confident) the bound is returned with
    a warning.
    """
    logits, labels = _check_logits_labels(logits, labels)
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}.")
    accuracy = (logits.argmax(dim=1).cpu() == labels).float().mean().item()
    confidence_lo, confidence_hi = _mean_confidence(logits, lo), _mean_confidence(logits, hi)
    if confidence_lo <= accuracy:  # cannot get confident enough inside [lo, hi]
        if confidence_lo < accuracy - tol:
            warnings.warn(f"Even T={lo} leaves the model under-confident ({confidence_lo:.3f} < accuracy "
                          f"{accuracy:.3f}); returning T={lo}.", stacklevel=2)
        return float(lo)
    if confidence_hi >= accuracy:  # still too confident at hi (accuracy near chance?)
        if confidence_hi > accuracy + tol:
            warnings.warn(f"Even T={hi} leaves the model over-confident ({confidence_hi:.3f} > accuracy "
                          f"{accuracy:.3f}); returning T={hi}.", stacklevel=2)
        return float(hi)
    log_lo, log_hi = math.log(lo), math.log(hi)  # conf(lo) > acc > conf(hi)
    for _ in range(max_iter):
        log_mid = 0.5 * (log_lo + log_hi)
        confidence = _mean_confidence(logits, math.exp(log_mid))
        if abs(confidence - accuracy) <= tol:
            break
        if confidence > accuracy:
            log_lo = log_mid
        else:
            log_hi = log_mid
    return float(math.exp(log_mid))


@phase("prior estimate")
def estimate_prior(logits, labels, calibrate: bool = True, steps: int = 1000, lr: float = 0.1, tol: float = 1e-6,
                   return_temperature: bool = False, device=None):
    """GLA's estimate of the pre-training label prior P^_P from zero-shot logits on a balanced labelled set.

    q^ = argmin_{q in simplex} mean_i CE(z_i - log q, y_i), z = logits / T (T from ``calibrate_temperature``
    when ``calibrate``, else 1).  With q = softmax(theta) the objective is mean_i CE(z_i - theta, y_i) (softmax
    ignores shifts), convex in theta, with the explicit gradient  freq_c - mean_i softmax(z_i - theta)_c.
    Solved from the uniform prior (theta = 0) by full-batch Adam (cosine-decayed ``lr``) for at most ``steps``
    steps, stopping early once every gradient entry is below ``tol`` -- a simple equivalent of GLA's Lagrangian
    solver (Zhu et al., NeurIPS 2023, github.com/BeierZhu/GLA).

    Every class needs at least one labelled sample (else ``ValueError``); an unbalanced set triggers a warning,
    because there the optimum estimates P_P divided by the set's label frequencies.

    Taught in chapter 2 and used again in chapters 3 and 4.

    Args:
        logits: zero-shot logits on the held-out set, a (num_samples, C) array or tensor.
        labels: the true class indices, one integer per row of ``logits``.
        calibrate: whether to divide the logits by the temperature from ``calibrate_temperature`` (else T = 1).
        steps: the maximum number of full-batch Adam steps.
        lr: Adam's initial learning rate (cosine-decayed over ``steps``).
        tol: stop early once every gradient entry is below this.
        return_temperature: whether to also return the temperature T used.
        device: where to run the optimisation (default: the logits' device).

    Returns:
        The estimated prior, a float32 CPU tensor of length C, positive, summing to 1; with
        ``return_temperature``, the tuple ``(prior, temperature)`` with the temperature as a float.
    """
    logits, labels = _check_logits_labels(logits, labels)
    num_samples, num_classes = logits.shape
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing[:10]}{'...' if len(missing) > 10 else ''} have no labelled sample; "
                         f"the estimator needs every class in the held-out set (use a balanced val split).")
    if counts.max() > 1.5 * counts.min():
        warnings.warn(f"The held-out set is not balanced (class counts {counts.min().item()}..{counts.max().item()}); "
                      f"GLA's estimator assumes a balanced set, otherwise it estimates P_P / label frequency.",
                      stacklevel=2)
    if steps < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1 and lr > 0, got steps={steps}, lr={lr}.")
    temperature = calibrate_temperature(logits, labels) if calibrate else 1.0

    device = logits.device if device is None else torch.device(device)
    z = (logits / temperature).to(device)
    freq = (counts.float() / num_samples).to(device)
    theta = torch.zeros(num_classes, device=device)  # uniform start
    optimizer = torch.optim.Adam([theta], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for step in range(steps):
        # d/dtheta mean_i CE(z_i - theta, y_i) = freq - mean_i softmax(z_i - theta): no autograd needed
        theta.grad = freq - F.softmax(z - theta, dim=1).mean(dim=0)
        if step % 25 == 0 and theta.grad.abs().max().item() < tol:  # a host sync every 25 steps only
            break
        optimizer.step()
        schedule.step()
    prior = F.softmax(theta, dim=0).float().cpu()
    return (prior, float(temperature)) if return_temperature else prior


def prior_optimality_gap(logits, labels, prior, temperature: float = 1.0) -> float:
    """Max |mean_i softmax(z_i / T - log q)_c - freq_c| over classes: zero at the exact minimiser of GLA's
    objective (its gradient).  A diagnostic for ``estimate_prior``."""
    logits, labels = _check_logits_labels(logits, labels)
    q = torch.as_tensor(prior, dtype=torch.float32)
    mean_pred = F.softmax(logits / temperature - torch.log(q), dim=1).mean(dim=0)
    freq = torch.bincount(labels, minlength=logits.shape[1]).float() / len(labels)
    return (mean_pred - freq).abs().max().item()


def rank_correlation(a, b) -> float:
    """Spearman rank correlation of two 1-D sequences (e.g. true vs estimated prior).

    Used in chapter 2 to score how well the estimated prior ranks the classes.

    Args:
        a: the first sequence (flattened), at least 2 values.
        b: the second sequence, of the same length as ``a``.

    Returns:
        Spearman's rho, a float in [-1, 1].
    """
    a = np.asarray(torch.as_tensor(a, dtype=torch.float64).flatten())
    b = np.asarray(torch.as_tensor(b, dtype=torch.float64).flatten())
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two sequences of the same length >= 2, got {a.size} and {b.size}.")
    return float(spearmanr(a, b).statistic)
