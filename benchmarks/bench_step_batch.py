"""How the lab's training step splits into a fixed cost per step and a cost per image (CPU).

The step of a lab fine-tune (AdaptFormer + cosine head on the lab ViT, ``TensorAugment``, LA loss, SGD) timed at
several batch sizes, the sizes alternating in every repeat and the best of ``--repeats`` kept. A straight line
through the times gives the fixed cost of a step (Python, dispatch, autograd bookkeeping, the optimizer, kernels
too small to fill two cores) and the cost per image. The FLOPs of one step (forward and backward, counted by
``torch.utils.flop_counter``) give the achieved rate at each size.

    python benchmarks/bench_step_batch.py [--batches 1 8 32 128] [--steps 30] [--repeats 7] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from bench_train import make_data, make_model  # benchmarks/ (the script's own folder is on sys.path)
from timing import timed  # benchmarks/timing.py
from torch.utils.flop_counter import FlopCounterMode

from lt_utils.augment import TensorAugment
from lt_utils.lab import LAB_MEAN, LAB_STD, LAB_VIT
from lt_utils.losses import make_loss
from lt_utils.profiles import setup_cpu
from lt_utils.training import train_step


def stepper(model, batch: int, seed: int = 0):
    """A function doing one training step of ``model`` on a batch of ``batch`` images (the lab fine-tune's recipe:
    ``TensorAugment``, LA loss, SGD with momentum and weight decay; a fresh optimizer)."""
    data = make_data(batch, LAB_VIT["image_size"], "cpu")
    augment = TensorAugment(LAB_VIT["image_size"], LAB_MEAN, LAB_STD, train=True, scale=(0.6, 1.0))
    loss_fn = make_loss("la", data.class_counts.float() + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(seed)

    def step():
        x = augment(data.images, generator=generator)
        train_step(model, loss_fn, x, data.targets, optimizer, scaler, batch, amp=False)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--steps", type=int, default=30, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per batch size (the best is kept)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    setup_cpu()
    model = make_model(LAB_VIT, "cpu")
    steps = {b: stepper(model, b) for b in args.batches}
    flops = {}
    for b, step in steps.items():
        for _ in range(5):  # warm-up: allocator, thread pools
            step()
        with FlopCounterMode(display=False) as counter:
            step()
        flops[b] = counter.get_total_flops()
    best = {b: float("inf") for b in args.batches}
    for r in range(args.repeats):
        for b in (args.batches if r % 2 == 0 else args.batches[::-1]):
            best[b] = min(best[b], timed(lambda: [steps[b]() for _ in range(args.steps)], torch.device("cpu"))
                          / args.steps)
    per_image, fixed = np.polyfit(args.batches, [best[b] for b in args.batches], 1)
    print(f"lab training step, {torch.get_num_threads()} threads, {os.cpu_count()} CPU cores, "
          f"{torch.backends.cpu.get_cpu_capability()}; best of {args.repeats} x {args.steps} steps")
    for b in args.batches:
        print(f"  batch {b:4d}: {best[b] * 1000:6.2f} ms/step, {flops[b] / 1e9:6.3f} GFLOP/step, "
              f"{flops[b] / best[b] / 1e9:6.1f} GFLOP/s")
    largest = max(args.batches)
    print(f"  straight line: {fixed * 1000:.2f} ms per step + {per_image * 1000:.3f} ms per image; at batch "
          f"{largest} the fixed part is {fixed / best[largest]:.0%} of the step")
    if args.json:
        args.json.write_text(json.dumps(dict(
            threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
            cpu_capability=torch.backends.cpu.get_cpu_capability(), steps=args.steps, repeats=args.repeats,
            ms_per_step={str(b): best[b] * 1000 for b in args.batches},
            gflop_per_step={str(b): flops[b] / 1e9 for b in args.batches},
            fixed_ms=fixed * 1000, ms_per_image=per_image * 1000), indent=1) + "\n")


if __name__ == "__main__":
    main()
