"""A solution to Exercise 3 of chapter 2 (book/02_parameter_imbalance.ipynb):
A long-tailed held-out set.

The zero-shot runs keep no logits on the training set, so the exercise imitates it: it
draws from the balanced test split a subset whose label frequencies f follow the
training counts. GLA's estimator then finds the q that best explains labels drawn with
frequencies f, which is P_P / f (normalised), not P_P.
"""
import torch


def long_tailed_subset(labels, class_counts, seed=0):
    """Indices of a subset of a balanced split, long-tailed like the training set.

    With k the split's smallest number of images per class, class c keeps
    max(1, round(k * n_c / max(n))) of its images, drawn at random (seeded), so
    the subset's label frequencies follow the training counts n_c.

    Args:
        labels: (N,) integer tensor, the balanced split's labels.
        class_counts: (C,) tensor, training images per class n_c.
        seed: the seed of the random draw.

    Returns:
        (M,) long tensor of the kept indices, sorted.
    """
    labels = torch.as_tensor(labels).long()
    counts = torch.as_tensor(class_counts).float()
    k = int(torch.bincount(labels, minlength=len(counts)).min())
    # images to keep per class: proportional to the training counts, at least one
    keep = (k * counts / counts.max()).round().clamp(min=1).long()
    # a seeded random order of the split, then the first keep[c] images of each class
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    chosen = [order[labels[order] == c][:n] for c, n in enumerate(keep.tolist())]
    return torch.cat(chosen).sort().values
