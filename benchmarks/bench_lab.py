"""Benchmark and sanity report of the lab world (lt_utils.lab).

Prints: data generation time; cold pre-training time per lab model; zero-shot accuracy on the downstream test set
per TRUE P-tercile; kNN accuracy (k=20, cosine, bank = val) of frozen pre-projection features per P-tercile;
the Spearman correlation between the true prior and a quick estimate (mean zero-shot softmax on val); the share of
zero-shot errors that stay inside the super-class (sibling confusion).

    python benchmarks/bench_lab.py                 # cold: a temporary cache, all five models
    python benchmarks/bench_lab.py --cache         # use (and fill) the normal cache (LT_CACHE_DIR)
    python benchmarks/bench_lab.py --models lab-clip --grid /tmp/lab_grid.png
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lt_utils import lab  # noqa: E402
from lt_utils.groups import rank_groups  # noqa: E402


def knn_accuracy(bank, bank_labels, query, query_labels, k=20):
    """Per-sample correctness of a cosine kNN vote (votes weighted by similarity)."""
    bank, query = F.normalize(bank, dim=-1), F.normalize(query, dim=-1)
    sims, idx = (query @ bank.T).topk(k, dim=-1)
    votes = torch.zeros(len(query), lab.NUM_CLASSES).scatter_add_(1, bank_labels[idx], sims)
    return (votes.argmax(-1) == query_labels).float()


def group_mean(correct, labels, groups, num_groups=3):
    per_class = torch.zeros(lab.NUM_CLASSES).index_add_(0, labels, correct) / torch.bincount(
        labels, minlength=lab.NUM_CLASSES).clamp(min=1)
    return [per_class[groups == g].mean().item() * 100 for g in range(num_groups)]


def save_grid(world, path, per_class=4):
    """Rows = super-classes, columns = 5 siblings x ``per_class`` test images, upscaled 3x."""
    from torchvision.utils import save_image
    images, _ = world.examples(per_class=per_class, split="test")
    images = images.view(20, 5 * per_class, 3, lab.IMAGE_SIZE, lab.IMAGE_SIZE).flatten(0, 1).float() / 255
    images = F.interpolate(images, scale_factor=3, mode="nearest")
    save_image(images, path, nrow=5 * per_class, padding=2, pad_value=1.0)
    print(f"sample grid -> {path} (rows: {', '.join(lab.SUPERCLASS_NAMES)}; siblings left to right)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", default=list(lab.LAB_MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", action="store_true", help="use the normal cache instead of a cold temporary one")
    ap.add_argument("--grid", default=None, help="write a sample grid PNG here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if not args.cache:
        os.environ["LT_CACHE_DIR"] = tempfile.mkdtemp(prefix="lt_bench_lab_")
    print(f"threads {torch.get_num_threads()}, cache {os.environ.get('LT_CACHE_DIR', '(default)')}")

    t = time.perf_counter()
    world = lab.make_world(args.seed)
    t_world = time.perf_counter() - t
    t = time.perf_counter()
    lab.make_world(args.seed)
    t_load = time.perf_counter() - t
    sizes = "/".join(str(len(d.targets)) for d in (world.train, world.val, world.test))
    print(f"make_world: {t_world:.2f} s{' (cold)' if not args.cache else ''}, cached reload {t_load:.2f} s, "
          f"train/val/test = {sizes}")
    t = time.perf_counter()
    corpus = lab.upstream_corpus(args.models[0], args.seed)
    print(f"upstream_corpus({args.models[0]}): {len(corpus.targets)} images in {time.perf_counter() - t:.2f} s")
    if args.grid:
        save_grid(world, args.grid)

    d_groups = rank_groups(world.train.class_counts.float(), lab.D_GROUP_SIZES)
    rows, total_pretrain = [], 0.0
    for name in args.models:
        t = time.perf_counter()
        ckpt = lab.pretrain(name, args.seed)
        dt = time.perf_counter() - t
        total_pretrain += dt
        visual = lab.build_vit()
        visual.load_state_dict(ckpt["state_dict"])
        visual.eval()
        text = ckpt["class_embeddings"]
        prior = world.upstream_priors[name]
        p_groups = rank_groups(prior, lab.P_GROUP_SIZES)

        test_emb = lab.encode_images(visual, world.test.images)
        logits = ckpt["logit_scale"] * F.normalize(test_emb, dim=-1) @ F.normalize(text, dim=-1).T
        pred, labels = logits.argmax(-1), world.test.targets
        zs_correct = (pred == labels).float()
        wrong = pred != labels
        sibling = (lab.SUPERCLASS[pred[wrong]] == lab.SUPERCLASS[labels[wrong]]).float().mean().item() * 100

        val_emb = lab.encode_images(visual, world.val.images)
        val_logits = ckpt["logit_scale"] * F.normalize(val_emb, dim=-1) @ F.normalize(text, dim=-1).T
        estimate = val_logits.softmax(-1).mean(0)
        rho = spearmanr(prior.numpy(), estimate.numpy()).statistic

        bank = lab.encode_images(visual, world.val.images, project=False)
        query = lab.encode_images(visual, world.test.images, project=False)
        knn_correct = knn_accuracy(bank, world.val.targets, query, labels)
        rows.append((name, dt, ckpt.get("final_loss", float("nan")), zs_correct.mean().item() * 100,
                     group_mean(zs_correct, labels, p_groups), group_mean(zs_correct, labels, d_groups),
                     knn_correct.mean().item() * 100, group_mean(knn_correct, labels, p_groups), rho, sibling))

    print()
    print(f"{'model':<14}{'pretrain s':>11}{'loss':>7}{'zero-shot':>10}  {'ZS P-Many/Med/Few':<19}"
          f"{'ZS D-Many/Med/Few':<19}{'kNN':>6}  {'kNN P-Many/Med/Few':<19}{'rho':>6}{'sib%':>6}")
    for name, dt, loss, zs, zs_p, zs_d, knn, knn_p, rho, sib in rows:
        fmt = lambda xs: "/".join(f"{x:.1f}" for x in xs)  # noqa: E731
        print(f"{name:<14}{dt:>11.1f}{loss:>7.3f}{zs:>10.1f}  {fmt(zs_p):<19}{fmt(zs_d):<19}{knn:>6.1f}  "
              f"{fmt(knn_p):<19}{rho:>6.2f}{sib:>6.1f}")
    print(f"\ntotal pre-training time ({len(args.models)} models): {total_pretrain:.1f} s")
    print("ZS = zero-shot on the downstream test set (100/class); P-groups = terciles (34/33/33) of the model's TRUE "
          "prior;\nkNN: k=20 cosine on pre-projection features, bank = val (20/class); rho = Spearman(true prior, "
          "mean zero-shot softmax on val);\nsib% = share of zero-shot errors that predict a sibling (same "
          "super-class).")


if __name__ == "__main__":
    main()
