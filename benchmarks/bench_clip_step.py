"""The clip profile's training step at full size, on random weights: throughput, memory, achieved TFLOP/s.

Real-size ViT-B/16 at 224 px (open_clip ``ViT-B-16-quickgelu``, as OpenAI's CLIP; random weights, no
download) + AdaptFormer + cosine head, trained by ``lt_utils.training.train_step`` on CIFAR-sized uint8 images
that live on the GPU and are augmented there by the profile's own ``TensorAugment`` (RandomResizedCrop 224 +
flip), batch 128, mixed precision. It reports, per setting:

- images/s of the whole step (augmentation included) and of the augmentation alone (the data path's share);
- peak GPU memory (``torch.cuda.max_memory_allocated``);
- FLOPs per step counted by ``torch.utils.flop_counter`` (a multiply-add = 2 FLOPs) and the achieved TFLOP/s,
  against the device's measured dense fp16 matmul rate (an 8192^3 product) and its datasheet peak;
- inference images/s under ``torch.inference_mode`` and the minutes one fine-tune of the clip profile takes
  (epochs x CIFAR-100-LT IR-100 training images, then val + test evaluation).

Needs a CUDA GPU (and runs a tiny CPU smoke version without one, to check the script itself):

    python benchmarks/bench_clip_step.py [--steps 30] [--json results.json]

The paper's datasets: ``--num-classes 1000 --source-size 256`` (ImageNet-LT: AdaptFormer r = 32, images decoded
once to 256 x 256 by ``lt_utils.decoded``), ``--num-classes 365`` (Places-LT, r = 8), ``--num-classes 8142``
(iNaturalist 2018, r = 256).
"""
from __future__ import annotations

import argparse
import json
import time

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

from lt_utils.augment import preprocessing
from lt_utils.data import InMemoryDataset, long_tail_counts
from lt_utils.explain import count_flops
from lt_utils.losses import make_loss
from lt_utils.models import FoundationModel, build_classifier
from lt_utils.profiles import profile as get_profile
from lt_utils.training import train_step
from timing import datasheet_peak  # benchmarks/timing.py (the script's own folder is on sys.path)

NUM_CLASSES = 100


def matmul_tflops(device, dtype=torch.float16, n: int = 8192, repeats: int = 20) -> float:
    """The device's dense matmul rate, measured: the ceiling the training step is compared with."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def make_classifier(arch: str, device, num_classes: int = NUM_CLASSES) -> torch.nn.Module:
    torch.manual_seed(0)
    fm = FoundationModel.from_open_clip(open_clip.create_model(arch), name="bench", arch=arch)
    return build_classifier(fm, [f"class {i}" for i in range(num_classes)], peft="adaptformer",
                            copy=False).to(device)


def cuda_seconds(fn, steps: int) -> float:
    """Seconds per call of ``fn``, timed with CUDA events over ``steps`` calls."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / steps


def measure(model, data, augment, loss_fn, batch: int, micro_batch: int, steps: int, device,
            flops: int | None = None) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    model.train()

    def batch_indices():
        return torch.randint(len(data), (batch,), device=device, generator=gen)

    def augment_only():
        return augment(data.images[batch_indices()], generator=gen)

    def step():
        idx = batch_indices()
        return train_step(model, loss_fn, augment(data.images[idx], generator=gen), data.targets[idx], optimizer,
                          scaler, micro_batch, amp=device.type == "cuda")

    if flops is None:
        with FlopCounterMode(display=False) as counter:  # FLOPs do not depend on the values: count one step
            step()
        flops = counter.get_total_flops()
    if device.type != "cuda":
        return dict(batch=batch, micro_batch=micro_batch, flops_per_step=flops)
    for _ in range(5):
        step()
    torch.cuda.reset_peak_memory_stats(device)
    step_s = cuda_seconds(step, steps)
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    augment_s = cuda_seconds(augment_only, steps)
    return dict(batch=batch, micro_batch=micro_batch, step_ms=step_s * 1e3, images_per_s=batch / step_s,
                augment_ms=augment_s * 1e3, augment_share=augment_s / step_s, peak_memory_gib=peak_gib,
                flops_per_step=flops, gflops_per_image=flops / batch / 1e9, achieved_tflops=flops / step_s / 1e12)


def measure_inference(model, data, augment, batch: int, steps: int, device) -> dict:
    model.eval()
    x = augment(data.images[:batch])
    flops_per_image = count_flops(model, x[:1])  # one image, no autograd, attention included

    def forward():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16):
            model(augment(data.images[:batch]))

    if device.type != "cuda":
        return dict(gflops_per_image=flops_per_image / 1e9)
    for _ in range(3):
        forward()
    seconds = cuda_seconds(forward, steps)
    return dict(batch=batch, images_per_s=batch / seconds, gflops_per_image=flops_per_image / 1e9,
                achieved_tflops=flops_per_image * batch / seconds / 1e12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B-16-quickgelu")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--compile", action="store_true", help="also time the step of torch.compile(model)")
    parser.add_argument("--fp16-frozen", action="store_true",
                        help="also time the step with the frozen backbone stored in fp16 (no per-step casts)")
    parser.add_argument("--num-classes", type=int, default=NUM_CLASSES,
                        help="classes of the head (AdaptFormer's bottleneck follows: 100 -> 4, 1000 -> 32)")
    parser.add_argument("--source-size", type=int, default=32,
                        help="stored image size (CIFAR 32; the paper's datasets decoded once: 256)")
    args = parser.parse_args()
    num_classes = args.num_classes
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    arch = args.arch if cuda else "ViT-S-32"  # CPU: a smoke run of the script, not a measurement
    n_train = sum(long_tail_counts(NUM_CLASSES, 500, 100))  # CIFAR-100-LT IR 100: 10,847 images
    if not cuda or args.source_size > 64:
        n_train = 1024 if cuda else 16  # random batches of a resident set: its size does not change a step's cost
    g = torch.Generator().manual_seed(0)
    size = args.source_size if cuda else 32
    data = InMemoryDataset(torch.randint(0, 256, (n_train, 3, size, size), dtype=torch.uint8, generator=g),
                           torch.arange(n_train) % num_classes, [f"class {i}" for i in range(num_classes)]).to(device)
    model = make_classifier(arch, device, num_classes)
    train_augment = preprocessing(model, train=True, native_size=False)
    test_augment = preprocessing(model, train=False, native_size=False)
    counts = torch.bincount(data.targets.cpu(), minlength=num_classes).float().clamp_min(1)
    loss_fn = make_loss("la", counts / counts.sum())
    settings = [(128, 128), (128, 64)] if cuda else [(4, 4)]  # 64: the clip profile's micro-batch (fits a T4)
    result = dict(device=torch.cuda.get_device_name(device) if cuda else "cpu (smoke run)", arch=arch,
                  torch=torch.__version__, n_train=n_train, num_classes=num_classes, source_size=size,
                  trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
                  train=[measure(model, data, train_augment, loss_fn, b, m, args.steps, device) for b, m in settings],
                  inference=measure_inference(model, data, test_augment, 256 if cuda else 2, args.steps, device))
    if cuda and args.compile:  # same FLOPs as eager; only the time differs
        result["train_compiled"] = measure(torch.compile(model), data, train_augment, loss_fn, 128, 128,
                                           args.steps, device, flops=result["train"][0]["flops_per_step"])
    if cuda and args.fp16_frozen:  # an option to measure, not what lt_utils does today
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.half()
        flops = result["train"][0]["flops_per_step"]
        result["train_fp16_frozen"] = measure(model, data, train_augment, loss_fn, 128, 128, args.steps, device,
                                              flops=flops)
    if cuda:
        result["matmul_fp16_tflops"] = matmul_tflops(device)
        result["datasheet_tflops"] = datasheet_peak(result["device"])
    if cuda and num_classes == NUM_CLASSES and size == 32:  # the clip profile's run
        clip = get_profile("clip")
        best = max(result["train"], key=lambda r: r["images_per_s"])
        eval_images = 2000 + 8000  # val + test
        result["fine_tune_minutes"] = (clip.epochs * n_train / best["images_per_s"]
                                       + eval_images / result["inference"]["images_per_s"]) / 60
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
