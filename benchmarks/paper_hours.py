"""GPU hours of ``python -m lt_utils paper`` on the paper's datasets: the README's table.

One seed of the pipeline trains 8 fine-tunes (LA on CLIP, OpenCLIP, MetaCLIP; CE and GLA-Train on CLIP; the
same-backbone control's three CLIP runs) of ``epochs x train images`` each and evaluates each on val + test; once
per dataset it evaluates the three models zero-shot on val + test and decodes the images once
(``lt_utils.decoded``). Rates per dataset were measured on an H100 at full size with random weights
(``bench_clip_step.py --num-classes C --source-size 256``: the dataset's head and AdaptFormer width, images decoded
at 256 px): ``benchmarks/results/clip_step_h100_<dataset>.json``; where none exists, CIFAR-100's head's rates. The
training rate is scaled by what a whole ``lt.fine_tune`` achieved against the bare step on the same machine
(``bench_paper_run.py``: decoded images on the host, copied per batch; ``results/paper_run_h100.json``). Other
GPUs: H100 hours x (the H100's datasheet fp16 rate / the GPU's), as ``clip_time.py`` does. Not counted: decoding
(once per dataset, about 1,600 images/s on 16 cores) and the text encoder of the zero-shot classifiers.

    python benchmarks/paper_hours.py            # the README's table
"""
from __future__ import annotations

import json
from pathlib import Path

from timing import DATASHEET_TFLOPS  # benchmarks/timing.py (the script's own folder is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results"
# train / val / test images as lt_utils splits them (iNaturalist: the official val, 3 per class, gives 1 per class
# to our val and 2 to test), classes and the paper's epochs
DATASETS = {
    "imagenet_lt": dict(train=115_846, val=20_000, test=50_000, classes=1000, epochs=10),
    "places_lt": dict(train=62_500, val=7_300, test=36_500, classes=365, epochs=10),
    "inat2018": dict(train=437_513, val=8_142, test=16_284, classes=8142, epochs=20),
}
FINE_TUNES_PER_SEED = 8
ZERO_SHOT_MODELS = 3
DECODED_BYTES_PER_IMAGE = 3 * 256 * 256


def end_to_end_factor() -> float:
    """A whole fine-tune's training images/s over the bare step's, measured on the same H100."""
    return json.loads((RESULTS / "paper_run_h100.json").read_text())["end_to_end_over_step"]


def rates(dataset: str) -> dict:
    """Training (end to end) and inference images/s on the H100, measured with the dataset's head (else
    CIFAR-100's), and where they come from."""
    path = RESULTS / f"clip_step_h100_{dataset}.json"
    source = path.name if path.is_file() else "clip_step_h100.json (CIFAR-100's head)"
    measured = json.loads((path if path.is_file() else RESULTS / "clip_step_h100.json").read_text())
    best = max(measured["train"], key=lambda r: r["images_per_s"])  # the profile's one micro-batch of 128
    return dict(train=best["images_per_s"] * end_to_end_factor(), inference=measured["inference"]["images_per_s"],
                source=source)


def hours(dataset: str, seeds: int = 1, gpu: str = "H100") -> float:
    """GPU hours of the pipeline on ``dataset`` with ``seeds`` seeds on one ``gpu``."""
    d, r = DATASETS[dataset], rates(dataset)
    eval_images = d["val"] + d["test"]
    per_fine_tune = d["epochs"] * d["train"] / r["train"] + eval_images / r["inference"]
    seconds = seeds * FINE_TUNES_PER_SEED * per_fine_tune + ZERO_SHOT_MODELS * eval_images / r["inference"]
    return seconds / 3600 * DATASHEET_TFLOPS["H100"] / DATASHEET_TFLOPS[gpu]


def table() -> str:
    lines = ["| dataset | train / val / test images | epochs | H100 h, 1 seed (3 seeds) | A100 h, 1 seed | "
             "decoded cache on disk | rates from |", "|---|---|---|---|---|---|---|"]
    for name, d in DATASETS.items():
        disk = (d["train"] + d["val"] + d["test"]) * DECODED_BYTES_PER_IMAGE / 1e9
        lines.append(f"| {name} | {d['train']:,} / {d['val']:,} / {d['test']:,} | {d['epochs']} "
                     f"| {hours(name):.1f} ({hours(name, 3):.1f}) | {hours(name, gpu='A100'):.0f} | {disk:.0f} GB "
                     f"| {rates(name)['source']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
