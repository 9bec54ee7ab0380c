"""Input checks shared by the layers above: NaN and inf are errors, never predictions."""
from __future__ import annotations

import torch


def check_finite(x: torch.Tensor, name: str) -> None:
    """A ValueError naming ``name``, the count and the first row when float ``x`` (rows = samples) holds NaN or
    inf: a NaN row's argmax is a fixed class, which would count as a prediction. One ``isfinite`` pass when all
    is well."""
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).reshape(len(x), -1).any(dim=1).nonzero().flatten()
        raise ValueError(f"{name} hold NaN or inf in {len(bad)} of {len(x)} rows (first: row {bad[0].item()}). "
                         "NaN is not a prediction: find where it comes from (a diverged run, a log of 0) and fix it.")
