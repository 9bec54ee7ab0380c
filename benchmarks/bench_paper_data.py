"""Images/s of the paper datasets' loaders against the training step they must feed (ViT-B/16 + AdaptFormer,
batch 128; its images/s is read from ``benchmarks/results/clip_step*.json``).

On ``--n`` fabricated JPEGs at ImageNet-like sizes (500 x 375, landscape and portrait, about 100 KB each at JPEG
quality 90: smooth colour plus texture and noise, so that decoding costs what a photo's does), it measures:

a. the per-image path: ``ImageListDataset`` + ``torchvision_transforms(224, train=True)`` in a ``DataLoader``
   with ``--workers`` processes, batch 128 (steady state: the first batch, with the workers' start, is not timed);
b. the decode-once build: ``lt_utils.decoded.decoded_dataset`` at 256 px with ``--workers`` processes;
c. the decoded path per training batch: 128 random indices gathered from the memory-mapped uint8 file, copied to
   the device and augmented there by ``TensorAugment(224, train=True)``, synchronised; with the file in the page
   cache (warm) and, with ``--drop-caches`` where ``posix_fadvise`` can evict it, cold (one pass over the file);
   the gather alone is timed too;
d. CUDA only: ``torchvision.io.decode_jpeg`` of 128 files' bytes on the GPU (the bytes are read beforehand).

Random content, no weights. Runs on a CPU too (c then augments on the CPU), e.g. ``--n 200 --workers 2``.

    python benchmarks/bench_paper_data.py [--n 2000] [--workers W] [--seconds 10] [--drop-caches] [--json PATH]
"""
import argparse
import glob
import io
import json
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from tqdm.auto import tqdm

import lt_utils as lt
from lt_utils.cache import atomic_write, atomic_write_text
from lt_utils.decoded import decode_size, decoded_dataset

BATCH, SIZE, CLASSES = 128, 224, 100
RESULTS = Path(__file__).resolve().parent / "results"


def _photo(index: int, seed: int) -> bytes:
    """One fabricated photo's JPEG bytes: 500 x 375 or 375 x 500, smooth colour + mid-frequency texture + noise."""
    rng = np.random.default_rng([seed, index])
    w, h = (500, 375) if rng.random() < 0.7 else (375, 500)
    coarse = rng.integers(0, 256, size=(h // 24 + 2, w // 24 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    texture = rng.normal(128, 30, size=(h // 4 + 1, w // 4 + 1, 3)).clip(0, 255).astype(np.uint8)
    texture = np.asarray(Image.fromarray(texture).resize((w, h), Image.BILINEAR), dtype=np.float32) - 128
    pixels = (base + texture + rng.normal(0, 14, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_photo(args) -> int:
    path, index, seed = args
    data = _photo(index, seed)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return len(data)


def fabricate(root: Path, n: int, workers: int, seed: int = 0) -> Path:
    """``n`` JPEGs under ``root/images/`` and a split file ``root/bench_train.txt`` (labels i % 100)."""
    rows = [(f"images/{i % CLASSES:03d}/{i:06d}.jpg", i % CLASSES) for i in range(n)]
    split_file = root / "bench_train.txt"
    tasks = [(root / rel, i, seed) for i, (rel, _) in enumerate(rows)]
    for rel, _ in rows:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max(1, workers)) as pool:
        sizes = list(tqdm(pool.map(_write_photo, tasks, chunksize=16), total=n, desc="fabricating JPEGs"))
    atomic_write_text("".join(f"{rel} {label}\n" for rel, label in rows), split_file)
    print(f"{n} JPEGs, mean {np.mean(sizes) / 1e3:.0f} KB, in {root}")
    return split_file


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_image_rate(dataset, workers: int, seconds: float, device: torch.device) -> float:
    """(a) images/s of the DataLoader path, batches moved to ``device``; the first batch is not timed."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(0))
    images, start = 0, None
    while True:  # epochs until the time is up (persistent workers: no restart between them)
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            sync(device)
            if start is None:
                start = time.perf_counter()
                continue
            images += len(x)
            if time.perf_counter() - start >= seconds:
                return images / (time.perf_counter() - start)


def decoded_batch_rate(images: torch.Tensor, steps, augment, device, gather_only: bool = False) -> float:
    """(c) images/s of gather (+ copy to ``device`` + augment) over the index batches ``steps``."""
    generator = torch.Generator(device=device).manual_seed(0)
    pinned = device.type == "cuda"
    start = time.perf_counter()
    for idx in steps:
        x = images[idx]
        if not gather_only:
            x = (x.pin_memory() if pinned else x).to(device, non_blocking=True)
            x = augment(x, generator=generator)
    sync(device)
    return sum(len(i) for i in steps) / (time.perf_counter() - start)


def timed_steps(run, images, make_steps, seconds: float) -> float:
    """Repeat ``run(images, steps)`` on fresh index batches until ``seconds`` have passed; images/s."""
    done, elapsed = 0, 0.0
    while elapsed < seconds:
        steps = make_steps()
        start = time.perf_counter()
        run(images, steps)
        elapsed += time.perf_counter() - start
        done += sum(len(i) for i in steps)
    return done / elapsed


def evict(path: Path) -> bool:
    """Drop ``path`` from the page cache (no root needed for a file's clean pages); False where not possible."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def gpu_decode_rate(paths, seconds: float) -> float:
    """(d) images/s of ``torchvision.io.decode_jpeg(..., device="cuda")`` on batches of 128 files' bytes."""
    data = [torchvision.io.read_file(str(p)) for p in paths[:BATCH]]
    torchvision.io.decode_jpeg(data, device="cuda")  # warm-up: the nvJPEG handle
    torch.cuda.synchronize()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torchvision.io.decode_jpeg(data, device="cuda")
        torch.cuda.synchronize()
        done += len(data)
    return done / (time.perf_counter() - start)


def reference_step() -> dict | None:
    """The training step's images/s from ``benchmarks/results/clip_step*.json``: the eager step with one
    micro-batch of 128 (the paper profile's setting) and the fastest step measured (e.g. compiled)."""
    rows = []
    for file in sorted(glob.glob(str(RESULTS / "clip_step*.json"))):
        result = json.loads(Path(file).read_text())
        for key in ("train", "train_compiled", "train_fp16_frozen"):
            entries = result.get(key) or []
            for row in entries if isinstance(entries, list) else [entries]:
                if row.get("micro_batch") == row.get("batch") == BATCH and "images_per_s" in row:
                    rows.append(dict(file=Path(file).name, setting=key, device=result.get("device"),
                                     images_per_s=row["images_per_s"]))
    if not rows:
        return None
    eager = [r for r in rows if r["setting"] == "train"]
    main = next((r for r in eager if r["file"] == "clip_step_h100.json"), max(eager or rows,
                                                                                key=lambda r: r["images_per_s"]))
    return dict(eager=main, fastest=max(rows, key=lambda r: r["images_per_s"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="fabricated JPEGs (default 2000)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16),
                        help="DataLoader / decoding processes (default min(cpu_count, 16))")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per timed row (default 10)")
    parser.add_argument("--drop-caches", action="store_true", help="also time the decoded path cold")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args()
    if args.n < BATCH or args.workers < 0:
        parser.error(f"--n must be at least {BATCH} (one batch) and --workers >= 0")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_paper_data-"))
    work.mkdir(parents=True, exist_ok=True)
    rates, notes = {}, []
    try:
        split_file = work / "bench_train.txt"
        if not split_file.is_file() or len(split_file.read_text().splitlines()) != args.n:
            split_file = fabricate(work, args.n, args.workers)
        classnames = [str(c) for c in range(CLASSES)]
        jpeg_kb = float(np.mean([p.stat().st_size for p in (work / "images").rglob("*.jpg")]) / 1e3)

        # (a) per image, in DataLoader workers
        listed = lt.data.ImageListDataset(work, split_file, classnames,
                                          transform=lt.augment.torchvision_transforms(SIZE, train=True))
        rates["a_per_image_dataloader"] = per_image_rate(listed, args.workers, args.seconds, device)
        print(f"(a) per-image DataLoader: {rates['a_per_image_dataloader']:.0f} images/s")

        # (b) decode once
        folder = work / "decoded"
        shutil.rmtree(folder, ignore_errors=True)
        plain = lt.data.ImageListDataset(work, split_file, classnames)
        start = time.perf_counter()
        data = decoded_dataset(plain, decode_size(SIZE), folder, workers=args.workers)
        rates["b_decode_once_build"] = len(plain) / (time.perf_counter() - start)
        file_mb = (folder / "images.u8").stat().st_size / 1e6

        # (c) decoded: gather from the memory map, copy, augment on the device
        augment = lt.augment.TensorAugment(SIZE, train=True)
        index_gen = torch.Generator().manual_seed(1)
        n = len(data)

        def epoch_batches():  # one pass without replacement: every page read once
            order = torch.randperm(n, generator=index_gen)
            return [order[i:i + BATCH] for i in range(0, n - BATCH + 1, BATCH)]

        def random_batches(count=4):
            return [torch.randint(0, n, (BATCH,), generator=index_gen) for _ in range(count)]

        # warm-up on a batch of the real shape (kernels, allocator, pinned buffers): the cold rows time the disk
        decoded_batch_rate(torch.zeros_like(data.images[:BATCH]), [torch.arange(BATCH)], augment, device)
        if args.drop_caches:
            del data  # a fresh mapping after each eviction

            def cold(gather_only: bool) -> float:  # the median of 3 passes, each over a freshly evicted file
                passes = []
                for _ in range(3):
                    evict(folder / "images.u8")
                    fresh = decoded_dataset(plain, decode_size(SIZE), folder, workers=args.workers, progress=False)
                    passes.append(decoded_batch_rate(fresh.images, epoch_batches(), augment, device, gather_only))
                return float(np.median(passes))

            if evict(folder / "images.u8"):
                rates["c_decoded_batch_cold"] = cold(gather_only=False)
                rates["c_gather_cold"] = cold(gather_only=True)
            else:
                notes.append("--drop-caches: posix_fadvise is not available here, cold rows skipped")
            data = decoded_dataset(plain, decode_size(SIZE), folder, workers=args.workers, progress=False)
        images = data.images
        for i in range(0, n, 256):  # warm: the whole file in the page cache (a slice is a view: no copy)
            images[i:i + 256].sum()
        rates["c_gather_warm"] = timed_steps(lambda im, st: decoded_batch_rate(im, st, augment, device, True),
                                             images, lambda: random_batches(16), min(args.seconds, 2.0))
        decoded_batch_rate(images, random_batches(1), augment, device)  # warm-up (kernels, allocator)
        rates["c_decoded_batch_warm"] = timed_steps(lambda im, st: decoded_batch_rate(im, st, augment, device),
                                                    images, random_batches, args.seconds)

        # (d) nvJPEG on the GPU
        if device.type == "cuda":
            rates["d_gpu_decode_jpeg"] = gpu_decode_rate(plain.paths, args.seconds)
        else:
            notes.append("(d) torchvision.io.decode_jpeg on the GPU: skipped, no CUDA device")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    reference = reference_step()
    labels = {
        "a_per_image_dataloader": f"(a) ImageListDataset + torchvision_transforms, DataLoader, {args.workers} workers",
        "b_decode_once_build": f"(b) decoded_dataset build at {decode_size(SIZE)} px, {args.workers} workers",
        "c_gather_warm": "(c) gather 128 random rows of the memmap, warm (CPU)",
        "c_gather_cold": "(c) gather 128 rows of the memmap, cold (one pass, median of 3)",
        "c_decoded_batch_warm": f"(c) gather + copy + TensorAugment({SIZE}) on {device.type}, warm",
        "c_decoded_batch_cold": f"(c) gather + copy + TensorAugment({SIZE}) on {device.type}, cold (one pass, median "
                                "of 3)",
        "d_gpu_decode_jpeg": "(d) torchvision.io.decode_jpeg(device='cuda'), batch 128",
    }
    print(f"\n{device_name}; {os.cpu_count()} CPUs; torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"Pillow {PIL.__version__}; {args.n} JPEGs of mean {jpeg_kb:.0f} KB; decoded file {file_mb:.0f} MB")
    step = reference["eager"]["images_per_s"] if reference else None
    print(f"{'path':<92} {'images/s':>10} {'x step':>7}")
    for key, label in labels.items():
        if key in rates:
            ratio = f"{rates[key] / step:>7.2f}" if step else f"{'-':>7}"
            print(f"{label:<92} {rates[key]:>10,.0f} {ratio}")
    if reference:
        eager, fastest = reference["eager"], reference["fastest"]
        rows = [(f"training step to feed: {eager['file']} (eager, micro-batch 128, {eager['device']})", eager),
                (f"fastest step measured: {fastest['file']} ({fastest['setting']})", fastest)]
        for label, row in rows:
            print(f"{label:<92} {row['images_per_s']:>10,.0f} {row['images_per_s'] / step:>7.2f}")
    else:
        print("training step to feed: unknown (no benchmarks/results/clip_step*.json with a batch-128 step)")
    for note in notes:
        print(note)
    if args.json:
        out = dict(device=device_name, cpu_count=os.cpu_count(), torch=torch.__version__,
                   torchvision=torchvision.__version__, pillow=PIL.__version__, n=args.n, workers=args.workers,
                   batch=BATCH, image_size=SIZE, decode_size=decode_size(SIZE), jpeg_kb_mean=jpeg_kb,
                   decoded_file_mb=file_mb, images_per_s=rates, reference_step=reference, notes=notes)
        atomic_write_text(json.dumps(out, indent=1) + "\n", args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
