"""Training losses: plain cross-entropy and its prior-adjusted variants (logit adjustment, balanced softmax,
GLA-Train).  Each adjusted loss is ``CE(logits + offset, y)`` with a per-class ``offset`` built from log-priors, so
they share one validated helper.  Losses are computed in float32 even under autocast (AMP-safe).

Zero-count classes: ``log 0 = -inf`` would turn the loss into NaN/inf, so a prior entry of zero is clamped to
``PRIOR_EPS = 1e-12`` before the log (``log(1e-12) ~ -27.6``: that class's logit is pushed far down during training)
and a ``UserWarning`` names the classes.  Negative, NaN, infinite, all-zero or wrong-length priors are refused.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F

PRIOR_EPS = 1e-12  # clamp for log(prior): a zero-count class gets log(1e-12) instead of -inf
LOSS_NAMES = ("ce", "la", "gla_train", "bs")


def as_prior(prior, num_classes: int | None = None, name: str = "prior") -> torch.Tensor:
    """Validate counts or probabilities and return a float32 CPU distribution that sums to 1.

    Refuses (``ValueError``) a prior that is not 1-D, has the wrong length, contains NaN/inf or negative
    entries, or sums to zero.  Zeros are allowed here (they are clamped only when the log is taken).
    """
    p = torch.as_tensor(prior).detach().to("cpu", torch.float64)
    if p.ndim != 1 or p.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of class counts or probabilities, "
                         f"got shape {tuple(p.shape)}.")
    if num_classes is not None and p.numel() != num_classes:
        raise ValueError(f"{name} has {p.numel()} entries but there are {num_classes} classes (logits' width); "
                         f"pass one count or probability per class, in class-index order.")
    if not torch.isfinite(p).all():
        raise ValueError(f"{name} contains NaN or inf entries (classes {_where(~torch.isfinite(p))}); "
                         f"fix the counts or the prior estimate.")
    if (p < 0).any():
        raise ValueError(f"{name} has negative entries (classes {_where(p < 0)}); counts and probabilities "
                         f"must be >= 0.")
    if p.sum() <= 0:
        raise ValueError(f"{name} sums to zero; it needs at least one positive count or probability.")
    return (p / p.sum()).float()


def log_prior(prior, num_classes: int | None = None, name: str = "prior", eps: float = PRIOR_EPS) -> torch.Tensor:
    """``log(max(p, eps))`` of the normalised prior (float32, CPU); warns when a class has zero mass."""
    p = as_prior(prior, num_classes, name)
    if (p < eps).any():
        warnings.warn(f"{name} is zero for classes {_where(p < eps)}; using log({eps:g}) for them instead of "
                      f"-inf (their logits are pushed down by {-torch.log(torch.tensor(eps)).item():.1f}).",
                      stacklevel=3)
    return torch.log(p.clamp_min(eps))


def _where(mask: torch.Tensor, limit: int = 10) -> str:
    idx = torch.nonzero(mask).flatten().tolist()
    return str(idx[:limit])[:-1] + (", ...]" if len(idx) > limit else "]")


def _check_logits(logits: torch.Tensor, targets: torch.Tensor) -> None:
    # shape checks only: they never sync with the GPU
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, num_classes), got shape {tuple(logits.shape)}.")
    if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"targets must be a 1-D tensor of {logits.shape[0]} class indices, "
                         f"got shape {tuple(targets.shape)}.")


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy, computed in float32.

    The plain fine-tuning loss (``"ce"``), the baseline that the adjusted losses are compared with; taught in
    chapter 1.

    Args:
        logits: the model's outputs, a (batch, num_classes) tensor.
        targets: the true class indices, a 1-D tensor with one entry per row of ``logits``.

    Returns:
        The mean cross-entropy over the batch, a float32 scalar tensor.
    """
    _check_logits(logits, targets)
    return F.cross_entropy(logits.float(), targets)


def adjusted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``CE(logits + offset, y)`` with a per-class ``offset`` (length C), computed in float32."""
    _check_logits(logits, targets)
    if offset.shape != (logits.shape[1],):
        raise ValueError(f"offset must have one entry per class ({logits.shape[1]}), got {tuple(offset.shape)}.")
    return F.cross_entropy(logits.float() + offset.to(logits.device, torch.float32), targets)


def logit_adjusted_loss(logits, targets, class_prior, tau: float = 1.0) -> torch.Tensor:
    """Logit-adjusted loss (Menon et al. 2021): ``CE(logits + tau * log P_D, y)``.

    Only training is adjusted: at test time one predicts with the raw logits.  Taught in chapter 1.

    Args:
        logits: the model's outputs, a (batch, num_classes) tensor.
        targets: the true class indices, a 1-D tensor with one entry per row of ``logits``.
        class_prior: the training set's class counts or probabilities P_D, one per class (normalised here).
        tau: the scale of the log-prior offset ``tau * log P_D``.

    Returns:
        The mean adjusted cross-entropy over the batch, a float32 scalar tensor.
    """
    offset = tau * log_prior(class_prior, logits.shape[-1], "class_prior")
    return adjusted_cross_entropy(logits, targets, offset)


def balanced_softmax_loss(logits, targets, class_counts) -> torch.Tensor:
    """Balanced softmax (Ren et al. 2020): ``CE(logits + log n_y, y)``.

    Using counts or their normalised frequencies gives the same loss (softmax ignores a constant shift); it
    equals ``logit_adjusted_loss`` with ``tau=1``.
    """
    return adjusted_cross_entropy(logits, targets, log_prior(class_counts, logits.shape[-1], "class_counts"))


def gla_train_loss(logits, targets, data_prior, pretrain_prior, tau: float = 1.0) -> torch.Tensor:
    """GLA-Train (the paper's Tab. 3): ``CE(logits + tau * log P_D + log P^_P, y)``.

    Used in chapter 3 and its exercises.

    Args:
        logits: the model's outputs, a (batch, num_classes) tensor.
        targets: the true class indices, a 1-D tensor with one entry per row of ``logits``.
        data_prior: the downstream label prior P_D (counts or probabilities), one entry per class.
        pretrain_prior: the estimated pre-training prior P^_P (``lt.estimate_prior``), one entry per class.
        tau: the scale of the ``log P_D`` term (the ``log P^_P`` term is not scaled).

    Returns:
        The mean adjusted cross-entropy over the batch, a float32 scalar tensor.
    """
    num_classes = logits.shape[-1]
    offset = tau * log_prior(data_prior, num_classes, "data_prior") \
        + log_prior(pretrain_prior, num_classes, "pretrain_prior")
    return adjusted_cross_entropy(logits, targets, offset)


class AdjustedLoss:
    """A loss callable ``loss(logits, targets)`` = ``CE(logits + offset, y)`` whose offset was validated once
    (no checks and no host syncs in the training loop).  Made by ``make_loss``."""

    def __init__(self, name: str, offset: torch.Tensor | None):
        self.name = name
        self.offset = offset  # None for plain CE
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.offset is None:
            return cross_entropy_loss(logits, targets)
        offset = self._on_device.get(logits.device)
        if offset is None:
            offset = self._on_device[logits.device] = self.offset.to(logits.device)
        return adjusted_cross_entropy(logits, targets, offset)

    def __repr__(self) -> str:
        return f"AdjustedLoss({self.name!r}, classes={None if self.offset is None else len(self.offset)})"


def make_loss(name: str, data_prior=None, pretrain_prior=None, tau: float = 1.0) -> Callable:
    """The training loss by name: ``"ce"`` | ``"la"`` (needs ``data_prior``) | ``"bs"`` (needs ``data_prior``,
    the class counts) | ``"gla_train"`` (needs ``data_prior`` and ``pretrain_prior``).

    Returns a callable ``loss(logits, targets)``; the priors are validated and logged once here.
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(map(repr, LOSS_NAMES))}.")
    needs = {"ce": (), "la": ("data_prior",), "bs": ("data_prior",), "gla_train": ("data_prior", "pretrain_prior")}
    given = {"data_prior": data_prior, "pretrain_prior": pretrain_prior}
    for arg in needs[name]:
        if given[arg] is None:
            raise ValueError(f"Loss {name!r} needs {arg}= (" + (
                "the downstream class counts or label prior P_D" if arg == "data_prior"
                else "the estimated pre-training prior P^_P, e.g. from lt.estimate_prior") + ").")
    if name == "ce":
        offset = None
    elif name == "la":
        offset = tau * log_prior(data_prior, name="data_prior")
    elif name == "bs":
        offset = log_prior(data_prior, name="data_prior")
    else:
        log_data = log_prior(data_prior, name="data_prior")
        offset = tau * log_data + log_prior(pretrain_prior, len(log_data), name="pretrain_prior")
    return AdjustedLoss(name, offset)
