"""The book's figures, in one shared style (``set_style()``).  Every function draws on ``ax`` (a new figure when
None), returns the axes and never calls ``plt.show()``.  Accuracies are in percent, as ``lt_utils.metrics``
returns them."""
from __future__ import annotations

import math
import textwrap
import warnings

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from .groups import D_FEW_BELOW, D_MANY_ABOVE, GROUP_NAMES, data_groups
from .prior import rank_correlation

GROUP_COLORS = ("#4C72B0", "#DD8452", "#C44E52")  # Many, Medium, Few: the same in every figure
D_THRESHOLDS = (D_FEW_BELOW, D_MANY_ABOVE)  # the lines drawn on a long-tail plot


def set_style() -> None:
    """The one style of the book: seaborn whitegrid, notebook context, the colour-blind palette.

    Called at the top of every chapter.

    Returns:
        None."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind",
                  rc={"figure.dpi": 100, "savefig.dpi": 150, "axes.titlesize": "medium", "figure.autolayout": True})


def _axes(ax, figsize=(6, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _numpy(x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _group_legend(ax, group_names, used) -> None:
    handles = [plt.Rectangle((0, 0), 1, 1, color=GROUP_COLORS[g]) for g in sorted(used)]
    ax.legend(handles, [group_names[g] for g in sorted(used)], title="group", loc="upper right")


def plot_long_tail(class_counts, ax=None, log: bool = True, groups=None, thresholds=D_THRESHOLDS,
                   group_names=GROUP_NAMES, title: str | None = None):
    """Class counts sorted from head to tail as bars (log y by default), coloured by group.

    Taught in chapter 1.

    Args:
        class_counts: the training images per class, a 1-D sequence.
        ax: the matplotlib axes to draw on (a new figure when None).
        log: whether to use a log y axis.
        groups: one group index per class (default: ``lt.data_groups(class_counts)``).
        thresholds: counts drawn as dashed lines (default: the data-group boundaries); None for none.
        group_names: the legend's name of each group.
        title: the axes' title, if any.

    Returns:
        The axes."""
    ax = _axes(ax, (7, 3.5))
    counts = _numpy(class_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D sequence, got shape {counts.shape}.")
    if groups is None:
        groups = data_groups(counts)
    groups = _numpy(groups, np.int64)
    if groups.shape != counts.shape:
        raise ValueError(f"groups needs one entry per class ({counts.size}), got {groups.size}.")
    order = np.argsort(-counts, kind="stable")
    ax.bar(np.arange(counts.size), counts[order], width=1.0, linewidth=0,
           color=[GROUP_COLORS[g] for g in groups[order]])
    for threshold in thresholds or ():
        ax.axhline(threshold, color="0.3", linestyle="--", linewidth=1)
    if log and (counts > 0).any():
        ax.set_yscale("log")
    ax.set_xlim(-0.5, counts.size - 0.5)
    ax.set_xlabel("class (sorted by count)")
    ax.set_ylabel("training images")
    if title:
        ax.set_title(title)
    _group_legend(ax, group_names, set(groups.tolist()))
    return ax


def plot_group_bars(results: dict, group_names=GROUP_NAMES, ax=None, ylabel: str = "accuracy (%)",
                    title: str | None = None, annotate: bool = False):
    """Grouped bars: one cluster per group, one bar per method.

    A method given seeds x 3 values gets the mean as its bar and the standard deviation over seeds as its error
    bar.  Used in chapters 1-4.

    Args:
        results: method name -> 3 group values, or seeds x 3 values.
        group_names: the groups' names, one cluster each.
        ax: the matplotlib axes to draw on (a new figure when None).
        ylabel: the y axis label.
        title: the axes' title, if any.
        annotate: whether to write each bar's value above it.

    Returns:
        The axes."""
    ax = _axes(ax, (7, 3.5))
    if not results:
        raise ValueError("results is empty: pass {method name: [3 group accuracies] or [seeds x 3]}.")
    num_groups, num_methods = len(group_names), len(results)
    width = 0.8 / num_methods
    x = np.arange(num_groups)
    palette = sns.color_palette(n_colors=num_methods)
    for i, (name, values) in enumerate(results.items()):
        values = _numpy(values)
        if values.ndim == 1:
            values = values[None]
        if values.ndim != 2 or values.shape[1] != num_groups:
            raise ValueError(f"results[{name!r}] must hold {num_groups} values or seeds x {num_groups}, "
                             f"got shape {values.shape}.")
        mean, spread = values[0], None
        if len(values) > 1:
            with warnings.catch_warnings():  # an all-NaN column is a NaN bar, no need to shout
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, spread = np.nanmean(values, axis=0), np.nanstd(values, axis=0, ddof=1)
        bars = ax.bar(x + (i - (num_methods - 1) / 2) * width, mean, width, yerr=spread, capsize=3,
                      label=name if len(values) == 1 else f"{name} (n={len(values)})", color=palette[i])
        if annotate:
            ax.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=2)
    ax.set_xticks(x, group_names)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def plot_group_matrix(matrix, ax=None, title: str | None = None, row_label: str = "D-group",
                      col_label: str = "P-group", vmin=None, vmax=None, annotate: bool = True, counts=None,
                      group_names=GROUP_NAMES, cmap: str = "viridis", fmt: str = ".1f", center=None,
                      colorbar_label: str = "accuracy (%)"):
    """The 3x3 (D-group x P-group) accuracy heatmap with the numbers written in the cells.

    NaN cells (no class) are left blank.  Used in chapters 2 and 4.

    Args:
        matrix: the matrix to draw (rows: D-groups, columns: P-groups), e.g. ``accuracy_report(...)["matrix"]``.
        ax: the matplotlib axes to draw on (a new figure when None).
        title: the axes' title, if any.
        row_label: the rows' axis label (its first letter prefixes the row names, e.g. ``D-Many``).
        col_label: the columns' axis label (its first letter prefixes the column names).
        vmin: the lower end of the colour scale (default: from the data).
        vmax: the upper end of the colour scale (default: from the data).
        annotate: whether to write the numbers in the cells.
        counts: the number of classes per cell (same shape), added to each label.
        group_names: the groups' names.
        cmap: the colour map.
        fmt: the format of the numbers in the cells.
        center: the value at the colour map's centre (e.g. 0 with a diverging ``cmap``: a matrix of differences).
        colorbar_label: the colour bar's label.

    Returns:
        The axes."""
    ax = _axes(ax, (4.5, 3.8))
    values = _numpy(matrix)
    if values.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {values.shape}.")
    annot = annotate
    if annotate:
        n = None if counts is None else _numpy(counts, np.int64)
        if n is not None and n.shape != values.shape:
            raise ValueError(f"counts must have the matrix's shape {values.shape}, got {n.shape}.")
        annot = np.array([["" if np.isnan(v) else format(v, fmt) + ("" if n is None else f"\n({n[i, j]})")
                           for j, v in enumerate(row)] for i, row in enumerate(values)])
    if np.isnan(values).all() and vmin is None and vmax is None:  # nothing to scale the colours by
        vmin, vmax = 0.0, 100.0
    rows = [f"{row_label[0]}-{g}" for g in group_names][:values.shape[0]]
    cols = [f"{col_label[0]}-{g}" for g in group_names][:values.shape[1]]
    sns.heatmap(values, ax=ax, annot=annot, fmt="", cmap=cmap, vmin=vmin, vmax=vmax, mask=np.isnan(values),
                center=center, xticklabels=cols, yticklabels=rows, cbar_kws={"label": colorbar_label},
                linewidths=0.5)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.tick_params(axis="y", rotation=0)
    ax.grid(False)  # the style's grid would show through blank (NaN) cells
    if title:
        ax.set_title(title)
    return ax


def plot_prior_scatter(true_prior, est_prior, ax=None, groups=None, group_names=GROUP_NAMES,
                       title: str | None = None):
    """Estimated vs true prior per class on log-log axes with the identity line.

    The Spearman rank correlation is in the title.  Both priors are normalised to sum to 1 first.  Used in
    chapter 2.

    Args:
        true_prior: the true prior, one positive entry per class.
        est_prior: the estimated prior, one positive entry per class.
        ax: the matplotlib axes to draw on (a new figure when None).
        groups: one group index per class to colour the dots by, or None.
        group_names: the legend's name of each group.
        title: a title line above the Spearman rank correlation, if any.

    Returns:
        The axes."""
    ax = _axes(ax, (4.5, 4.5))
    true_p, est_p = _numpy(true_prior), _numpy(est_prior)
    if true_p.shape != est_p.shape or true_p.ndim != 1:
        raise ValueError(f"true and estimated prior need the same 1-D shape, got {true_p.shape} and {est_p.shape}.")
    if (true_p <= 0).any() or (est_p <= 0).any():
        raise ValueError("priors must be positive for a log-log plot.")
    true_p, est_p = true_p / true_p.sum(), est_p / est_p.sum()
    rho = rank_correlation(true_p, est_p)
    if groups is None:
        ax.scatter(true_p, est_p, s=14, alpha=0.8)
    else:
        groups = _numpy(groups, np.int64)
        for g in sorted(set(groups.tolist())):
            ax.scatter(true_p[groups == g], est_p[groups == g], s=14, alpha=0.8, color=GROUP_COLORS[g],
                       label=group_names[g])
        ax.legend(fontsize="small")
    lo, hi = min(true_p.min(), est_p.min()) / 1.5, max(true_p.max(), est_p.max()) * 1.5
    ax.plot([lo, hi], [lo, hi], color="0.4", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("true prior")
    ax.set_ylabel("estimated prior")
    ax.set_title((title + "\n" if title else "") + f"Spearman $\\rho$ = {rho:.3f}")
    return ax


def plot_per_class_vs_prior(per_class_acc, prior, ax=None, groups=None, group_names=GROUP_NAMES,
                            xlabel: str = "prior", title: str | None = None, bins: int = 10):
    """Per-class accuracy (%) against a prior (log x), one dot per class.

    The mean accuracy in ``bins`` equal-size bins of the prior is drawn as a line (with at least 2 x ``bins``
    classes); the Spearman rank correlation is in the title.  NaN accuracies (and classes with a prior <= 0) are
    skipped.  For the exercises of chapter 2.

    Args:
        per_class_acc: the accuracy (%) of each class.
        prior: a prior, one entry per class.
        ax: the matplotlib axes to draw on (a new figure when None).
        groups: one group index per class to colour the dots by, or None.
        group_names: the legend's name of each group.
        xlabel: the x axis label.
        title: a title line above the Spearman rank correlation, if any.
        bins: the number of bins of the trend line.

    Returns:
        The axes."""
    ax = _axes(ax, (6, 4))
    acc, p = _numpy(per_class_acc), _numpy(prior)
    if acc.shape != p.shape or acc.ndim != 1:
        raise ValueError(f"per_class_acc and prior need the same 1-D shape, got {acc.shape} and {p.shape}.")
    keep = np.isfinite(acc) & (p > 0)
    if groups is None:
        ax.scatter(p[keep], acc[keep], s=14, alpha=0.7)
    else:
        groups = _numpy(groups, np.int64)
        for g in sorted(set(groups[keep].tolist())):
            sel = keep & (groups == g)
            ax.scatter(p[sel], acc[sel], s=14, alpha=0.7, color=GROUP_COLORS[g], label=group_names[g])
    if keep.sum() >= 2 * bins:  # binned trend: equal numbers of classes per bin
        order = np.argsort(p[keep])
        chunks = np.array_split(order, bins)
        ax.plot([np.exp(np.log(p[keep][c]).mean()) for c in chunks], [acc[keep][c].mean() for c in chunks],
                color="0.2", marker="o", markersize=3, linewidth=1.5, label="binned mean")
    if groups is not None or keep.sum() >= 2 * bins:
        ax.legend(fontsize="small")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("per-class accuracy (%)")
    rho = rank_correlation(p[keep], acc[keep]) if keep.sum() >= 2 else float("nan")
    ax.set_title((title + "\n" if title else "") + f"Spearman $\\rho$ = {rho:.3f}")
    return ax


def show_images(images, labels=None, classnames=None, nrow: int = 8, ax=None, mean=None, std=None,
                max_images: int = 64, min_cell: int = 64, pad: int = 2):
    """A grid of images with optional captions (``classnames[label]`` or the label).

    Small images are enlarged by an integer factor with nearest-neighbour pixels (to >= ``min_cell`` px) so
    16-24 px glyphs stay crisp.  Used in chapters 1 and 4.

    Args:
        images: N x C x H x W uint8, or float: in [0, 1], or normalised when ``mean``/``std`` are given; C = 1 or 3.
        labels: one class index per image for the captions, or None.
        classnames: the class names to caption with (default: the label itself).
        nrow: the number of images per row.
        ax: the matplotlib axes to draw on (a new figure when None).
        mean: the per-channel mean that normalised float images.
        std: the per-channel standard deviation that normalised float images.
        max_images: only the first ``max_images`` images are shown.
        min_cell: the minimum size of a cell in pixels.
        pad: the padding between cells in pixels.

    Returns:
        The axes."""
    x = torch.as_tensor(images).detach().cpu()
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise ValueError(f"images must be N x C x H x W with C = 1 or 3 (N > 0), got {tuple(x.shape)}.")
    x = x[:max_images]
    if x.dtype == torch.uint8:
        x = x.float() / 255
    else:
        x = x.float()
        if mean is not None and std is not None:
            x = x * torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1) \
                + torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    x = x.clamp(0, 1).expand(-1, 3, -1, -1)
    n, _, h, w = x.shape
    scale = max(1, math.ceil(min_cell / max(h, w)))
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)  # nearest-neighbour upscaling
    h, w = h * scale, w * scale
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    grid = torch.ones(3, nrows * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = x[i]
    ax = _axes(ax, (1.2 * ncol, 1.35 * nrows))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if labels is not None:
        labels = _numpy(labels, np.int64)[:n]
        for i, label in enumerate(labels):
            r, c = divmod(i, ncol)
            text = classnames[label] if classnames is not None else str(label)
            ax.text(pad + c * (w + pad) + w / 2, pad + r * (h + pad) + h - 1, text, ha="center", va="bottom",
                    fontsize="x-small", color="white", bbox=dict(facecolor="black", alpha=0.5, pad=1, linewidth=0))
    return ax


def show_markdown(text: str) -> None:
    """Show ``text`` below the cell as Markdown: the prose about the numbers a chapter's run computed.

    Used in chapters 1-5 for their "What this run shows" paragraphs: a code cell tagged ``remove-input`` (Colab:
    a collapsed form cell) formats the sentences from the variables the cells above computed and shows them with
    this. The book renders the ``text/markdown`` output as its own prose (math included), Colab and Jupyter show the
    same text, so the numbers and the wording follow the profile that ran. Outside IPython the text is printed.

    Args:
        text: Markdown (math as ``$...$``); its common indentation and surrounding blank lines are removed, so a
            triple-quoted f-string may be indented like the code around it.

    Returns:
        None: the text is displayed, not returned (a returned string would be shown a second time as the cell's
        value)."""
    text = textwrap.dedent(text).strip()
    try:
        from IPython import get_ipython  # optional: IPython comes with Jupyter and Colab only
        from IPython.display import Markdown, display  # optional: IPython comes with Jupyter and Colab only
    except ImportError:
        get_ipython = None
    if get_ipython is None or get_ipython() is None:  # a plain Python process: no rich display
        print(text)
        return
    display(Markdown(text))


def plot_causal_graph(ax=None):
    """The paper's causal graph: D -> C, C -> X, C -> Y (the backdoor path X <- C -> Y), X -> B -> Y.

    Used in chapter 4.

    Args:
        ax: the matplotlib axes to draw on (a new figure when None).

    Returns:
        The axes."""
    ax = _axes(ax, (6.5, 2.6))
    nodes = {"D": (0.0, 1.0), "C": (1.2, 1.0), "X": (2.4, 0.0), "B": (3.6, 0.0), "Y": (4.8, 1.0)}
    names = {"D": "parameter\nimbalance", "C": "incomplete\nsemantic factor", "X": "input", "B": "representation",
             "Y": "label"}
    edges = [("D", "C", "0.3"), ("C", "X", "0.3"), ("C", "Y", "#C44E52"), ("X", "B", "0.3"), ("B", "Y", "0.3")]
    for a, b, color in edges:
        ax.annotate("", xy=nodes[b], xytext=nodes[a],
                    arrowprops=dict(arrowstyle="-|>", color=color, lw=1.8, shrinkA=17, shrinkB=17,
                                    connectionstyle="arc3,rad=-0.15" if (a, b) == ("C", "Y") else "arc3"))
    for key, (x, y) in nodes.items():
        ax.scatter([x], [y], s=900, color="white", edgecolor="0.2", zorder=3)
        ax.text(x, y, key, ha="center", va="center", fontsize=13, zorder=4)
        ax.text(x, y - 0.42 if y <= 0.5 else y + 0.38, names[key], ha="center", va="center", fontsize=8)
    ax.text(3.3, 0.72, "backdoor path\nX <- C -> Y (red)", ha="center", fontsize=8, color="#C44E52")
    ax.set_xlim(-0.6, 5.4)
    ax.set_ylim(-0.8, 1.7)
    ax.set_axis_off()
    return ax


def show_cams(images, cams, axes, alpha: float = 0.5, mean=None, std=None):
    """Overlay Grad-CAM maps on the images, one image per axes.

    Used in chapter 4.

    Args:
        images: N x 3 x H x W, uint8 or float (in [0, 1], or normalised when ``mean``/``std`` are given).
        cams: the maps, N x h x w in [0, 1] (e.g. from ``lt.grad_cam``), upsampled to the images' size.
        axes: the matplotlib axes to draw on (any array shape), at least one per image.
        alpha: the opacity of the maps.
        mean: the per-channel mean that normalised float images.
        std: the per-channel standard deviation that normalised float images.

    Returns:
        ``axes``, as given."""
    x = torch.as_tensor(images).detach().cpu()
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    if mean is not None and std is not None:
        x = x * torch.as_tensor(std).view(1, -1, 1, 1) + torch.as_tensor(mean).view(1, -1, 1, 1)
    cams = torch.as_tensor(cams).detach().cpu().float()
    if len(cams) != len(x) or len(np.ravel(axes)) < len(x):
        raise ValueError(f"need one map and one axes per image: {len(x)} images, {len(cams)} maps, "
                         f"{len(np.ravel(axes))} axes.")
    upsampled = torch.nn.functional.interpolate(cams[:, None], size=x.shape[-2:], mode="bilinear",
                                                align_corners=False)[:, 0]
    for ax, image, cam in zip(np.ravel(axes), x, upsampled):
        ax.imshow(image.clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.imshow(cam.numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    return axes
