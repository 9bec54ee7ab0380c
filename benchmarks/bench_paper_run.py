"""The paper pipeline's path end to end at full model size: decode once, zero-shot, one LA fine-tune, evaluation.

A fabricated ImageNet-LT in the real layout (``lt_utils.standin.write_image_list_folder``: 1000 classes, JPEGs
of about 400 x 300 px) and a random-weight ViT-B/16 (open_clip ``ViT-B-16-quickgelu``, saved to a local
safetensors file and registered as a foundation model) run through ``lt.zero_shot`` and ``lt.fine_tune`` with
``paper_profile("imagenet_lt")``'s recipe, exactly as ``python -m lt_utils paper`` calls them. The decoded training
images stay on the host and each batch is copied to the GPU (``training.DEVICE_RESIDENT_FRACTION = 0``), as
ImageNet-LT's 22.8 GB and iNaturalist's 86 GB must. It reports seconds per stage and the fine-tune's training
images/s end to end, against the step's rate from ``bench_clip_step.py`` (``results/clip_step_h100_*.json``).

    python benchmarks/bench_paper_run.py [--train-per-class 5] [--epochs 3] [--json results.json]

Needs a CUDA GPU for a measurement; on a CPU it runs a tiny smoke version (stand-in model, 40 x 30 JPEGs).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

import lt_utils as lt
from lt_utils import decoded, standin, training
from lt_utils.profiles import paper_profile

RESULTS = Path(__file__).resolve().parent / "results"
ARCH = "ViT-B-16-quickgelu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-per-class", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_paper_run_"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the fabricated JPEGs, decoded files and cache


def run(args, work: Path) -> None:
    cuda = torch.cuda.is_available()
    os.environ["LT_CACHE_DIR"] = str(work / "cache")
    stages = {}

    start = time.perf_counter()
    root = standin.write_image_list_folder(work / "data", "imagenet_lt", num_classes=1000,
                                           train_counts=[args.train_per_class] * 1000, per_class_val=1,
                                           per_class_test=1, image_size=(400, 300) if cuda else (40, 30))
    stages["fabricate_jpegs_s"] = time.perf_counter() - start

    if cuda:
        torch.manual_seed(0)
        state = {k: v.contiguous() for k, v in open_clip.create_model(ARCH).state_dict().items()}
        save_file(state, str(work / "vitb16.safetensors"))
        lt.register_foundation_model("bench-vitb16", ARCH, weights=work / "vitb16.safetensors")
        model = "bench-vitb16"
    else:
        standin.setup(work / "standin")
        model = "standin-clip"
    profile = paper_profile("imagenet_lt", device=None if cuda else "cpu").replace(
        data_root=str(root), models=(model,), control_models=(model,), epochs=args.epochs)
    training.DEVICE_RESIDENT_FRACTION = 0.0  # the host path, as the full datasets take

    size = decoded.decode_size(lt.models.load_foundation_model(model, device="cpu").image_size)
    start = time.perf_counter()
    for split in ("train", "val", "test"):  # what zero_shot would decode first, timed on its own
        decoded.decoded_dataset(lt.load_dataset("imagenet_lt", root, split), size, progress=False)
    stages["decode_s"] = time.perf_counter() - start
    n_decoded = 1000 * (args.train_per_class + 2)

    start = time.perf_counter()
    zero = lt.zero_shot(profile, model, progress=False)
    stages["zero_shot_s"] = time.perf_counter() - start
    start = time.perf_counter()
    run = lt.fine_tune(profile, model, loss="la", seed=0, progress=False)
    stages["fine_tune_s"] = time.perf_counter() - start
    n_train = int(run["class_counts"].sum())
    train_rate = args.epochs * n_train / run["train_time_s"]
    steady = [n_train / t for t in run["history"]["time_s"][1:]] or [train_rate]

    result = dict(device=torch.cuda.get_device_name() if cuda else "cpu (smoke run)", arch=ARCH if cuda else model,
                  torch=torch.__version__, train_images=n_train, eval_images=len(zero["val"]["labels"]) +
                  len(zero["test"]["labels"]), epochs=args.epochs, stages_s=stages,
                  decode_images_per_s=n_decoded / stages["decode_s"],
                  train_time_s=run["train_time_s"], train_images_per_s=train_rate,
                  train_images_per_s_after_first_epoch=sum(steady) / len(steady),
                  zero_shot_eval_time_s=zero["eval_time_s"])
    step = RESULTS / "clip_step_h100_imagenet_lt.json"
    if cuda and step.is_file():
        rates = json.loads(step.read_text())
        result["step_images_per_s"] = max(r["images_per_s"] for r in rates["train"]
                                          if r["micro_batch"] == r["batch"])
        result["end_to_end_over_step"] = result["train_images_per_s_after_first_epoch"] / result["step_images_per_s"]
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
