"""A solution to Exercise 1 of chapter 5 (book/05_beyond_the_paper.ipynb):
Exact tests of a paired difference over fine-tuning seeds.

For each seed s, d_s = A_s - B_s compares two methods on the same fine-tuning seed. Two
exact tests of "A and B are equally good" need no normal approximation, which a handful
of seeds could not support:

- the sign test: without a difference, each non-tied d_s is positive with probability
  1/2, so the number of wins is Binomial(n, 1/2);
- the sign-flip (permutation) test: without a difference, d_s and -d_s are equally
  likely, so each of the 2^n sign patterns of d is equally likely; the p-value is the
  share of them whose mean lies at least as far from 0 as the observed mean.

With n seeds neither p-value can go below 2 / 2^n (0.25 for three seeds): more seeds,
not a cleverer test, are what a claim needs.
"""
import itertools
import math

import numpy as np


def paired_test(results, a, b, col="overall", source="estimated"):
    """The paired difference A - B over seeds, with an exact sign test and sign-flip test.

    Args:
        results: the DataFrame of `lt.headline_comparison` (columns "seed", "method",
            "P-groups from" and the accuracies).
        a, b: two method names of `results`.
        col: the column compared (e.g. "overall", "P-Few").
        source: the "P-groups from" of the rows used ("estimated", "true", ...).

    Returns:
        A dict: "mean diff" (mean of d), "seeds" (n), "A wins" (seeds with d > 0),
        "p sign" (two-sided sign test, ties dropped) and "p flip" (two-sided
        sign-flip test).
    """
    rows = results[results["P-groups from"] == source]

    def by_seed(method):
        return rows[rows["method"] == method].set_index("seed")[col]

    # aligned by seed; a seed that lacks either method is left out
    d = (by_seed(a) - by_seed(b)).dropna().to_numpy(dtype=float)
    if len(d) == 0:
        raise ValueError(f"no seed has both {a!r} and {b!r} with P-groups from {source!r}.")
    n = len(d)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())

    # sign test: twice the probability of a split at least as uneven under Binomial(m, 1/2)
    m = wins + losses  # ties say nothing about the sign
    tail = sum(math.comb(m, i) for i in range(min(wins, losses) + 1)) / 2 ** m
    p_sign = min(1.0, 2 * tail)

    # sign-flip test: all 2^n patterns (exact; fine for the few seeds of a book)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    flipped = np.abs((signs * d).mean(axis=1))
    observed = abs(d.mean())
    p_flip = float((flipped >= observed - 1e-9).mean())  # 1e-9: rounding, not a real gap
    return {"mean diff": float(d.mean()), "seeds": n, "A wins": wins,
            "p sign": p_sign, "p flip": p_flip}
