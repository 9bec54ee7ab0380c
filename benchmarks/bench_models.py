"""Throughput of the fine-tuned models: random-weight ViT-B/16 + AdaptFormer and the lab ViT + AdaptFormer.

One training step = forward + cosine head + cross-entropy + backward + SGD step (only adapters and head train);
inference = forward under no_grad. Mixed precision (float16 + GradScaler) on CUDA; on a CPU the ViT-B/16 row
uses batch 2 and one timed step so the script finishes in under a minute (a rough number only).

    python benchmarks/bench_models.py            # prints a table
    python benchmarks/bench_models.py --steps 20 --vit-batch 128
"""
import argparse
import time

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer

from lt_utils.models import Classifier, CosineHead
from lt_utils.peft import apply_peft
from lt_utils.profiles import get_device, setup_cpu

# the lab-notes probe's ViT, used only if lt_utils.lab is not there yet
FALLBACK_LAB_VIT = dict(image_size=16, patch_size=4, width=64, layers=3, heads=4, mlp_ratio=2.0, output_dim=64)


def lab_vit_kwargs():
    try:
        from lt_utils import lab
        return dict(lab.LAB_VIT), "lt_utils.lab.LAB_VIT"
    except (ImportError, AttributeError):
        return dict(FALLBACK_LAB_VIT), "fallback (lt_utils.lab missing)"


def adaptformer_classifier(visual, num_classes):
    visual.proj = None  # pre-projection features, as FoundationModel gives them
    info = apply_peft(visual, "adaptformer", num_classes=num_classes)
    return Classifier(visual, CosineHead(visual.transformer.width, num_classes)), info


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model, batch, image_size, num_classes, steps, warmup, device, amp):
    model.to(device)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(num_classes, (batch,), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def train_step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def infer_step():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            model(x)

    rates = []
    for step in (train_step, infer_step):
        for _ in range(warmup):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        rates.append(batch * steps / (time.perf_counter() - start))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return rates[0], rates[1], peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=100, help="head size; also sets the bottleneck r")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 CUDA, 1/5 CPU)")
    parser.add_argument("--vit-batch", type=int, default=None, help="ViT-B/16 batch (default: 128 CUDA, 2 CPU)")
    parser.add_argument("--lab-batch", type=int, default=256)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    device = get_device(args.device)
    cuda = device.type == "cuda"
    if not cuda:
        setup_cpu()
    torch.manual_seed(0)
    c = args.num_classes
    vit_batch = args.vit_batch or (128 if cuda else 2)
    vit_steps = args.steps or (20 if cuda else 1)
    lab_steps = args.steps or (20 if cuda else 5)
    lab_kwargs, lab_source = lab_vit_kwargs()

    rows = []
    vit_b16 = open_clip.create_model("ViT-B-16", pretrained=None).visual  # random weights: speed only
    model, info = adaptformer_classifier(vit_b16, c)
    rows.append(("ViT-B/16 + AdaptFormer", info, vit_batch, 224,
                 measure(model, vit_batch, 224, c, vit_steps, 2 if cuda else 1, device, cuda)))
    del model, vit_b16
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model, info = adaptformer_classifier(VisionTransformer(**lab_kwargs), c)
    size = lab_kwargs["image_size"]
    rows.append(("lab ViT + AdaptFormer", info, args.lab_batch, size,
                 measure(model, args.lab_batch, size, c, lab_steps, 2, device, cuda)))

    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name} | AMP float16: {cuda} | classes: {c} | torch {torch.__version__} | lab ViT: {lab_source}")
    header = f"{'model':<24} {'r':>4} {'trainable':>10} {'total':>11} {'batch':>6} {'img':>4} " \
             f"{'train img/s':>12} {'infer img/s':>12} {'peak GiB':>9}"
    print(header)
    print("-" * len(header))
    for label, info, batch, size, (train, infer, peak) in rows:
        print(f"{label:<24} {info['bottleneck']:>4} {info['trainable']:>10,} {info['total']:>11,} {batch:>6} "
              f"{size:>4} {train:>12.1f} {infer:>12.1f} {peak:>9.2f}")


if __name__ == "__main__":
    main()
