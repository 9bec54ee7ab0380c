"""A solution to Exercise 1 of chapter 2 (book/02_parameter_imbalance.ipynb):
The D x P matrix by hand.

The paper's 3x3 matrix crosses the D-groups (downstream counts) with the P-groups
(pre-training prior): each cell is the mean per-class test accuracy of the classes that
fall in it. The chapter's figures read it from `lt.accuracy_report(...)["matrix"]`; here
it is built from the predictions alone.
"""
import torch


def group_matrix_by_hand(logits, labels, d_groups, p_groups):
    """The 3x3 D-group x P-group matrix of mean per-class accuracy, by hand.

    First the accuracy (%) of each class on its own test images; then, for every
    cell (d, p), the mean over the classes with D-group d and P-group p (rows:
    D-Many/Medium/Few, columns: P-Many/Medium/Few); NaN for a cell with no class.

    Args:
        logits: (N, C) float tensor, a run's test logits (argmax = prediction).
        labels: (N,) integer tensor, the true classes.
        d_groups: (C,) integer tensor, D-group 0/1/2 per class (`d_groups`).
        p_groups: (C,) integer tensor, P-group 0/1/2 per class (`p_groups[m]`).

    Returns:
        (3, 3) float tensor of accuracies in percent.
    """
    logits = torch.as_tensor(logits)
    preds = logits.argmax(dim=1)
    labels = torch.as_tensor(labels).long()
    d_groups, p_groups = torch.as_tensor(d_groups), torch.as_tensor(p_groups)
    # accuracy of each class on its own images (NaN for a class without test images)
    right = (preds == labels).float()
    per_class = torch.stack([100 * right[labels == c].mean()
                             for c in range(logits.shape[1])])
    matrix = torch.full((3, 3), float("nan"))
    for d in range(3):
        for p in range(3):
            cell = (d_groups == d) & (p_groups == p)
            if cell.any():  # an empty cell stays NaN
                matrix[d, p] = per_class[cell].nanmean()
    return matrix
