"""Backdoor adjustment over M fine-tuned foundation models (the paper's Sec. 5), on cached logits only.

The paper writes P(y | do(x)) = sum_c P(y | x, c) P(c) with one model per value of the confounder c and
P(c) = 1/M: an average of the models' *probabilities* (``mode="probs"``).  The official code instead sums the
models' raw *logits* (``mode="logits"``): softmax(sum_m z_m) is the normalised product of the models' softmaxes,
a product of experts, so its argmax is that of prod_m P_m(y|x).  The book shows both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BACKDOOR_MODES = ("logits", "probs")


def _as_list(logits_per_model) -> list[torch.Tensor]:
    if isinstance(logits_per_model, dict):
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

    ``logits_per_model``: a list/tuple of N x C tensors, a dict name -> tensor, or an (M, N, C) tensor.
    ``weights``: one non-negative weight per model, normalised to sum to 1 (default: equal, P(c) = 1/M).

    - ``mode="logits"``: sum_m w_m z_m, a (weighted) product of experts.  With equal weights this is the mean
      of the logits, i.e. the official code's sum divided by M: the same argmax, a softer softmax.
    - ``mode="probs"``: log sum_m w_m softmax(z_m), the log of the paper's P(y | do(x)); computed stably with
      ``logaddexp``.  Returns log-probabilities (``.exp()`` gives the averaged distribution).
    The output is float32 (float64 if the inputs are), on the inputs' device.
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


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``model`` on ``x`` (a multiply-add counts 2), from ``torch.utils.flop_counter``
    (matrix products and convolutions; element-wise operations are not counted). Works on the ``meta`` device, so
    a ViT-B/16 can be counted without weights or compute."""
    from torch.utils.flop_counter import FlopCounterMode

    # counted with autograd on: the inference fast path of nn.MultiheadAttention hides its matmuls from the counter
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def inference_cost(models, images: torch.Tensor, transform=None, repeats: int = 10) -> list[dict]:
    """Per model: wall-clock milliseconds (median of ``repeats`` timed passes, after a warm-up of every model) and
    counted FLOPs per image of one forward pass on ``images`` (a batch already on the models' device; uint8
    batches go through ``transform`` first, which is not timed).

    FLOPs as ``count_flops``. Backdoor adjustment over M models costs the sum of its members."""
    import statistics
    import time

    x = transform(images) if transform is not None else images
    flops = [count_flops(model.eval(), x) / len(x) for model in models]

    def timed(model) -> float:
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        for model in models:  # warm up every model before timing any (first calls pay one-off set-up costs)
            timed(model)
        seconds = [statistics.median(timed(model) for _ in range(repeats)) for model in models]
    return [dict(ms_per_image=1e3 * s / len(x), flops_per_image=f) for s, f in zip(seconds, flops)]
