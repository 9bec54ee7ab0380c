"""Images/s of the two augmentation paths on CIFAR-sized images (3 x 32 x 32 uint8 -> 3 x 224 x 224 float):

- ``TensorAugment``: two batched matrix products per batch of 128, on the device where the batch lives, with
  all of torch's CPU threads;
- the torchvision per-image pipeline (``torchvision_transforms``) as a DataLoader worker runs it: one image at a
  time, 1 thread, from a uint8 tensor or from a PIL image (what torchvision's CIFAR100 hands out). A DataLoader
  with k workers scales these rows by at most k.

Random images, no weights. Each row runs for about ``--seconds`` (default 2).

    python benchmarks/bench_data.py [--seconds 2] [--threads N]
"""
import argparse
import time

import torch
from torchvision.transforms import v2

import lt_utils as lt

BATCH, SIZE = 128, 224


def rate(step, images_per_step, seconds, sync=lambda: None):
    """Images/s of ``step()`` after one warm-up call, timed for about ``seconds``."""
    step()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * images_per_step / elapsed, 1000 * elapsed / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per row")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = torch.randint(0, 256, (1024, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = images[:BATCH]
    few = images[:32]  # the per-image rows time 32 images per call (the rate is per image either way)
    pil_few = [v2.functional.to_pil_image(img) for img in few]
    rows = []
    for train in (True, False):
        mode = "train" if train else "test"
        augment = lt.augment.TensorAugment(SIZE, lt.augment.CLIP_MEAN, lt.augment.CLIP_STD, train=train)
        per_image = lt.augment.torchvision_transforms(SIZE, lt.augment.CLIP_MEAN, lt.augment.CLIP_STD, train=train)
        rows.append(("cpu", mode, f"TensorAugment, batch {BATCH}, threads={torch.get_num_threads()}",
                     *rate(lambda: augment(batch), BATCH, args.seconds)))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker
        rows.append(("cpu", mode, "torchvision per-image, uint8 tensor, threads=1",
                     *rate(lambda: torch.stack([per_image(img) for img in few]), len(few), args.seconds)))
        rows.append(("cpu", mode, "torchvision per-image, PIL, threads=1",
                     *rate(lambda: torch.stack([per_image(img) for img in pil_few]), len(few), args.seconds)))
        torch.set_num_threads(threads)
        if torch.cuda.is_available():
            gpu_batch, sync = batch.cuda(), torch.cuda.synchronize
            rows.append(("cuda", mode, f"TensorAugment, batch {BATCH}",
                         *rate(lambda: augment(gpu_batch), BATCH, args.seconds, sync)))
            gen = torch.Generator(device="cuda").manual_seed(0)
            with torch.autocast("cuda", dtype=torch.float16):  # what lt.training.train runs it under
                rows.append(("cuda", mode, f"TensorAugment, batch {BATCH}, autocast",
                             *rate(lambda: augment(gpu_batch, generator=gen), BATCH, args.seconds, sync)))
    if torch.cuda.is_available():  # the whole fast path: index a GPU-resident dataset + augment, one epoch
        dataset = lt.data.InMemoryDataset(images, torch.arange(len(images)) % 100, [str(i) for i in range(100)])
        loader = lt.data.make_loader(dataset, BATCH, shuffle=True, device="cuda",
                                batch_transform=lt.augment.TensorAugment(SIZE, train=True))
        rows.append(("cuda", "train", "make_loader(GPU-resident) + TensorAugment, epoch of 1024",
                     *rate(lambda: [x for x, _ in loader], len(images), args.seconds, torch.cuda.synchronize)))

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {device}; 3x32x32 uint8 -> "
          f"3x{SIZE}x{SIZE} float32")
    print(f"{'device':<6} {'mode':<5} {'pipeline':<58} {'images/s':>10} {'ms/call':>9}")
    for dev, mode, name, per_s, ms in rows:
        print(f"{dev:<6} {mode:<5} {name:<58} {per_s:>10,.0f} {ms:>9.1f}")


if __name__ == "__main__":
    main()
