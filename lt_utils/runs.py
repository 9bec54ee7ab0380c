"""The cached runs every chapter calls: ``zero_shot`` and ``fine_tune`` of a foundation model under a profile,
the pre-training prior estimate, and the classifier of a cached run."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset

from .augment import TensorAugment, preprocessing
from .cache import cache_dir, cache_key, cached
from .data import InMemoryDataset, dataset_spec, is_in_memory, load_dataset
from .decoded import decode_size, decoded_dataset
from .distributed import any_rank, broadcast_object, dist_info, gather_rows, shard_range
from .losses import LOSS_NAMES, make_loss
from .metrics import knn_predict, predict
from .models import build_classifier, load_foundation_model, model_modules
from .prior import estimate_prior
from .profiles import Profile, set_seed
from .profiles import profile as get_profile
from .training import load_trainable_state, train, trainable_state


# The lt_utils modules whose code a zero-shot / fine-tuning run executes (their source is part of the cache key),
# besides the modules that load the run's dataset and model (``run_modules``).
ZERO_SHOT_MODULES = ("runs", "profiles", "data", "decoded", "augment", "models", "metrics", "distributed")
FINE_TUNE_MODULES = ZERO_SHOT_MODULES + ("peft", "losses", "training", "prior")


def resolve_profile(profile) -> Profile:
    """``profile`` itself, or the profile of that name (None: ``$LT_PROFILE``)."""
    return profile if isinstance(profile, Profile) else get_profile(profile)


def run_modules(profile: Profile, model_name: str, base: tuple) -> tuple:
    """``base`` plus the modules that make the profile's dataset and the model (e.g. ``"lab"``)."""
    return tuple(dict.fromkeys(base + dataset_spec(profile.dataset).modules + model_modules(model_name)))


def _data_key(profile: Profile) -> dict:
    """The profile settings that change the data and the model inputs."""
    return dict(dataset=profile.dataset, imbalance_ratio=profile.imbalance_ratio, image_size=profile.image_size,
                tte=profile.tte)


def _load_split(profile: Profile, split: str, image_size: int, progress: bool = True) -> InMemoryDataset:
    """One split of the profile's dataset in memory: image-file datasets (ImageNet-LT, Places-LT, iNat) decoded once
    for a model of ``image_size`` into a memory-mapped uint8 tensor (``_decoded``)."""
    # a chapter opened first on a fresh runtime fetches CIFAR itself; the image-file datasets (a licence, or 120 GB)
    # are never downloaded
    data = load_dataset(profile.dataset, profile.data_root, split, imbalance_ratio=profile.imbalance_ratio,
                        download=dataset_spec(profile.dataset).downloadable)
    return data if is_in_memory(data) else _decoded(data, image_size, progress)


def _load_splits(profile: Profile, fm, progress: bool = True) -> dict:
    """train/val/test of the profile's dataset: three disjoint splits (CIFAR-100-LT's val is held out of its test
    images), all in memory and transformed batch-wise on the device (``test_transform``)."""
    return {split: _load_split(profile, split, fm.image_size, progress) for split in ("train", "val", "test")}


def load_split(profile=None, split: str = "train", progress: bool = True) -> InMemoryDataset:
    """One split of the profile's dataset, as ``zero_shot`` and ``fine_tune`` see it. Used by chapters 1-4.

    Args:
        profile: a ``Profile`` or its name (None: ``$LT_PROFILE``).
        split: ``"train"``, ``"val"`` or ``"test"`` (three disjoint splits; see ``lt.load_dataset``).
        progress: show a progress bar while image files are decoded.

    Returns:
        An in-memory dataset (uint8 ``.images``, ``.targets``, ``.classnames``, ``.class_counts``,
        ``.group_counts``, ``.ids``): the lab's world, CIFAR-100-LT (downloaded when missing) at the profile's
        imbalance ratio, or ImageNet-LT / Places-LT / iNaturalist 2018 decoded once for the profile's image size
        (``lt_utils.decoded``; later calls open the file).
    """
    profile = resolve_profile(profile)
    return _load_split(profile, split, profile.image_size, progress and dist_info()[1] == 0)


def _decoded(data, image_size: int, progress: bool) -> InMemoryDataset:
    """``data``'s images decoded at ``decode_size(image_size)`` into a memory-mapped file (made once,
    ``lt_utils.decoded``): the fast in-memory path, batched augmentation on the device. Under torchrun rank 0
    decodes while the others wait, then they open the finished file."""
    size, rank = decode_size(image_size), dist_info()[1]
    if rank == 0:
        try:
            decoded = decoded_dataset(data, size, progress=progress)
        except Exception:
            any_rank(True)  # the other ranks stop too, rather than wait for a file that never comes
            raise
    if any_rank(False):
        raise RuntimeError("Rank 0 failed to decode the dataset (its error is in its output): this rank stops too.")
    return decoded if rank == 0 else decoded_dataset(data, size, progress=False)


def _batch_transform(profile: Profile, model, train: bool) -> TensorAugment:
    """Batched uint8 -> normalised float on the device, for in-memory datasets. Lab images are drawn at the
    model's size; CIFAR follows LIFT (``lt_utils.augment.preprocessing``), with its five-crop test-time
    ensembling when ``profile.tte``."""
    return preprocessing(model, train=train, native_size=profile.dataset == "lab", five_crop=profile.tte)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def report_run(what: str, from_cache: bool, seconds: float | None) -> None:
    """The one line a load-or-train call prints: a reader can tell a two-minute training from a file load."""
    took = "" if seconds is None else f" in {_clock(seconds)}"
    print(f"{what}: loaded from the cache (computed{took} when it was made)" if from_cache
          else f"{what}: computed{took}")


def _rows(data, start: int, stop: int):
    """Rows ``[start, stop)`` of a dataset without copying images: a view of an in-memory dataset's tensor (of a
    memory-mapped file too), else a ``Subset``."""
    if not is_in_memory(data):
        return Subset(data, range(start, stop))
    ids, group_counts = getattr(data, "ids", None), getattr(data, "group_counts", None)
    return InMemoryDataset(data.images[start:stop], torch.as_tensor(data.targets)[start:stop], data.classnames,
                           ids=None if ids is None else ids[start:stop], group_counts=group_counts)


def _predict_splits(model, splits: dict, profile: Profile, fm, device, progress: bool = True) -> dict:
    """Logits, features and labels on val and test. Under torchrun each rank predicts its contiguous slice of a
    split (``shard_range``) and the slices are gathered, so every rank holds all the outputs, in order."""
    sharded, rank, world_size = dist_info()
    out = {}
    for split in ("val", "test"):
        data = splits[split]
        transform = _batch_transform(profile, fm, train=False) if is_in_memory(data) else None
        if sharded:  # an empty slice (fewer rows than ranks) predicts one row and keeps none: predict needs one
            start, stop = shard_range(len(data), rank, world_size)
            part = _rows(data, start, stop) if stop > start else _rows(data, 0, 1)
        result = predict(model, part if sharded else data, device=device, transform=transform,
                         num_workers=profile.num_workers, progress=progress)
        if sharded:
            result = {k: gather_rows(v[:stop - start], len(data)) if isinstance(v, torch.Tensor) else v
                      for k, v in result.items()}
        out[split] = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in result.items()}
        if getattr(data, "ids", None) is not None:  # sample ids: a kNN probe can prove bank and queries disjoint
            out[split]["ids"] = torch.as_tensor(data.ids).cpu()
    return out


def knn_predict_sharded(bank_feats, bank_labels, query_feats, **kw) -> torch.Tensor:
    """``lt.knn_predict`` (same arguments, same scores) with the queries split among the ranks of a torchrun job:
    each rank scores its contiguous slice (``shard_range``) against the whole bank and the slices are gathered, so
    every rank returns all the scores, in order. ``query_ids`` is split with the queries. An error on any rank
    (a query in the bank, NaN features) stops every rank. One process: ``knn_predict`` itself."""
    sharded, rank, world_size = dist_info()
    if not sharded:
        return knn_predict(bank_feats, bank_labels, query_feats, **kw)
    query = torch.as_tensor(query_feats)
    if kw.get("query_ids") is not None:
        query_ids = torch.as_tensor(kw["query_ids"])
        if query_ids.shape != (len(query),):
            raise ValueError(f"query_ids must hold one id per query ({len(query)}), got shape "
                             f"{tuple(query_ids.shape)}.")
        kw["query_ids"] = query_ids[slice(*shard_range(len(query), rank, world_size))]
    scores, error = None, None
    try:
        scores = knn_predict(bank_feats, bank_labels, query[slice(*shard_range(len(query), rank, world_size))],
                             **kw)
    except Exception as err:  # noqa: BLE001 - raised below on every rank, not only this one
        error = err
    if any_rank(error is not None):
        raise error or RuntimeError("The sharded kNN failed on another rank (its error is in its output).")
    return gather_rows(scores, len(query))


def _cached_on_all_ranks(kind: str, key: dict, compute, depends_on) -> dict:
    """``cached`` for every rank of a torchrun job alike. The computations hold collectives (DDP, gathered
    predictions): a rank that loads while another computes would leave it waiting forever, so rank 0 alone
    looks in the cache and tells the others whether to compute with it, and every rank returns rank 0's value
    (the one stored). One process: ``cached`` itself."""
    if not dist_info()[0]:
        return cached(kind, key, compute, depends_on=depends_on)
    if dist_info()[1] != 0:
        decision = broadcast_object()
        if decision != "compute" and decision != "loaded":
            raise RuntimeError(f"Rank 0 could not load or compute the {kind} result: {decision}")
        if decision == "compute":
            compute()  # with rank 0: this rank's value is dropped for rank 0's, which differs only in timings
        return broadcast_object()
    told = []

    def compute_with_all():
        told.append(broadcast_object("compute"))
        return compute()

    try:
        value = cached(kind, key, compute_with_all, depends_on=depends_on)
    except Exception as err:
        if not told:  # failed before the others joined (e.g. LT_CACHE_ONLY): they stop with it
            broadcast_object(f"{type(err).__name__}: {err}")
        raise
    if not told:
        broadcast_object("loaded")
    return broadcast_object(value)


def zero_shot(profile=None, model_name: str | None = None, progress: bool = True) -> dict:
    """The frozen foundation model's zero-shot logits and pre-projection features on val and test (cached).

    Taught in chapter 1 (zero-shot accuracy is not lowest on D-Few) and used in chapters 2-5.

    Args:
        profile: a ``Profile`` or its name (None: ``$LT_PROFILE``).
        model_name: a ``lt.models.FOUNDATION_MODELS`` name, e.g. ``cfg.models[0]``. Real CLIP models use the
            80-prompt template ensemble; the lab models look their class embeddings up.
        progress: show progress bars, and one line saying whether the run was computed or loaded.

    Returns:
        ``dict(model, templates, eval_time_s, from_cache, val=dict(logits, features, labels), test=dict(...))``,
        tensors on the CPU; ``from_cache`` says whether it was loaded rather than computed now.
    """
    profile = resolve_profile(profile)
    if not model_name:
        raise ValueError(f"Name a foundation model, e.g. one of {profile.models}.")
    progress = progress and dist_info()[1] == 0  # under torchrun: rank 0's bars and line only
    templates = "single" if profile.dataset == "lab" else "ensemble"
    key = dict(_data_key(profile), model=model_name, templates=templates)

    computed = []

    def compute():
        start = time.perf_counter()
        fm = load_foundation_model(model_name, device=profile.device)
        splits = _load_splits(profile, fm, progress)
        model = fm.zero_shot_classifier(splits["test"].classnames, templates=templates)
        outputs = _predict_splits(model, splits, profile, fm, profile.device, progress)
        computed.append(True)
        return dict(model=model_name, templates=templates, eval_time_s=time.perf_counter() - start, **outputs)

    result = _cached_on_all_ranks("zeroshot", key, compute,
                                  depends_on=run_modules(profile, model_name, ZERO_SHOT_MODULES))
    result = dict(result, from_cache=not computed)
    if progress:
        report_run(f"zero-shot {model_name}", result["from_cache"], result.get("eval_time_s"))
    return result


def estimate_pretrain_prior(profile=None, model_name: str | None = None) -> torch.Tensor:
    """GLA's estimate of a foundation model's pre-training prior, from its zero-shot logits on the val set.

    Taught in chapter 2 (where ``lt.estimate_prior`` is written out); used in chapters 3-5.

    Args:
        profile: a ``Profile`` or its name (None: ``$LT_PROFILE``).
        model_name: a foundation model name.

    Returns:
        FloatTensor with one probability per class (sums to 1).
    """
    val = zero_shot(profile, model_name)["val"]
    return estimate_prior(val["logits"], val["labels"])


def fine_tune(profile=None, model_name: str | None = None, loss: str = "la", seed: int = 0, peft: str | None = None,
              epochs: int | None = None, pretrain_prior=None, progress: bool = True) -> dict:
    """Fine-tune one foundation model on the profile's long-tailed training set (load-or-compute, cached).

    The chapters' one call (chapters 1-5): PEFT + cosine head initialised from the text features, trained by
    ``lt.training.train`` with the profile's recipe, then evaluated on val and test. The cache key holds the
    profile settings that matter, the model, loss, seed, PEFT, epochs and the prior, and the source of the
    modules the run executes; an interrupted run resumes from its last epoch.

    Args:
        profile: a ``Profile`` or its name (None: ``$LT_PROFILE``).
        model_name: a foundation model name, e.g. ``cfg.models[0]``.
        loss: ``"ce" | "la" | "bs" | "gla_train"`` (see ``lt.losses.make_loss``).
        seed: seeds the adapters' initialisation, the data order and the augmentation.
        peft: the PEFT method (default: the profile's, AdaptFormer).
        epochs: default: the profile's.
        pretrain_prior: the prior GLA-Train subtracts; None: GLA's estimate from the zero-shot logits.
        progress: show progress bars, and one line saying whether the run was trained or loaded.

    Returns:
        On the CPU: ``dict(model, loss, seed, peft, epochs, history, trainable_state, trainable_params,
        classnames, class_counts, data_prior, pretrain_prior, train_time_s, from_cache, val=dict(logits,
        features, labels), test=dict(...))``; ``from_cache`` says whether it was loaded rather than trained now.
    """
    profile = resolve_profile(profile)
    if not model_name:
        raise ValueError(f"Name a foundation model, e.g. one of {profile.models}.")
    if loss not in LOSS_NAMES:
        raise ValueError(f"Unknown loss {loss!r}; choose one of {', '.join(LOSS_NAMES)}.")
    progress = progress and dist_info()[1] == 0  # under torchrun: rank 0's bars and line only
    peft = peft or profile.peft
    epochs = profile.epochs if epochs is None else int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if loss != "gla_train":
        pretrain_prior = None  # only GLA-Train's loss uses it
    elif pretrain_prior is None:
        pretrain_prior = estimate_pretrain_prior(profile, model_name)
    if pretrain_prior is not None:
        pretrain_prior = torch.as_tensor(pretrain_prior, dtype=torch.float32).cpu()
    key = dict(_data_key(profile), model=model_name, loss=loss, seed=int(seed), peft=peft, epochs=epochs,
               batch_size=profile.batch_size, lr=profile.lr, momentum=profile.momentum,
               weight_decay=profile.weight_decay, tau=profile.tau, amp=profile.amp,
               pretrain_prior=None if pretrain_prior is None else [round(p, 8) for p in pretrain_prior.tolist()])
    modules = run_modules(profile, model_name, FINE_TUNE_MODULES)
    checkpoint_dir = cache_dir() / "finetune_checkpoints" / cache_key(key, modules)
    # the run's identity (model, PEFT, loss, seed, data, prior), checked when a checkpoint is resumed
    run_fingerprint = dict(model=model_name, peft=peft, loss=loss, seed=int(seed), epochs=epochs,
                           data=_data_key(profile), tau=profile.tau, pretrain_prior=key["pretrain_prior"])

    computed = []

    def compute():
        computed.append(True)
        device = profile.device
        fm = load_foundation_model(model_name, device=device)
        splits = _load_splits(profile, fm, progress)
        train_set = splits["train"]
        # the adapters' random init is part of the run: seed it, so the same seed gives the same result in any
        # process (whatever ran before it there, e.g. pre-training a lab model)
        set_seed(seed)
        model = build_classifier(fm, train_set.classnames, peft=peft)
        class_counts = torch.as_tensor(train_set.class_counts).long().cpu()
        data_prior = class_counts.double() / class_counts.sum()
        loss_fn = make_loss(loss, data_prior.float(), pretrain_prior, profile.tau)
        augment = _batch_transform(profile, fm, train=True) if is_in_memory(train_set) else None
        start = time.perf_counter()
        history = train(model, train_set, loss_fn, epochs=epochs, batch_size=profile.batch_size,
                        micro_batch_size=profile.micro_batch_size, lr=profile.lr, momentum=profile.momentum,
                        weight_decay=profile.weight_decay, device=device, amp=profile.amp, seed=seed,
                        augment=augment, checkpoint_dir=checkpoint_dir, progress=progress,
                        num_workers=profile.num_workers, run_fingerprint=run_fingerprint)
        train_time_s = time.perf_counter() - start
        outputs = _predict_splits(model, splits, profile, fm, device, progress)
        return dict(model=model_name, loss=loss, seed=int(seed), peft=peft, epochs=epochs, history=history,
                    trainable_state=trainable_state(model, buffers=False),
                    trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
                    classnames=list(train_set.classnames), class_counts=class_counts,
                    group_counts=torch.as_tensor(train_set.group_counts).long().cpu(),
                    data_prior=data_prior.float(), pretrain_prior=pretrain_prior, train_time_s=train_time_s,
                    **outputs)

    result = _cached_on_all_ranks("finetune", key, compute, depends_on=modules)
    if dist_info()[1] == 0:  # only now is the result on disk: a failed save keeps the epochs to resume from
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    result = dict(result, from_cache=not computed)
    if progress:
        report_run(f"fine-tune {model_name}, {loss.upper()}, seed {seed}", result["from_cache"],
                   result["train_time_s"])
    return result


def load_fine_tuned(profile=None, model_name: str | None = None, loss: str = "la", seed: int = 0,
                    peft: str | None = None, epochs: int | None = None, pretrain_prior=None) -> nn.Module:
    """The classifier of a ``fine_tune`` run, for analyses that need the model itself (chapter 4: Grad-CAM and
    inference cost), not just its cached outputs.

    Args:
        profile, model_name, loss, seed, peft, epochs, pretrain_prior: as for ``fine_tune`` (the run is
            fine-tuned first when it is not cached yet).

    Returns:
        The ``Classifier`` with its trained weights, in eval mode on the profile's device.
    """
    profile = resolve_profile(profile)
    run = fine_tune(profile, model_name, loss=loss, seed=seed, peft=peft, epochs=epochs,
                    pretrain_prior=pretrain_prior, progress=False)
    fm = load_foundation_model(model_name, device=profile.device)
    model = build_classifier(fm, run["classnames"], peft=run["peft"], copy=False)
    load_trainable_state(model, run["trainable_state"], Path(f"the cached {loss} run of {model_name}"))
    return model.to(profile.device).eval()


def test_transform(profile, model) -> TensorAugment:
    """The test-time preprocessing that ``fine_tune`` and ``zero_shot`` use (chapter 4 times models with it).

    Args:
        profile: a ``Profile`` or its name.
        model: a foundation model or classifier (it carries ``image_size``, ``mean`` and ``std``).

    Returns:
        A ``TensorAugment``: uint8 batch -> normalised float batch, on the batch's device.
    """
    return _batch_transform(resolve_profile(profile), model, train=False)
