"""Wall-clock minutes of the clip profile's cached runs, end to end, at full size on random weights.

A random-weight ViT-B/16 (``ViT-B-16-quickgelu``, as OpenAI's CLIP) saved to a local file and registered as a
foundation model, and a fabricated CIFAR-100 folder of the real size (50,000 train / 10,000 test images, the
real format), go through ``lt.zero_shot`` and ``lt.fine_tune`` exactly as a chapter calls them: data loading,
the 80-template prompt ensemble, LIFT's recipe (batch 128 in micro-batches of 64, AMP), evaluation on val +
test, the cache write. Profiles ``clip`` (10 epochs) and ``clip-lite`` (3 epochs). Times include everything a
chapter waits for; only the weights' download is left out. Needs a CUDA GPU.

    python benchmarks/bench_clip_run.py [--json out.json] [--profile-step]

``--profile-step`` also prints the CUDA kernels that take the most time in one training step (torch.profiler).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import open_clip
import torch

import lt_utils as lt
from lt_utils.standin import write_cifar100_folder


def kernel_profile(model_name: str, profile, top: int = 15) -> str:
    """The top CUDA kernels of a few training steps of ``model_name`` + AdaptFormer (batch 128, AMP)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile  # optional: only with --profile-step

    fm = lt.models.load_foundation_model(model_name, device="cuda")
    model = lt.models.build_classifier(fm, [f"class {i}" for i in range(100)], copy=False).cuda().train()
    augment = lt.augment.preprocessing(model, train=True, native_size=False)
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 100, (128,), device="cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    loss_fn = lt.losses.make_loss("ce", torch.ones(100))

    def step():
        lt.training.train_step(model, loss_fn, augment(images), labels, optimizer, scaler,
                               profile.micro_batch_size or 128, amp=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--profile-step", action="store_true")
    parser.add_argument("--profiles", nargs="+", default=["clip-lite", "clip"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_clip_run_"))
    os.environ["LT_CACHE_DIR"] = str(work / "cache")
    os.environ["TQDM_DISABLE"] = "1"
    write_cifar100_folder(work / "data", 500, 80, [f"thing_{i}" for i in range(100)], seed=0)
    torch.manual_seed(0)
    weights = work / "bench-clip.pt"
    torch.save(open_clip.create_model("ViT-B-16-quickgelu").state_dict(), weights)
    lt.register_foundation_model("bench-clip", "ViT-B-16-quickgelu", weights=weights)
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, runs=[])
    for name in args.profiles:
        profile = lt.profile(name).replace(models=("bench-clip",), data_root=str(work / "data"))
        if name == args.profiles[0]:
            start = time.perf_counter()
            lt.zero_shot(profile, "bench-clip", progress=False)
            result["runs"].append(dict(profile=name, run="zero_shot", minutes=(time.perf_counter() - start) / 60))
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        run = lt.fine_tune(profile, "bench-clip", loss="la", seed=0, progress=False)
        result["runs"].append(dict(profile=name, run="fine_tune la", epochs=profile.epochs,
                                   minutes=(time.perf_counter() - start) / 60, train_minutes=run["train_time_s"] / 60,
                                   peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30))
        print(json.dumps(result["runs"][-1]), flush=True)
    if args.profile_step:
        print(kernel_profile("bench-clip", lt.profile("clip")))
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
