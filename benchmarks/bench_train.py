"""Throughput of ``lt.training.train`` against a bare PyTorch loop doing the same work (target ratio >= 0.97).

Same model, data, augmentation, loss, optimizer (SGD + momentum + weight decay) and batch (128) in both; the
bare loop has no schedule, accumulation bookkeeping, NaN check, progress bar or statistics. Each timing covers a
whole call (``lt.training.train`` includes its set-up), best of ``--repeats`` runs in alternating order.

- CPU: the lab model (open_clip ViT, width 64, 3 layers, 24x24 images) + AdaptFormer + cosine head.
- CUDA (when present): a random-weight ViT-B/16 + AdaptFormer + cosine head, CIFAR-sized uint8 images on the
  GPU upsampled to 224 by ``TensorAugment``, fp16 autocast + GradScaler in both loops.

    python benchmarks/bench_train.py [--steps 60] [--repeats 11]
"""
from __future__ import annotations

import argparse

import torch
from open_clip.transformer import VisionTransformer

from lt_utils.augment import TensorAugment
from lt_utils.data import InMemoryDataset
from lt_utils.lab import LAB_MEAN, LAB_STD, LAB_VIT
from lt_utils.losses import make_loss
from lt_utils.models import FoundationModel, build_classifier
from lt_utils.profiles import setup_cpu
from lt_utils.training import train
from timing import timed  # benchmarks/timing.py (the script's own folder is on sys.path)

NUM_CLASSES, BATCH = 100, 128
VIT_B16 = dict(image_size=224, patch_size=16, width=768, layers=12, heads=12, mlp_ratio=4.0, output_dim=512)


def make_model(vit_kwargs: dict, device) -> torch.nn.Module:
    """Random-weight foundation model -> AdaptFormer + cosine head (the fine-tuned classifier's shape)."""
    torch.manual_seed(0)
    classnames = [f"class {i}" for i in range(NUM_CLASSES)]
    fm = FoundationModel("bench", "bench-vit", VisionTransformer(**vit_kwargs), classnames=classnames,
                         class_embeddings=torch.randn(NUM_CLASSES, vit_kwargs["output_dim"]), mean=LAB_MEAN,
                         std=LAB_STD)
    return build_classifier(fm, classnames, peft="adaptformer").to(device)


def make_data(num_images: int, size: int, device) -> InMemoryDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_images, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(num_images) % NUM_CLASSES
    return InMemoryDataset(images, labels, [f"class {i}" for i in range(NUM_CLASSES)]).to(device)


def bare_loop(model, data, loss_fn, augment, device, amp: bool) -> None:
    """One epoch, the textbook way."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    generator = torch.Generator(device=device).manual_seed(0)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).to(device)
    model.train()
    for start in range(0, len(data), BATCH):
        idx = order[start:start + BATCH]
        x, y = augment(data.images[idx], generator=generator), data.targets[idx]
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def lt_loop(model, data, loss_fn, augment, device, amp: bool) -> None:
    train(model, data, loss_fn, epochs=1, batch_size=BATCH, device=device, amp=amp, augment=augment,
          progress=False)


def measure(name, vit_kwargs, image_size, device, steps, repeats) -> dict:
    amp = device.type == "cuda"
    data = make_data(steps * BATCH, image_size, device)
    model = make_model(vit_kwargs, device)
    mean_std = (LAB_MEAN, LAB_STD)
    scale = (0.6, 1.0) if vit_kwargs["image_size"] == image_size else (0.08, 1.0)
    augment = TensorAugment(vit_kwargs["image_size"], *mean_std, train=True, scale=scale)
    loss_fn = make_loss("la", data.class_counts.float() + 1)
    loops = {"lt.training.train": lt_loop, "bare": bare_loop}
    best = {k: float("inf") for k in loops}
    for loop in loops.values():  # warm-up (allocator, kernels, thread pools)
        loop(model, data, loss_fn, augment, device, amp)
    for r in range(repeats):
        for key in (list(loops) if r % 2 == 0 else list(loops)[::-1]):
            seconds = timed(lambda: loops[key](model, data, loss_fn, augment, device, amp), device)
            best[key] = min(best[key], seconds)
    images = steps * BATCH
    return dict(name=name, device=str(device), lt=images / best["lt.training.train"], bare=images / best["bare"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of 128 images per timed run")
    parser.add_argument("--repeats", type=int, default=11, help="timed runs per loop (best is kept)")
    parser.add_argument("--cuda-only", action="store_true", help="skip the CPU measurement")
    args = parser.parse_args()
    rows = []
    if not args.cuda_only:
        setup_cpu()
        rows.append(measure("lab ViT + AdaptFormer", LAB_VIT, LAB_VIT["image_size"], torch.device("cpu"),
                            args.steps, args.repeats))
    if torch.cuda.is_available():
        rows.append(measure("ViT-B/16 + AdaptFormer, AMP", VIT_B16, 32, torch.device("cuda"), args.steps,
                            args.repeats))
    else:
        print("(no CUDA device: GPU row not measured)")
    print(f"{'model':30s} {'device':8s} {'lt.training.train img/s':>15s} {'bare img/s':>12s} {'ratio':>7s}")
    for row in rows:
        print(f"{row['name']:30s} {row['device']:8s} {row['lt']:15.1f} {row['bare']:12.1f} "
              f"{row['lt'] / row['bare']:7.3f}")


if __name__ == "__main__":
    main()
