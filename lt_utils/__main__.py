"""Command line: the official two-stage recipe.

    python -m lt_utils train --profile lab --model lab-clip --loss la --out runs/lab-clip      # stage 1
    python -m lt_utils eval --runs runs/lab-clip runs/lab-openclip runs/lab-metaclip --out ensemble.json  # 2
    python -m lt_utils estimate-prior --profile lab --model lab-clip --out prior.json
    python -m lt_utils cache export results.zip        # a teacher, after running the chapters (on a GPU)
    python -m lt_utils cache import results.zip        # each student, before opening the chapters
    python -m lt_utils paper --dataset imagenet_lt --out runs/imagenet_lt   # the paper's tables, one command

Stage 1 fine-tunes one foundation model and writes a run folder; stage 2 combines several run folders by
backdoor adjustment, without a forward pass. Multi-GPU: ``torchrun --nproc_per_node=N -m lt_utils train ...``.
``cache export`` / ``cache import`` carry the results cache in one checked zip archive: one GPU run serves a class.
``paper`` runs the paper's experiments on ImageNet-LT, Places-LT or iNaturalist 2018 (``lt_utils.paper``), also
under ``torchrun --nproc_per_node=N -m lt_utils paper ...``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch

from .version import __version__
from .backdoor import BACKDOOR_MODES, backdoor_adjust
from .cache import atomic_torch_save, atomic_write_text, export_cache, import_cache, safe_torch_load
from .distributed import dist_info
from .groups import data_groups, prior_groups
from .lab import upstream_priors
from .losses import LOSS_NAMES
from .checks import check_finite
from .metrics import accuracy, accuracy_report
from .models import build_classifier, load_foundation_model, save_checkpoint
from .paper import RESULT_FILES, json_ready, run_paper
from .peft import PEFT_METHODS
from .prior import rank_correlation
from .profiles import PAPER_EPOCHS, PROFILE_NAMES, paper_profile
from .profiles import profile as get_profile
from .runs import estimate_pretrain_prior, fine_tune, zero_shot

RUN_FILES = dict(config="config.json", metrics="metrics.json", weights="adapter_head.safetensors",
                 logits="logits.pt")
RUN_ENTRIES = ("model", "test", "class_counts", "pretrain_prior_estimate")  # what `eval` reads from logits.pt


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m lt_utils`` (sub-commands train, eval, estimate-prior, cache)."""
    parser = argparse.ArgumentParser(
        prog="python -m lt_utils", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune foundation models on a long-tailed set (stage 1) and combine them by backdoor "
                    "adjustment (stage 2), as in Chen et al. (ICML 2025).",
        epilog="examples:\n"
               "  python -m lt_utils train --profile lab --model lab-clip --out runs/lab-clip\n"
               "  python -m lt_utils eval --runs runs/lab-clip runs/lab-openclip runs/lab-metaclip "
               "--out runs/ensemble.json\n"
               "  python -m lt_utils estimate-prior --profile lab --model lab-clip\n"
               "  python -m lt_utils cache export results.zip    # share the cached results with a class\n"
               "  python -m lt_utils cache import results.zip    # students: the chapters then train nothing\n"
               "Results are cached under $LT_CACHE_DIR (default ~/.cache/lt_utils).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    profile_help = f"settings profile, one of {', '.join(PROFILE_NAMES)} (default: $LT_PROFILE, else lab)"
    p = commands.add_parser(
        "train", help="stage 1: fine-tune one foundation model and write a run folder",
        description="Stage 1: fine-tune one foundation model (PEFT + cosine head) with the profile's recipe and "
                    "write RUN_DIR/config.json (resolved settings), metrics.json (overall, D-group and P-group "
                    f"test accuracy), {RUN_FILES['weights']} (adapter + head weights) and {RUN_FILES['logits']} "
                    "(val/test logits and labels, for stage 2).")
    p.add_argument("--profile", choices=PROFILE_NAMES, default=None, help=profile_help)
    p.add_argument("--model", required=True, help="foundation model name, e.g. lab-clip or clip "
                                                   "(see lt_utils.FOUNDATION_MODELS)")
    p.add_argument("--loss", choices=LOSS_NAMES, default="la",
                   help="training loss: ce, la (logit adjustment, default), bs (balanced softmax), gla_train "
                        "(LA plus the estimated pre-training prior)")
    p.add_argument("--seed", type=int, default=0, help="fine-tuning seed (data order, augmentation; default 0)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="epochs (default: the profile's)")
    p.add_argument("--peft", choices=PEFT_METHODS, default=None, help="PEFT method (default: the profile's, adaptformer)")
    p.add_argument("--distributed", action="store_true",
                   help="train with DDP under torchrun (torchrun --nproc_per_node=N -m lt_utils train ...)")
    p.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="run folder to write")

    p = commands.add_parser(
        "eval", help="stage 2: combine run folders by backdoor adjustment",
        description="Stage 2: backdoor adjustment of several stage-1 runs (no forward pass): fuse their test "
                    "logits and report overall, D-group and (per member's prior) P-group accuracy, next to each "
                    "member's own accuracy.")
    p.add_argument("--runs", nargs="+", required=True, type=Path, metavar="RUN_DIR",
                   help="run folders written by `train` (same profile and data)")
    p.add_argument("--mode", choices=BACKDOOR_MODES, default="logits",
                   help="logits: sum of logits, a product of experts (the official code, default); probs: average "
                        "of softmax probabilities (the paper's equation)")
    p.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per run (default: equal)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="metrics JSON to write (default: print)")

    p = commands.add_parser(
        "estimate-prior", help="GLA estimate of a foundation model's pre-training label prior",
        description="Estimate the pre-training label prior of a foundation model from its zero-shot logits on the "
                    "balanced val set (temperature calibration, then GLA's simplex-constrained fit).")
    p.add_argument("--profile", choices=PROFILE_NAMES, default=None, help=profile_help)
    p.add_argument("--model", required=True, help="foundation model name, e.g. lab-clip or clip")
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="prior JSON to write (default: print)")

    p = commands.add_parser(
        "cache", help="export the results cache to one archive, or import one (one GPU run serves a class)",
        description="Carry cached results to other machines: a teacher runs the chapters once (e.g. on a GPU)\n"
                    "and exports the cache ($LT_CACHE_DIR, default ~/.cache/lt_utils) to one zip archive; each\n"
                    "student imports it, and the chapters load the results instead of training.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m lt_utils cache export results.zip\n"
               "  python -m lt_utils cache export results.zip --kinds zeroshot finetune\n"
               "  python -m lt_utils cache import results.zip\n"
               "  !python -m lt_utils cache import /content/drive/MyDrive/results.zip    # on Colab")
    actions = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    q = actions.add_parser(
        "export", help="write the complete cached results into one zip archive",
        description="Write every complete cached result (its sidecar's SHA-256 matches; checkpoints of unfinished "
                    "runs and corrupt files are left out and reported) and a manifest.json into FILE, atomically.")
    q.add_argument("file", type=Path, metavar="FILE", help="archive to write, e.g. results.zip")
    q.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                   help="only these kinds of results, e.g. zeroshot finetune lab_world lab_pretrain (default: all)")
    q = actions.add_parser(
        "import", help="add the results of an archive to the cache",
        description="Verify FILE completely (manifest, versions, paths, sizes, SHA-256s; nothing is written if "
                    "anything is off), then add its results to the cache. A result already there with other bytes "
                    "is left alone and reported, unless --overwrite.")
    q.add_argument("file", type=Path, metavar="FILE", help="archive written by `cache export`")
    q.add_argument("--overwrite", action="store_true", help="replace cached results that differ from the archive's")
    p = commands.add_parser(
        "paper", help="the paper's experiments on ImageNet-LT, Places-LT or iNaturalist 2018, one results file",
        description="Run the paper's pipeline on one of its datasets: zero-shot and GLA's prior estimate per model, "
                    "then per seed CE / LA / GLA-Train / LA + post-hoc on CLIP, LA on CLIP, OpenCLIP and MetaCLIP "
                    "and their backdoor adjustment, the best single model, the same-backbone control and the kNN "
                    f"probe; write OUT/{RESULT_FILES['json']} and OUT/{RESULT_FILES['csv']}. Every run is cached: "
                    "a second call (or one after a crash) trains only what is missing.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m lt_utils paper --dataset imagenet_lt --data-root /data --out runs/imagenet_lt\n"
               "  torchrun --nproc_per_node=8 -m lt_utils paper --dataset inat2018 --seeds 0 1 2 --out runs/inat\n"
               "Data layout and GPU hours: README, section 'Reproduce the paper's tables'.")
    p.add_argument("--dataset", required=True, choices=tuple(PAPER_EPOCHS), help="the paper's dataset")
    p.add_argument("--out", required=True, type=Path, metavar="OUT", help="results folder to write")
    p.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                   help="the folder with the images and split files (default: $LT_DATA_ROOT, else ~/data)")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="where runs are cached and resumed (default: $LT_CACHE_DIR, else OUT/cache)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="fine-tuning seeds (default: 0)")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="the ensemble's foundation models (default: clip openclip metaclip); the first one also "
                        "gets CE, GLA-Train and the post-hoc method")
    p.add_argument("--control-models", nargs="+", default=None, metavar="MODEL",
                   help="the same-backbone control's members (default: clip clip clip)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"epochs (default: the paper's, {', '.join(f'{d} {e}' for d, e in PAPER_EPOCHS.items())})")
    p.add_argument("--micro-batch-size", type=_positive_int, default=None,
                   help="split the batch of 128 into micro-batches of this size (same update, less memory)")
    p.add_argument("--tte", action="store_true", help="LIFT's five-crop test-time ensembling in evaluation")
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    for sub in (*commands.choices.values(), *actions.choices.values()):
        sub.set_defaults(subparser=sub)  # bad input: print this command's usage, not the top-level one
    return parser


def _report(logits, labels, d_groups, p_groups=None) -> dict:
    """JSON-able accuracy summary in percent (a group without classes is null)."""
    report = accuracy_report(logits, labels, d_groups, p_groups)
    keep = ("overall", "mean_per_class", "d_group", "p_group", "matrix")
    return {k: json_ready(report[k]) for k in keep if k in report}


def _check_out(path: Path | None, folder: bool) -> None:
    """Refuse an --out that cannot be written before any work is done (training takes minutes)."""
    if path is None:
        return
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; give a folder (RUN_DIR) to write the run into.")
    if not folder and path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name, e.g. {path / 'result.json'}.")
    ancestor = path if folder else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"--out {path} cannot be created: {ancestor} is a file, not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path} cannot be created: no write permission in {ancestor}.")


@contextlib.contextmanager
def _writing(path: Path):
    """A failed write (disk full, permissions) as a usage error that names the path."""
    try:
        yield
    except OSError as err:
        raise ValueError(f"could not write {path} ({err}); choose another --out.") from err


def _write_json(obj, path: Path | None) -> None:
    text = json.dumps(obj, indent=1, allow_nan=False)
    if path is None:
        print(text)
    else:
        with _writing(path):
            atomic_write_text(text + "\n", path)
        print(f"wrote {path}")


def cmd_train(args) -> None:
    profile = args.profile
    _check_out(args.out, folder=True)
    if args.distributed:
        dist_info(True)
    result = fine_tune(profile, args.model, loss=args.loss, seed=args.seed, peft=args.peft, epochs=args.epochs)
    if dist_info()[1] != 0:
        return  # rank 0 writes the run folder
    pretrain_prior = estimate_pretrain_prior(profile, args.model)
    d_groups = data_groups(result["class_counts"], reference=result["group_counts"])  # IR 100's groups at any IR
    p_groups = prior_groups(pretrain_prior)
    test, val = result["test"], result["val"]
    metrics = dict(test=_report(test["logits"], test["labels"], d_groups, p_groups),
                   val=_report(val["logits"], val["labels"], d_groups, p_groups),
                   groups=dict(d="D-Many/Medium/Few: > 100, 20-100, < 20 training images",
                               p="P-Many/Medium/Few: terciles of GLA's estimate of the pre-training prior"),
                   train_time_s=result["train_time_s"], history=result["history"])

    out = args.out
    model = build_classifier(load_foundation_model(args.model, device="cpu"), result["classnames"],
                             peft=result["peft"])
    model.load_state_dict(result["trainable_state"], strict=False)
    logits = {split: {k: result[split][k] for k in ("logits", "labels")} for split in ("val", "test")}
    config = dict(command="train", model=args.model, loss=args.loss, seed=args.seed, peft=result["peft"],
                  epochs=result["epochs"], trainable_params=result["trainable_params"],
                  profile=profile.as_dict(), lt_utils_version=__version__)
    with _writing(out):  # the training is cached: another --out costs no second run
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out / RUN_FILES["weights"], model, meta=dict(model=args.model, loss=args.loss,
                                                                      seed=args.seed, peft=result["peft"],
                                                                      epochs=result["epochs"]))
        atomic_torch_save(dict(model=args.model, **logits, class_counts=result["class_counts"],
                               group_counts=result["group_counts"], pretrain_prior_estimate=pretrain_prior),
                          out / RUN_FILES["logits"])
        atomic_write_text(json.dumps(config, indent=1) + "\n", out / RUN_FILES["config"])
        atomic_write_text(json.dumps(metrics, indent=1, allow_nan=False) + "\n", out / RUN_FILES["metrics"])
    t = metrics["test"]
    print(f"{args.model} ({args.loss}, seed {args.seed}): test accuracy {t['overall']:.2f}%  "
          f"D-groups {_fmt(t['d_group'])}  P-groups {_fmt(t['p_group'])}  -> {out}")


def _fmt(values) -> str:
    return ", ".join("-" if v is None else f"{v:.1f}" for v in values)


def _load_run(run_dir: Path) -> dict:
    """A run folder's logits file, checked: the entries `train` writes, tensors, finite test logits."""
    path = Path(run_dir) / RUN_FILES["logits"]
    make = f"python -m lt_utils train --model NAME --out {run_dir}"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {RUN_FILES['logits']}: make it with `{make}` first.")
    again = f"make it again with `{make}`"
    try:
        run = safe_torch_load(path)
    except RuntimeError as err:  # corrupt or foreign file: bad input, not a crash
        raise ValueError(f"{path} is not a readable torch file: it is damaged or was not written by `train`; "
                         f"{again}.") from err
    if not isinstance(run, dict):
        raise ValueError(f"{path} holds a {type(run).__name__}, not a run (the dict `train` writes); {again}.")
    missing = [k for k in RUN_ENTRIES if k not in run]
    if not missing:
        missing = [f"test.{k}" for k in ("logits", "labels")
                   if not isinstance(run["test"], dict) or k not in run["test"]]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(map(repr, missing))}: it was not written by `train`; {again}.")
    test = run["test"]
    tensors = dict(test_logits=test["logits"], test_labels=test["labels"], class_counts=run["class_counts"],
                   pretrain_prior_estimate=run["pretrain_prior_estimate"])
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: {name} is a {type(value).__name__}, not a tensor; {again}.")
    if test["logits"].ndim != 2 or test["labels"].shape != (len(test["logits"]),):
        raise ValueError(f"{path}: the test logits {tuple(test['logits'].shape)} and labels "
                         f"{tuple(test['labels'].shape)} do not match (N x C and N); {again}.")
    check_finite(test["logits"], f"the test logits of {run_dir}")
    return run


def cmd_eval(args) -> None:
    _check_out(args.out, folder=False)
    runs = [_load_run(r) for r in args.runs]
    names = [str(r) for r in args.runs]
    first = runs[0]
    for name, run in zip(names[1:], runs[1:]):
        if not torch.equal(run["test"]["labels"], first["test"]["labels"]) or \
                not torch.equal(run["class_counts"], first["class_counts"]):
            raise ValueError(f"{name} was evaluated on other data than {names[0]} (labels or class counts differ); "
                             "combine runs of the same profile only.")
    if args.weights is not None and len(args.weights) != len(runs):
        raise ValueError(f"--weights needs one weight per run ({len(runs)}), got {len(args.weights)}.")
    d_groups = data_groups(first["class_counts"], reference=first.get("group_counts"))
    labels = first["test"]["labels"]
    fused = backdoor_adjust([r["test"]["logits"] for r in runs], weights=args.weights, mode=args.mode)
    ensemble = _report(fused, labels, d_groups)
    ensemble["p_group_by_member_prior"] = {
        name: _report(fused, labels, d_groups, prior_groups(run["pretrain_prior_estimate"]))["p_group"]
        for name, run in zip(names, runs)}
    members = {name: _report(run["test"]["logits"], labels, d_groups, prior_groups(run["pretrain_prior_estimate"]))
               for name, run in zip(names, runs)}
    _write_json(dict(command="eval", mode=args.mode, weights=args.weights, runs=names,
                     models=[r["model"] for r in runs], ensemble=ensemble, members=members), args.out)
    member_acc = ", ".join(f"{m['overall']:.2f}" for m in members.values())
    print(f"backdoor adjustment ({args.mode}) of {len(runs)} runs: test accuracy {ensemble['overall']:.2f}% "
          f"(members: {member_acc})", file=sys.stderr)


def cmd_estimate_prior(args) -> None:
    profile = args.profile
    _check_out(args.out, folder=False)
    prior = estimate_pretrain_prior(profile, args.model)
    val = zero_shot(profile, args.model)["val"]
    result = dict(command="estimate-prior", profile=profile.name, model=args.model, prior=prior.tolist(),
                  zero_shot_val_accuracy=accuracy(val["logits"], val["labels"]))
    if profile.dataset == "lab":  # the lab knows the truth
        true_prior = upstream_priors()[args.model]
        result.update(true_prior=true_prior.tolist(), rank_correlation=rank_correlation(true_prior, prior))
    _write_json(result, args.out)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cmd_cache(args) -> None:
    if args.cache_command == "export":
        summary = export_cache(args.file, kinds=args.kinds)
        for path, reason in summary["skipped"]:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        kinds = ", ".join(f"{kind} {n}" for kind, n in summary["kinds"].items())
        skipped = f"; {len(summary['skipped'])} skipped" if summary["skipped"] else ""
        print(f"exported {summary['exported']} cached results ({kinds}; {_megabytes(summary['bytes'])}{skipped}) "
              f"from {summary['cache_dir']} to {summary['archive']}")
        return
    summary = import_cache(args.file, overwrite=args.overwrite)
    for path in summary["conflicts"]:
        print(f"left alone {path}: the cached file differs from the archive's (--overwrite replaces it)",
              file=sys.stderr)
    for note in summary["notes"]:
        print(f"note: {note}", file=sys.stderr)
    parts = [f"{summary['skipped']} already there"]
    if summary["conflicts"]:
        parts.append(f"{len(summary['conflicts'])} differing, left alone")
    if summary["overwritten"]:
        parts.append(f"{len(summary['overwritten'])} replaced")
    print(f"imported {summary['written']} of {summary['entries']} cached results into {summary['cache_dir']} "
          f"({', '.join(parts)})")


def cmd_paper(args) -> None:
    _check_out(args.out, folder=True)
    if args.cache is not None or not os.environ.get("LT_CACHE_DIR"):
        os.environ["LT_CACHE_DIR"] = str((args.cache or args.out / "cache").expanduser().resolve())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist_info(True)  # under torchrun: join the group before any run
    try:
        profile = paper_profile(args.dataset, device=args.device)
    except RuntimeError as err:  # CUDA asked for and absent
        raise ValueError(str(err)) from err
    changes = dict(data_root=str(args.data_root.expanduser()) if args.data_root else profile.data_root,
                   tte=args.tte or profile.tte)
    for field, value in (("models", args.models), ("control_models", args.control_models)):
        if value is not None:
            changes[field] = tuple(value)
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.micro_batch_size is not None:
        changes["micro_batch_size"] = args.micro_batch_size
    results = run_paper(profile.replace(**changes), args.out, seeds=args.seeds)
    if dist_info()[1] != 0:
        return
    width = max(len(row["method"]) for row in results["summary"])
    print(f"{results['dataset']}: {len(results['seeds'])} seed(s), test accuracy (mean over seeds), "
          "D-groups, P-groups")
    for row in results["summary"]:
        groups = [row[f"{p}-{g}"] for p in "DP" for g in ("Many", "Medium", "Few")]
        print(f"  {row['method']:<{width}}  {row['overall']:6.2f}  D {_fmt(groups[:3])}  P {_fmt(groups[3:])}")
    print(f"wrote {args.out / RESULT_FILES['json']} and {args.out / RESULT_FILES['csv']}")


def _resolve_profile(name):
    try:
        return get_profile(name)
    except RuntimeError as err:  # the clip profile without a GPU: a usage problem, not a crash
        raise ValueError(str(err)) from err


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "estimate-prior": cmd_estimate_prior, "cache": cmd_cache,
            "paper": cmd_paper}


def main(argv=None) -> int:
    """Run the CLI; returns the exit status (2 with a usage message for bad arguments, inputs or output paths)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage message on bad arguments
    try:
        if hasattr(args, "profile"):
            args.profile = _resolve_profile(args.profile)
        COMMANDS[args.command](args)
    except (ValueError, OSError) as err:  # OSError (FileNotFoundError too): an unreadable or unwritable path
        args.subparser.print_usage(sys.stderr)
        print(f"{args.subparser.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
