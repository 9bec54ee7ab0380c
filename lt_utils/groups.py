"""Class groups: the one home of the Many / Medium / Few split, by downstream data (D-groups) and by the
pre-training prior (P-groups).

- D-groups (OLTR's convention, used by LIFT and the paper): D-Many has more than ``D_MANY_ABOVE`` = 100
  training images, D-Few fewer than ``D_FEW_BELOW`` = 20, D-Medium the rest (20..100).
- P-groups: equal-size terciles of the classes ranked by a prior (largest first; ties keep class order). When
  the class count is not a multiple of 3 the remainder goes to the head: 100 classes -> 34 / 33 / 33
  (``tercile_sizes``). GLA's code gives it to the tail; the paper's own rule is unknown.

Groups are LongTensors with one index per class: 0 = Many, 1 = Medium, 2 = Few.
"""
from __future__ import annotations

import torch

GROUP_NAMES = ("Many", "Medium", "Few")
D_MANY_ABOVE = 100  # D-Many: more than 100 training images
D_FEW_BELOW = 20  # D-Few: fewer than 20; D-Medium: 20..100


def as_class_vector(values, what: str) -> torch.Tensor:
    """``values`` as a float64 CPU vector with one finite, non-negative entry per class (else ValueError)."""
    v = torch.as_tensor(values).detach().cpu().to(torch.float64)
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence with one value per class, got shape "
                         f"{tuple(v.shape)}.")
    if not torch.isfinite(v).all() or (v < 0).any():
        raise ValueError(f"{what} must be finite and non-negative.")
    return v


def data_groups(class_counts, reference=None) -> torch.Tensor:
    """D-groups per class: 0 = Many (> 100 training images), 1 = Medium (20..100), 2 = Few (< 20).

    Taught in chapter 1.

    Args:
        class_counts: training images per class.
        reference: counts that define the groups instead of ``class_counts`` (same length). The peers report
            CIFAR-100-LT at IR 10 and 50 with the IR-100 grouping (35 / 35 / 30 classes), since at IR 10 no class
            has fewer than 20 images: ``lt.data.cifar100_lt_groups()``.

    Returns:
        LongTensor of 0/1/2, one per class.
    """
    counts = as_class_vector(class_counts, "class_counts")
    if reference is not None:
        ref = as_class_vector(reference, "reference")
        if len(ref) != len(counts):
            raise ValueError(f"reference has {len(ref)} classes but class_counts has {len(counts)}.")
        counts = ref
    groups = torch.ones(len(counts), dtype=torch.long)
    groups[counts > D_MANY_ABOVE] = 0
    groups[counts < D_FEW_BELOW] = 2
    return groups


def rank_groups(values, sizes) -> torch.Tensor:
    """Groups 0, 1, ... by rank of ``values`` (largest first; ties: lower class index first), group g holding
    ``sizes[g]`` classes."""
    values = torch.as_tensor(values)
    if sum(sizes) != len(values):
        raise ValueError(f"Group sizes {tuple(sizes)} must add up to the number of classes ({len(values)}).")
    order = torch.sort(values, descending=True, stable=True).indices
    groups = torch.empty(len(values), dtype=torch.long)
    groups[order] = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    return groups


def tercile_sizes(num_classes: int) -> tuple[int, int, int]:
    """Classes per P-group: equal thirds, the remainder to the head (100 -> (34, 33, 33))."""
    base, extra = divmod(int(num_classes), 3)
    return tuple(base + (g < extra) for g in range(3))


def prior_groups(prior) -> torch.Tensor:
    """P-groups per class: 0 = P-Many, 1 = P-Medium, 2 = P-Few, by terciles of the sorted ``prior``.

    Taught in chapter 2.

    Args:
        prior: one non-negative value per class (an estimated or a true pre-training prior).

    Returns:
        LongTensor of 0/1/2, one per class; the classes ranked by decreasing prior (ties keep class order) are
        cut into ``tercile_sizes(C)`` (100 classes -> 34 / 33 / 33).
    """
    p = as_class_vector(prior, "prior")
    if len(p) < 3:
        raise ValueError(f"prior_groups needs at least 3 classes to form terciles, got {len(p)}.")
    return rank_groups(p, tercile_sizes(len(p)))
