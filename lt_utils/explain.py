"""Explaining and costing a model: where it looks (Grad-CAM, chapter 4's figure of the paper's "incomplete
semantic factors") and what it costs (FLOPs and wall-clock time per image, the paper's Tab. 9)."""
from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .augment import preprocessing
from .models import Classifier
from .phases import phase


@phase("Grad-CAM and FLOPs")
def grad_cam(classifier: Classifier, images: torch.Tensor, targets=None, transform=None) -> torch.Tensor:
    """Grad-CAM maps (N x g x g in [0, 1]) of a ViT ``classifier`` on the patch tokens that enter its last block.

    The last block's own patch outputs do not reach the class token, so (as is usual for ViTs) the maps use the
    tokens *entering* that block: weights = gradient of the target logit averaged over tokens, map = ReLU of the
    weighted sum of channels. Used in chapter 4 (where the model looks: "incomplete semantic factors").

    Args:
        classifier: the ViT ``Classifier`` to explain.
        images: a batch of N images, uint8 or already normalised floats.
        targets: the class whose logit is explained, one per image (default: the predicted classes).
        transform: preprocessing for uint8 images (default: the classifier's test transform).

    Returns:
        The maps, an N x g x g CPU tensor (g x g the patch grid), each scaled to a maximum of 1."""
    blocks = classifier.backbone.transformer.resblocks
    device = next(classifier.parameters()).device
    x = images.to(device)
    if x.dtype == torch.uint8:
        x = (transform or preprocessing(classifier, train=False))(x)
    captured = {}

    def keep_input(module, args):
        captured["tokens"] = args[0]

    was_training = classifier.training
    classifier.eval()
    handle = blocks[-1].register_forward_pre_hook(keep_input)
    try:
        with torch.enable_grad():
            x = x.float().requires_grad_(True)  # builds the graph through the frozen backbone
            logits = classifier(x)
            if targets is None:
                targets = logits.argmax(1)
            targets = torch.as_tensor(targets, device=device).long()
            score = logits.gather(1, targets[:, None]).sum()
            # autograd.grad, not backward(): the classifier's trainable parameters get no stray .grad
            grads = torch.autograd.grad(score, captured["tokens"])[0]
    finally:
        handle.remove()
        classifier.train(was_training)
    tokens, grads = captured["tokens"][:, 1:].detach(), grads[:, 1:]  # drop the class token
    cams = torch.relu((tokens * grads.mean(1, keepdim=True)).sum(-1))
    side = int(round(cams.shape[1] ** 0.5))
    cams = cams.reshape(len(cams), side, side)
    peak = cams.flatten(1).max(1).values.clamp_min(1e-12)
    return (cams / peak[:, None, None]).cpu()


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


# torch's counter knows the CUDA attention kernels but not the CPU one (so the CPU and meta counts of a ViT
# would miss its attention products, 4% of ViT-B/16): count it with torch's own formula
_CPU_SDPA = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_EXTRA_FLOP_FORMULAS = {_CPU_SDPA: _cpu_attention_flops} if _CPU_SDPA is not None else {}


@phase("Grad-CAM and FLOPs")
def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``model`` on ``x`` (a multiply-add counts 2).

    Counted by ``torch.utils.flop_counter`` (matrix products and convolutions; element-wise operations are not
    counted). Works on the ``meta`` device, so a ViT-B/16 can be counted without weights or compute. Used in
    chapter 4 (the cost of backdoor adjustment, the paper's Tab. 9).

    Args:
        model: the model to count.
        x: the input batch (on the model's device, or ``meta``).

    Returns:
        The total FLOPs of the pass on the whole batch ``x``, an int."""
    # no autograd (its graph would keep every activation: ~100 MiB per ViT-B/16 image); the inference fast path
    # of nn.MultiheadAttention is switched off while counting, since it hides its matmuls from the counter
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
            model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()


@phase("Grad-CAM and FLOPs")
def inference_cost(models, images: torch.Tensor, transform=None, repeats: int = 10) -> list[dict]:
    """Per model: wall-clock milliseconds and counted FLOPs per image of one forward pass on ``images``.

    Time is the median of ``repeats`` timed passes under ``torch.inference_mode`` (mixed precision on CUDA, as
    the runs predict), after a warm-up of every model; FLOPs as ``count_flops``, on one image (they do not
    depend on the batch). Backdoor adjustment over M models costs the sum of its members. Used in chapter 4
    (the paper's Tab. 9).

    Args:
        models: the models to compare.
        images: a batch already on the models' device.
        transform: applied to the batch first, not timed (e.g. for uint8 batches); None to use it as is.
        repeats: the number of timed passes per model.

    Returns:
        One dict per model, in order, with ``ms_per_image`` and ``flops_per_image``."""
    x = transform(images) if transform is not None else images
    flops = [count_flops(model.eval(), x[:1]) for model in models]

    def timed(model) -> float:
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.float16, enabled=x.is_cuda):
        for model in models:  # warm up every model before timing any (first calls pay one-off set-up costs)
            timed(model)
        seconds = [statistics.median(timed(model) for _ in range(repeats)) for model in models]
    return [dict(ms_per_image=1e3 * s / len(x), flops_per_image=f) for s, f in zip(seconds, flops)]
