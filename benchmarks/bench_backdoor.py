"""Backdoor adjustment of M cached models: fusing logits only (no forward pass).

    python benchmarks/bench_backdoor.py [--sizes 10000x100 50000x1000] [--max-models 5] [--repeats 5] [--device cpu]

Prints one row per (size, M, mode): the median wall time over ``--repeats`` runs and the throughput in
logit entries per second (M x N x C / time).  The logits are random stand-ins for cached model outputs.
"""
import argparse

import torch

import lt_utils as lt
from timing import median_time  # benchmarks/timing.py (the script's own folder is on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["10000x100", "50000x1000"], help="N x C of each model's logits")
    parser.add_argument("--max-models", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None, help="default: CUDA if present, else CPU")
    args = parser.parse_args()
    device = lt.profiles.get_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'N x C':>12} {'M':>2} {'mode':>6} {'median ms':>10} {'Mentries/s':>11}")
    for size in args.sizes:
        n, c = (int(v) for v in size.lower().split("x"))
        g = torch.Generator(device=device).manual_seed(0)
        logits = [torch.randn(n, c, generator=g, device=device) for _ in range(args.max_models)]
        for m in range(1, args.max_models + 1):
            for mode in lt.backdoor.BACKDOOR_MODES:
                lt.backdoor_adjust(logits[:m], mode=mode)  # warm-up
                seconds = median_time(lambda: lt.backdoor_adjust(logits[:m], mode=mode), args.repeats, device)
                print(f"{size:>12} {m:>2} {mode:>6} {1e3 * seconds:>10.2f} {m * n * c / seconds / 1e6:>11.1f}")
        del logits


if __name__ == "__main__":
    main()
