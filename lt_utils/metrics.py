"""Evaluation: one forward pass that returns logits *and* features, per-class / group accuracies, the 3x3
D-group x P-group matrix, and the weighted kNN probe on features.

All accuracies are in percent (0-100), as the paper reports them.  A class without test samples has accuracy
NaN; group means ignore such classes, and a group without any class is NaN.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .augment import preprocessing
from .checks import check_finite
from .groups import GROUP_NAMES
from .phases import phase
from .profiles import hide_progress


# ----------------------------------------------------------------------------------------------- forward pass
def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _logits_and_features(model, x, with_features: bool):
    """One pass when the model offers ``forward_with_features``; else ``features(x)`` then ``head`` on them;
    else (no head) a second call ``model(x)``; a model without ``features`` gives logits only."""
    if not with_features:
        return model(x), None
    if hasattr(model, "forward_with_features"):
        return model.forward_with_features(x)
    if hasattr(model, "features"):
        features = model.features(x)
        head = getattr(model, "head", None)
        logits = head(features) if head is not None else model(x)
        return logits, features
    return model(x), None


def _views_mean(model, x, with_features: bool):
    """Logits and features of a batch; a 5-D batch (views x B x C x H x W, e.g. five-crop test-time ensembling)
    is run as one batch and its outputs averaged over the views."""
    if x.dim() != 5:
        return _logits_and_features(model, x, with_features)
    views = x.shape[0]
    logits, features = _logits_and_features(model, x.flatten(0, 1), with_features)
    logits = logits.unflatten(0, (views, -1)).float().mean(0)
    if features is not None:
        features = features.unflatten(0, (views, -1)).float().mean(0)
    return logits, features


@phase("evaluation")
def predict(model: torch.nn.Module, dataset, device=None, batch_size: int = 256, transform=None,
            progress: bool = True, with_features: bool = True, amp: bool | None = None,
            num_workers: int = 0) -> dict:
    """Logits, features and labels of ``model`` on ``dataset`` (CPU float32 tensors; ``features`` is None when
    the model has no ``features`` or ``with_features=False``).

    - In-memory datasets (with a uint8 ``.images`` tensor, e.g. the lab and CIFAR sets) are sliced directly:
      each uint8 batch goes to the device and ``transform`` runs there (default: resize to the model's
      ``image_size`` and normalise with its ``mean``/``std``, looked up on the model or its ``backbone``).
      Other datasets go through a DataLoader (their own transform applies; ``transform``, if given, then runs
      on the device batch). A transform that returns views x B x C x H x W (``TensorAugment(crops="five")``,
      LIFT's five-crop test-time ensembling) gets the model's logits and features averaged over the views.
    - Logits and features come from one pass: ``model.forward_with_features(x)`` if present, else
      ``model.features(x)`` followed by ``model.head(features)`` (a ``Classifier``); a model without ``head`` is
      called twice.
    - ``inference_mode``, autocast on CUDA (``amp=None``: on when the device is CUDA), one host copy per batch.
    The model is put in eval mode and its previous mode restored; it is moved to ``device`` if one is given.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    amp = (device.type == "cuda") if amp is None else amp
    images = getattr(dataset, "images", None)
    in_memory = isinstance(images, torch.Tensor)
    if in_memory:
        if len(images) == 0:
            raise ValueError("The dataset is empty.")
        if transform is None and images.dtype == torch.uint8:
            transform = preprocessing(model, train=False)
        batches = ((images[i:i + batch_size], None) for i in range(0, len(images), batch_size))
        num_batches = -(-len(images) // batch_size)
    else:
        if len(dataset) == 0:
            raise ValueError("The dataset is empty.")
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                             num_workers=num_workers, pin_memory=device.type == "cuda")
        batches, num_batches = iter(loader), len(loader)

    was_training = model.training
    model.eval()
    autocast = torch.autocast(device_type="cuda") if amp and device.type == "cuda" else contextlib.nullcontext()
    all_logits, all_features, all_labels = [], [], []
    try:
        with torch.inference_mode(), autocast:
            for x, y in tqdm(batches, total=num_batches, desc="predict", disable=hide_progress(progress), leave=False):
                x = x.to(device, non_blocking=True)
                if transform is not None:
                    x = transform(x)
                logits, features = _views_mean(model, x, with_features)
                all_logits.append(logits.float().cpu())
                if features is not None:
                    all_features.append(features.float().cpu())
                if y is not None:
                    all_labels.append(torch.as_tensor(y))
    finally:
        model.train(was_training)
    if in_memory:
        labels = torch.as_tensor(dataset.targets).long().cpu()
    else:
        labels = torch.cat(all_labels).long()
    return dict(logits=torch.cat(all_logits), features=torch.cat(all_features) if all_features else None,
                labels=labels)


# ------------------------------------------------------------------------------------------------- accuracies
def _predictions(logits_or_preds, name: str = "logits_or_preds") -> torch.Tensor:
    x = torch.as_tensor(logits_or_preds)
    if x.ndim == 2:
        check_finite(x, name)
        return x.argmax(dim=1)
    if x.ndim == 1 and not x.dtype.is_floating_point:
        return x.long()
    raise ValueError(f"expected logits (N x C) or integer predictions (N), got shape {tuple(x.shape)} "
                     f"and dtype {x.dtype}.")


def per_class_accuracy(logits_or_preds, labels, num_classes: int | None = None) -> torch.Tensor:
    """Accuracy (%) of each class, a float tensor of length ``num_classes`` (default: the logits' width, else
    max label + 1); NaN for a class without samples.  Accepts logits/scores (argmaxed) or predictions; logits
    with NaN or inf are refused (ValueError)."""
    preds = _predictions(logits_or_preds).cpu()
    labels = torch.as_tensor(labels).long().cpu()
    if preds.shape != labels.shape:
        raise ValueError(f"{len(preds)} predictions but {len(labels)} labels.")
    if num_classes is None:
        x = torch.as_tensor(logits_or_preds)
        num_classes = x.shape[1] if x.ndim == 2 else int(labels.max()) + 1
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}].")
    total = torch.bincount(labels, minlength=num_classes).double()
    correct = torch.bincount(labels[preds == labels], minlength=num_classes).double()
    acc = 100.0 * correct / total  # 0/0 -> NaN for a class without samples
    return acc.float()


def accuracy(logits_or_preds, labels) -> float:
    """Overall top-1 accuracy (%) over samples (equals the mean per-class accuracy on a balanced test set).

    Used throughout the book: in every chapter and in the exercises.

    Args:
        logits_or_preds: logits/scores (N x C, argmaxed; NaN or inf is a ValueError) or integer predictions (N).
        labels: the true class indices (N).

    Returns:
        The accuracy in percent, a float in [0, 100].
    """
    preds = _predictions(logits_or_preds).cpu()
    labels = torch.as_tensor(labels).long().cpu()
    if preds.shape != labels.shape or len(labels) == 0:
        raise ValueError(f"need as many predictions as labels (> 0), got {len(preds)} and {len(labels)}.")
    return 100.0 * (preds == labels).double().mean().item()


def group_accuracy(per_class, groups, num_groups: int = 3) -> torch.Tensor:
    """Mean of the per-class accuracies within each group (``groups``: one group index per class, e.g.
    ``lt.data_groups`` or ``lt.prior_groups``).  NaN classes are ignored; a group with no class is NaN."""
    per_class = torch.as_tensor(per_class, dtype=torch.float64).cpu()
    groups = torch.as_tensor(groups).long().cpu()
    if per_class.shape != groups.shape:
        raise ValueError(f"per_class has {per_class.numel()} entries but groups has {groups.numel()}; "
                         f"pass one group index per class.")
    if len(groups) and (groups.min() < 0 or groups.max() >= num_groups):
        raise ValueError(f"group indices must lie in [0, {num_groups - 1}].")
    return torch.stack([per_class[groups == g].nanmean() for g in range(num_groups)]).float()


def group_matrix(per_class, d_groups, p_groups, num_groups: int = 3, return_counts: bool = False):
    """The D-group x P-group matrix of mean per-class accuracy (rows: data groups, columns: prior groups);
    NaN where a cell holds no class.  With ``return_counts``, also the number of classes per cell."""
    per_class = torch.as_tensor(per_class, dtype=torch.float64).cpu()
    d_groups = torch.as_tensor(d_groups).long().cpu()
    p_groups = torch.as_tensor(p_groups).long().cpu()
    if not (per_class.shape == d_groups.shape == p_groups.shape):
        raise ValueError(f"per_class, d_groups and p_groups need one entry per class, got "
                         f"{per_class.numel()}, {d_groups.numel()} and {p_groups.numel()}.")
    for name, g in (("d_groups", d_groups), ("p_groups", p_groups)):
        if len(g) and (g.min() < 0 or g.max() >= num_groups):
            raise ValueError(f"{name} must lie in [0, {num_groups - 1}].")
    matrix = torch.full((num_groups, num_groups), float("nan"), dtype=torch.float64)
    counts = torch.zeros(num_groups, num_groups, dtype=torch.long)
    for d in range(num_groups):
        for p in range(num_groups):
            cell = (d_groups == d) & (p_groups == p)
            counts[d, p] = cell.sum()
            matrix[d, p] = per_class[cell].nanmean()
    return (matrix.float(), counts) if return_counts else matrix.float()


def accuracy_report(logits, labels, d_groups=None, p_groups=None, num_classes: int | None = None) -> dict:
    """Everything a chapter tabulates about one model's predictions, in percent.

    Used in chapters 1-5.

    Args:
        logits: logits/scores (N x C, argmaxed; NaN or inf is a ValueError) or integer predictions (N).
        labels: the true class indices (N).
        d_groups: one data-group index per class (e.g. ``lt.data_groups``), or None.
        p_groups: one prior-group index per class (e.g. ``lt.prior_groups``), or None.
        num_classes: the number of classes (default: the logits' width, else max label + 1).

    Returns:
        A dict with ``overall``, ``mean_per_class``, ``per_class``, ``d_group`` / ``p_group`` (3 values, when the
        groups are given) and ``matrix`` / ``matrix_counts`` (when both are).
    """
    if torch.as_tensor(logits).ndim == 2:
        check_finite(torch.as_tensor(logits), "logits")  # an error names this function's argument
    per_class = per_class_accuracy(logits, labels, num_classes)
    report = dict(overall=accuracy(logits, labels), mean_per_class=per_class.nanmean().item(), per_class=per_class)
    if d_groups is not None:
        report["d_group"] = group_accuracy(per_class, d_groups)
    if p_groups is not None:
        report["p_group"] = group_accuracy(per_class, p_groups)
    if d_groups is not None and p_groups is not None:
        report["matrix"], report["matrix_counts"] = group_matrix(per_class, d_groups, p_groups, return_counts=True)
    return report


# ------------------------------------------------------------------------------------------------------- kNN
def _sample_ids(ids, count: int, name: str, what: str) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer sample ids (e.g. dataset indices), got dtype {ids.dtype}.")
    if ids.shape != (count,):
        raise ValueError(f"{name} must hold one id per {what} ({count}), got shape {tuple(ids.shape)}.")
    return ids.long().cpu()


@phase("kNN")
def knn_predict(bank_feats, bank_labels, query_feats, k: int = 200, t: float = 0.1,
                num_classes: int | None = None, chunk: int = 1024, *, bank_ids=None,
                query_ids=None) -> torch.Tensor:
    """Weighted kNN class scores (N_query x C), the paper's feature probe.

    Features are L2-normalised; each query takes its ``k`` most cosine-similar bank samples (``k`` clipped to
    the bank size) and class c scores sum over those neighbours of label c of ``exp((sim - max_sim) / t)``, where
    ``max_sim`` is the query's largest similarity: the paper's ``exp(sim / t)`` weights divided by one positive
    constant per query, so predictions and relative votes are the same, scores are relative per query (the top
    neighbour weighs 1) and stay finite for any ``t > 0``.  Predictions are ``scores.argmax(1)``
    (``per_class_accuracy`` accepts the scores directly).  Queries are processed ``chunk`` at a time, so only a
    chunk x bank similarity block is in memory.  Runs on the bank features' device.  A query that is also in the
    bank finds itself: use disjoint bank and query sets, and pass ``bank_ids`` / ``query_ids`` to have it checked.
    Features with NaN or inf are refused (ValueError): one such bank row would make every query's scores NaN.

    Used in chapter 3.

    Args:
        bank_feats: the labelled bank's features (N_bank x D).
        bank_labels: the bank's class indices (N_bank).
        query_feats: the features to classify (N_query x D).
        k: the number of neighbours per query (clipped to the bank size).
        t: the temperature of the ``exp(sim / t)`` weights.
        num_classes: the number of classes C (default: max bank label + 1).
        chunk: the number of queries processed at a time.
        bank_ids, query_ids: optional integer ids of the bank and query samples, in one numbering (e.g. indices
            into the same dataset); when both are given, a sample in both is a ValueError.

    Returns:
        The class scores, a float32 CPU tensor of shape N_query x C.
    """
    bank = torch.as_tensor(bank_feats)
    query = torch.as_tensor(query_feats)
    bank_labels = torch.as_tensor(bank_labels).long().to(bank.device)
    if bank.ndim != 2 or query.ndim != 2 or bank.shape[1] != query.shape[1]:
        raise ValueError(f"bank and query features must be 2-D with the same width, got {tuple(bank.shape)} "
                         f"and {tuple(query.shape)}.")
    if len(bank) == 0:
        raise ValueError("the kNN bank is empty.")
    if bank_labels.shape != (len(bank),):
        raise ValueError(f"bank_labels must hold one label per bank sample ({len(bank)}), "
                         f"got shape {tuple(bank_labels.shape)}.")
    if k < 1 or t <= 0 or chunk < 1:
        raise ValueError(f"need k >= 1, t > 0 and chunk >= 1, got k={k}, t={t}, chunk={chunk}.")
    if (bank_ids is None) != (query_ids is None):
        raise ValueError("pass both bank_ids and query_ids (to check that no query is in the bank), or neither.")
    if bank_ids is not None:
        bank_ids = _sample_ids(bank_ids, len(bank), "bank_ids", "bank sample")
        query_ids = _sample_ids(query_ids, len(query), "query_ids", "query")
        shared = query_ids[torch.isin(query_ids, bank_ids)].unique()
        if len(shared):
            raise ValueError(f"the kNN bank shares {len(shared)} sample{'s' * (len(shared) > 1)} with the queries "
                             f"(e.g. id {shared[0].item()}), and a query would find itself: the bank must be disjoint "
                             "from the queries (e.g. the val set as bank, the test set as queries).")
    check_finite(bank, "bank_feats")
    check_finite(query, "query_feats")
    if num_classes is None:
        num_classes = int(bank_labels.max()) + 1
    k = min(k, len(bank))
    bank = F.normalize(bank.float(), dim=1)
    scores = torch.zeros(len(query), num_classes)
    for start in range(0, len(query), chunk):
        q = F.normalize(query[start:start + chunk].to(bank.device).float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (chunk, k), sorted: column 0 is each query's largest
        votes = torch.zeros(len(q), num_classes, device=bank.device)
        # exp(sim / t) overflows float32 for t < ~0.011; dividing by exp(max_sim / t) keeps the argmax
        votes.scatter_add_(1, bank_labels[idx], ((sim - sim[:, :1]) / t).exp())
        scores[start:start + len(q)] = votes.cpu()
    return scores


def knn_accuracy(bank_feats, bank_labels, query_feats, query_labels, k: int = 200, t: float = 0.1,
                 num_classes: int | None = None, *, bank_ids=None, query_ids=None) -> float:
    """Top-1 accuracy (%) of ``knn_predict`` on labelled queries (``bank_ids`` / ``query_ids``: see there)."""
    scores = knn_predict(bank_feats, bank_labels, query_feats, k=k, t=t, num_classes=num_classes,
                         bank_ids=bank_ids, query_ids=query_ids)
    return accuracy(scores, query_labels)


def report_row(report: dict, **extra) -> dict:
    """One flat table row of an ``accuracy_report`` (floats, percent).

    Used in chapters 1-5 to build the results tables.

    Args:
        report: an ``accuracy_report`` dict.
        **extra: columns to put first, e.g. ``model=..., method=...``.

    Returns:
        A flat dict: ``extra`` first, then overall, the D-/P-group accuracies and the Many-minus-Few gaps.
    """
    row = dict(extra)
    row["overall"] = float(report["overall"])
    for prefix, key in (("D", "d_group"), ("P", "p_group")):
        if key in report:
            values = [float(v) for v in report[key]]
            row.update({f"{prefix}-{g}": v for g, v in zip(GROUP_NAMES, values)})
            row[f"{prefix}-gap"] = values[0] - values[2]
    return row
