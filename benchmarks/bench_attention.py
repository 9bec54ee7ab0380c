"""The lab's training step with the PEFT blocks' attention (``lt.peft.self_attention``) against the same step
through ``nn.MultiheadAttention``, and a check that both give the same bits.

The model is a fine-tuned classifier's shape (random-weight lab ViT + AdaptFormer + cosine head, batch 128), the
step ``lt.training.train_step`` on ``TensorAugment``ed batches. The two variants alternate in every repeat; the
best of ``--repeats`` timings of ``--steps`` steps is kept (this machine's neighbours make single timings noisy).
Then each variant trains ``--check-steps`` steps from the same start and the trainable weights are compared.

    python benchmarks/bench_attention.py [--steps 40] [--repeats 9] [--json FILE]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import torch
from bench_step_batch import stepper  # benchmarks/ (the script's own folder is on sys.path)
from bench_train import make_model
from open_clip.transformer import ResidualAttentionBlock
from timing import timed  # benchmarks/timing.py

from lt_utils.lab import LAB_VIT
from lt_utils.peft import PEFTBlock
from lt_utils.profiles import setup_cpu

VARIANTS = {"lt.peft.self_attention": PEFTBlock.attention, "nn.MultiheadAttention": ResidualAttentionBlock.attention}


def steps_of(model, variant: str, steps: int, seed: int = 0) -> float:
    """Seconds of ``steps`` training steps of ``model`` with ``variant``'s attention."""
    PEFTBlock.attention = VARIANTS[variant]
    try:
        step = stepper(model, 128, seed)
        return timed(lambda: [step() for _ in range(steps)], torch.device("cpu"))
    finally:
        PEFTBlock.attention = VARIANTS["lt.peft.self_attention"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per variant (the best is kept)")
    parser.add_argument("--check-steps", type=int, default=30, help="steps of the same-bits check")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    setup_cpu()
    model = make_model(LAB_VIT, "cpu")
    for variant in VARIANTS:  # warm-up: allocator, thread pools
        steps_of(model, variant, 5)
    best = {variant: float("inf") for variant in VARIANTS}
    for r in range(args.repeats):
        for variant in (list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]):
            best[variant] = min(best[variant], steps_of(model, variant, args.steps) / args.steps)
    start = make_model(LAB_VIT, "cpu")
    trained = {}
    for variant in VARIANTS:
        model = copy.deepcopy(start)
        steps_of(model, variant, args.check_steps)
        trained[variant] = [p.detach() for p in model.parameters() if p.requires_grad]
    same_bits = all(torch.equal(a, b) for a, b in zip(*trained.values()))
    fast, slow = best["lt.peft.self_attention"], best["nn.MultiheadAttention"]
    print(f"lab training step, batch 128, {torch.get_num_threads()} threads, {os.cpu_count()} CPU cores")
    for variant, seconds in best.items():
        print(f"  {variant:24s} {seconds * 1000:6.2f} ms/step (best of {args.repeats} x {args.steps} steps)")
    print(f"  speed-up {slow / fast:.2f}x; weights after {args.check_steps} steps: "
          f"{'the same bits' if same_bits else 'DIFFERENT bits'}")
    if args.json:
        args.json.write_text(json.dumps(dict(threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                                             ms_per_step={k: v * 1000 for k, v in best.items()},
                                             speed_up=slow / fast, same_bits=same_bits,
                                             check_steps=args.check_steps), indent=1) + "\n")


if __name__ == "__main__":
    main()
