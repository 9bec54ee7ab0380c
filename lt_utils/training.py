"""The one fine-tuning loop, ``train``, following the LIFT recipe the paper uses: SGD over the trainable parameters
only, a cosine schedule stepped once per epoch, a batch of 128 (optionally accumulated over micro-batches), mixed
precision on CUDA. It is seeded, checkpoints every epoch and resumes, and runs unchanged under ``torchrun``
(DDP)."""
from __future__ import annotations

import inspect
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from .cache import atomic_torch_save, atomic_write_text, file_sha256, safe_torch_load
from .data import is_in_memory
from .distributed import any_rank, dist_info
from .phases import phase
from .profiles import get_device, hide_progress

LOG_EVERY = 25  # steps between host syncs for the progress bar (and the NaN check)
CHECKPOINT_NAME = "last.pt"
CHECKSUM_SUFFIX = ".sha256"  # last.pt.sha256, in sha256sum's format
# An in-memory dataset moves to the GPU only when its images take at most this share of the free GPU memory; larger
# ones (memory-mapped files of tens of GB) stay on the host and are batched there.
DEVICE_RESIDENT_FRACTION = 0.25


def epoch_indices(num_samples: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's sample order for one epoch, exactly as ``DistributedSampler(shuffle=True)`` draws it: a
    permutation seeded by ``seed + epoch``, padded by repetition to a multiple of ``world_size``, strided by rank.
    Seeding by epoch (no generator state) makes a resumed run see the same order as an uninterrupted one."""
    g = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(num_samples, generator=g)
    pad = (-num_samples) % world_size
    if pad:
        order = torch.cat([order, order.repeat(math.ceil(pad / num_samples))[:pad]])
    return order[rank::world_size]


def _tensor_batches(images, targets, order, batch_size, device):
    """Batches of an in-memory dataset by index (no DataLoader, no per-sample Python)."""
    order = order.to(device)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield images[idx], targets[idx]


def _keep_on_host(images: torch.Tensor, device: torch.device) -> bool:
    """Whether ``lt.train`` batches ``images`` on the host rather than moving them to ``device``: only on CUDA,
    for host images larger than ``DEVICE_RESIDENT_FRACTION`` of the free GPU memory (on the CPU they stay put)."""
    if device.type != "cuda" or images.device.type == "cuda":
        return False
    return images.nbytes > DEVICE_RESIDENT_FRACTION * torch.cuda.mem_get_info(device)[0]


def _host_batches(images, targets, order, batch_size, device):
    """The batches of ``_tensor_batches`` (same order, same values) from host images too large for the device:
    each is gathered on the host by sorted index (sequential reads of a memory-mapped file) into pinned memory,
    copied without blocking and put back in order on the device; the next batch is gathered in a background thread
    while the device works on this one."""
    pin = device.type == "cuda"
    targets, order_on_device = targets.to(device), order.to(device)

    def gather(start):
        idx, perm = order[start:start + batch_size].sort()
        out = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype, pin_memory=pin)
        return torch.index_select(images, 0, idx, out=out), perm.argsort()  # out[inverse] is the batch

    starts = range(0, len(order), batch_size)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(gather, starts[0])
        for i, start in enumerate(starts):
            host, inverse = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(gather, starts[i + 1])
            x = host.to(device, non_blocking=True)[inverse.to(device)]
            yield x, targets[order_on_device[start:start + batch_size]]


def _num_steps(num_samples: int, batch_size: int, world_size: int) -> int:
    per_rank = math.ceil(num_samples / world_size)
    return math.ceil(per_rank / (batch_size // world_size))


# ----------------------------------------------------------------------------------------------- checkpoints
def trainable_state(model: nn.Module, buffers: bool = True) -> dict[str, torch.Tensor]:
    """The part of the state that training changes (CPU copies): the trainable parameters and, with ``buffers``,
    the buffers (e.g. norm statistics; a checkpoint needs them, a result does not)."""
    keep = {name for name, p in model.named_parameters() if p.requires_grad}
    if buffers:
        keep |= {name for name, _ in model.named_buffers()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in keep}


def load_trainable_state(model: nn.Module, state: dict, path: Path) -> None:
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"The checkpoint {path} does not fit this model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}). Delete it or pass resume=False to start over.")
    model.load_state_dict(state, strict=False)


def _differences(saved, current) -> str:
    """What differs between two fingerprints (dicts: by key), for the error message."""
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = sorted(set(saved) | set(current), key=str)
        return "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint vs {current.get(k)!r} now"
                         for k in keys if saved.get(k) != current.get(k))
    return f"{saved!r} in the checkpoint vs {current!r} now"


def _save_checkpoint(state: dict, path: Path) -> None:
    """Save ``path`` and then its SHA-256 next to it, both atomically. The old checksum goes first: a crash
    between the two writes leaves a checkpoint without a checksum (unverified), never one with a wrong one."""
    checksum = path.with_name(path.name + CHECKSUM_SUFFIX)
    checksum.unlink(missing_ok=True)
    atomic_torch_save(state, path)
    atomic_write_text(f"{file_sha256(path)}  {path.name}\n", checksum)


def _load_checkpoint(path: Path) -> dict:
    """Load ``path`` after checking it against its recorded SHA-256 (a mismatch: corrupt, refused, kept)."""
    checksum = path.with_name(path.name + CHECKSUM_SUFFIX)
    if checksum.is_file():
        recorded = (checksum.read_text().split() or [""])[0]
        if file_sha256(path) != recorded:
            raise ValueError(f"The checkpoint {path} is corrupt: its bytes do not match the SHA-256 recorded in "
                             f"{checksum.name} when it was written. Delete it (and {checksum.name}) or pass "
                             "resume=False to start over.")
    return safe_torch_load(path)  # without a checksum (interrupted save, older run): it must still parse


def _real_rows(num_samples: int, batch_size: int, step: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(global, local)``: how many samples the global batch ``step`` holds (the last one may be smaller) and how
    many of them are this rank's rows (``[rank::world_size]``); a rank's rows past them are the padding that
    ``epoch_indices`` (``DistributedSampler``) adds to make the epoch divisible by ``world_size``."""
    total = min(batch_size, num_samples - step * batch_size)
    return total, len(range(rank, total, world_size))


def _rng_state(device: torch.device, augment_gen: torch.Generator) -> dict:
    state = {"cpu": torch.get_rng_state(), "augment": augment_gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device, augment_gen: torch.Generator) -> None:
    torch.set_rng_state(state["cpu"])
    augment_gen.set_state(state["augment"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------------------------- train
def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _attention_backend(device: torch.device):
    """On the CPU, attention over short token sequences (the lab's 17 tokens, the stand-in's) runs faster as plain
    matrix products than in the fused flash kernel, forward and backward (22.7 vs 26.7 ms per lab training step on
    2 cores); elsewhere PyTorch's own choice. PEFT blocks write those products out themselves
    (``lt.peft.self_attention``); this covers blocks that call ``nn.MultiheadAttention``."""
    return sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else nullcontext()


def train_step(net, loss_fn, x, y, optimizer, scaler, micro_batch_size: int, amp: bool, ddp: bool = False,
               weight: float = 1.0):
    """One optimizer step on the batch ``(x, y)``, accumulating the gradients of its micro-batches (each loss
    weighted by its share of the batch, so the update equals that of the whole batch). ``weight`` scales the
    batch's loss: under DDP, ``world_size * local rows / global rows``, so the averaged gradient is the global
    batch's mean when the ranks' shares differ (1 when they are equal). Returns a device tensor
    ``[summed loss, correct predictions]`` of the batch, without waiting for the device."""
    n = y.shape[0]
    optimizer.zero_grad(set_to_none=True)
    chunks = list(zip(x.split(micro_batch_size), y.split(micro_batch_size)))
    totals = []
    for i, (xm, ym) in enumerate(chunks):
        # DDP: all-reduce the gradients only after the last micro-batch
        with net.no_sync() if ddp and i < len(chunks) - 1 else nullcontext():
            with _attention_backend(x.device), torch.autocast(x.device.type, dtype=torch.float16, enabled=amp):
                logits = net(xm)
                loss = loss_fn(logits, ym)
            scaler.scale(loss * (ym.shape[0] / n * weight)).backward()
        totals.append(torch.stack([loss.detach().double() * ym.shape[0],
                                   (logits.detach().argmax(1) == ym).sum().double()]))
    scaler.step(optimizer)
    scaler.update()
    return torch.stack(totals).sum(0)


def _to_host(t: torch.Tensor) -> list:
    """The one place the loop waits for the device (every ``LOG_EVERY`` steps and at the end of an epoch)."""
    return t.tolist()


@phase("fine-tuning")
def train(model: nn.Module, train_set, loss_fn, *, epochs: int, batch_size: int = 128,
          micro_batch_size: int | None = None, lr: float = 0.01, momentum: float = 0.9,
          weight_decay: float = 5e-4, device=None, amp: bool | None = None, seed: int = 0, augment=None,
          checkpoint_dir=None, resume: bool = True, progress: bool = True, distributed: bool | None = None,
          num_workers: int = 0, run_fingerprint: dict | None = None) -> dict:
    """Fine-tune the trainable parameters of ``model`` on ``train_set`` with ``loss_fn(logits, targets)``.

    SGD (``lr``, ``momentum``, ``weight_decay``) over the parameters with ``requires_grad`` only, cosine
    schedule over ``epochs`` stepped per epoch (no warm-up, as LIFT). ``batch_size`` is the *global* batch; it
    is split into micro-batches of ``micro_batch_size`` whose gradients are accumulated (a 128 batch in 2x64
    gives the same update as one 128 batch). Mixed precision (fp16 autocast + GradScaler) runs on CUDA only
    (``amp=None``: on when the device is CUDA). Datasets with a uint8 ``.images`` tensor are batched by index and
    passed through ``augment`` (a callable on uint8 batches, e.g. ``TensorAugment``; without it images are scaled
    to [0, 1]); their images move to the device, unless on CUDA they would take more than
    ``DEVICE_RESIDENT_FRACTION`` of its free memory (e.g. a memory-mapped ImageNet-LT): then each batch is gathered
    on the host, the next one in a background thread, with the same result. Other datasets go through a
    ``DataLoader``. Data order and augmentation are seeded by ``seed`` (the global torch generator is seeded too,
    for dropout, with ``seed + rank``). With ``checkpoint_dir``, the
    state is saved atomically to ``checkpoint_dir/last.pt`` after every epoch and a later call resumes from it
    (``resume=True``), giving the same result as an uninterrupted run. The checkpoint records the
    hyper-parameters, the dataset size and ``run_fingerprint`` (a JSON-able description of the run: model, PEFT,
    loss, priors, data), and a resume refuses a checkpoint whose record differs; ``last.pt.sha256`` holds its
    SHA-256, and a resume refuses a corrupt checkpoint (both: ``ValueError``, the file is kept). Under torchrun
    (an initialised process group, or ``distributed=True`` with ``WORLD_SIZE`` > 1) the model is wrapped in
    ``DistributedDataParallel`` and each rank trains on its shard of every global batch (``DistributedSampler``'s
    split); only rank 0 writes checkpoints and shows the progress bar, and the ranks resume together: a checkpoint
    that only some see (``checkpoint_dir`` must be shared) or that one cannot load stops them all with an error.
    The result equals one process's up to float noise: the padding ``DistributedSampler`` adds to the last batch
    is left out of the loss and the statistics, and an ``augment`` that takes ``shard=(rank, world_size,
    batch_size)`` (``TensorAugment``) draws on every rank from one generator seeded by ``seed`` for the whole
    global batch and keeps its rows. Not so per rank, with the generator seeded by ``seed + rank``: an ``augment``
    without ``shard``, dropout, and a ``DataLoader`` dataset's own transform (its workers draw per rank).

    Returns the history: per-epoch lists ``loss``, ``acc`` (training accuracy on the augmented batches),
    ``lr`` (the rate used in that epoch) and ``time_s``. A NaN/inf loss raises ``FloatingPointError``.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got epochs={epochs}, batch_size={batch_size}.")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be positive or None, got {micro_batch_size}.")
    if len(train_set) == 0:
        raise ValueError("The training set is empty.")
    try:  # as a checkpoint stores it (tuples become lists), so the comparison on resume is exact
        run_fingerprint = None if run_fingerprint is None else json.loads(json.dumps(run_fingerprint))
    except (TypeError, ValueError) as err:
        raise TypeError(f"run_fingerprint must be JSON-able (numbers, strings, lists, dicts): {err}") from err
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters (every requires_grad is False): apply a PEFT "
                         "method or unfreeze the head before training.")

    use_ddp, rank, world_size = dist_info(distributed)
    if batch_size % world_size:
        raise ValueError(f"The global batch {batch_size} must be divisible by the {world_size} processes.")
    rank_batch = batch_size // world_size
    micro = min(micro_batch_size or rank_batch, rank_batch)
    device = get_device(device)
    if device.type == "cuda" and device.index is None:  # an explicit index: DDP's device_ids, RNG state
        device = torch.device("cuda", torch.cuda.current_device())
    amp = (device.type == "cuda") if amp is None else (bool(amp) and device.type == "cuda")  # CPU fallback

    torch.manual_seed(seed + rank)  # dropout and any augmentation that uses the global generator
    # a shard-aware augmentation draws the global batch's parameters: one stream, the same on every rank
    sharded_augment = augment is not None and _accepts(augment, "shard")
    augment_gen = torch.Generator(device=device).manual_seed(seed if sharded_augment else seed + rank)
    model.to(device)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if use_ddp else model
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    history = {"loss": [], "acc": [], "lr": [], "time_s": []}

    # --- resume
    fingerprint = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                       weight_decay=weight_decay, seed=seed, num_samples=len(train_set))
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    start_epoch = 0
    found = ckpt_path is not None and resume and ckpt_path.is_file()
    # Under torchrun the ranks must agree: one that resumed while another started over, or stopped on a bad
    # checkpoint while the others trained, would leave them waiting in DDP's collectives forever.
    if use_ddp and any_rank(found) and any_rank(not found):
        raise ValueError(f"Only some ranks see the checkpoint {ckpt_path}: its checkpoint_dir must be a folder "
                         "that every rank shares (or pass resume=False to start over).")
    error = None
    if found:
        try:
            ckpt = _load_checkpoint(ckpt_path)
            for what, saved, current in (("hyper-parameters or dataset size", ckpt.get("config"), fingerprint),
                                         ("run_fingerprint", ckpt.get("run"), run_fingerprint)):
                if saved != current:
                    raise ValueError(f"The checkpoint {ckpt_path} was written by another run (other {what}: "
                                     f"{_differences(saved, current)}). Delete it, use another checkpoint_dir "
                                     "or pass resume=False to start over.")
            load_trainable_state(model, ckpt["model"], ckpt_path)
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            rng = ckpt["rng"]  # a list (one per rank) when written by a distributed run
            _set_rng_state(rng[rank % len(rng)] if isinstance(rng, list) else rng, device, augment_gen)
            history, start_epoch = ckpt["history"], ckpt["epoch"]
        except Exception as err:  # noqa: BLE001 - raised below on every rank, not only this one
            error = err
    if (any_rank(error is not None) if use_ddp else error is not None):
        raise error or RuntimeError(f"Another rank could not resume from {ckpt_path} (its error is in its output).")

    # --- data
    in_memory = is_in_memory(train_set)
    if in_memory:
        on_host = _keep_on_host(train_set.images, device)
        images = train_set.images if on_host else train_set.images.to(device, non_blocking=True)
        targets = torch.as_tensor(train_set.targets).to(device, non_blocking=True)
    augment_kw = {"generator": augment_gen} if augment is not None and _accepts(augment, "generator") else {}

    def batches(epoch):
        if in_memory:
            order = epoch_indices(len(train_set), seed, epoch, rank, world_size)
            return (_host_batches if on_host else _tensor_batches)(images, targets, order, rank_batch, device)
        sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return DataLoader(train_set, batch_size=rank_batch, sampler=sampler, num_workers=num_workers,
                          pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed + epoch))

    steps = _num_steps(len(train_set), batch_size, world_size)
    bar = tqdm(total=epochs * steps, initial=start_epoch * steps, desc="train", unit="step",
               disable=hide_progress(progress) or rank != 0, dynamic_ncols=True)
    for epoch in range(start_epoch, epochs):
        net.train()
        start_time, seen = time.perf_counter(), 0
        totals = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, correct predictions
        first_bad = torch.tensor(steps, device=device)  # first step with a non-finite loss (steps = none)
        for step, (x, y) in enumerate(batches(epoch)):
            total, real = _real_rows(len(train_set), batch_size, step, rank, world_size)
            # Padding is left out; a rank with only padding still steps (DDP all-reduces), on one row weighted 0.
            x, y = x[:max(real, 1)].to(device, non_blocking=True), y[:max(real, 1)].to(device, non_blocking=True)
            if augment is not None:
                shard = {"shard": (rank, world_size, total)} if sharded_augment and world_size > 1 else {}
                x = augment(x, **augment_kw, **shard)
            elif x.dtype == torch.uint8:
                x = x.float().div_(255)
            batch_totals = train_step(net, loss_fn, x, y, optimizer, scaler, micro, amp, use_ddp,
                                      weight=world_size * real / total)
            if not real:
                batch_totals = torch.zeros_like(batch_totals)
            totals += batch_totals
            first_bad = torch.minimum(first_bad, torch.where(torch.isfinite(batch_totals[0]), steps, step))
            seen += real
            bar.update(1)
            if (step + 1) % LOG_EVERY == 0:
                loss_sum, correct, bad = _to_host(torch.cat([totals, first_bad.view(1).double()]))
                _check_finite(bad, steps, epoch, epochs, optimizer, amp)
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss_sum / seen:.3f}",
                                acc=f"{correct / seen:.3f}")
        # --- end of epoch: one sync, global statistics, schedule, checkpoint
        stats = torch.cat([totals, torch.tensor([float(seen)], dtype=torch.float64, device=device)])
        if use_ddp:
            dist.all_reduce(stats)
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        loss_sum, correct, count, bad = _to_host(torch.cat([stats, first_bad.view(1).double()]))
        _check_finite(bad, steps, epoch, epochs, optimizer, amp)
        history["loss"].append(loss_sum / count)
        history["acc"].append(correct / count)
        history["lr"].append(optimizer.param_groups[0]["lr"])
        history["time_s"].append(time.perf_counter() - start_time)
        bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{history['loss'][-1]:.3f}",
                        acc=f"{history['acc'][-1]:.3f}")
        scheduler.step()
        if ckpt_path is not None:
            rng = _rng_state(device, augment_gen)
            if use_ddp:  # every rank's generators, so a resumed run continues each rank's stream
                gathered = [None] * world_size
                dist.all_gather_object(gathered, {k: v.cpu() for k, v in rng.items()})
                rng = gathered
            if rank == 0:
                _save_checkpoint(dict(config=fingerprint, run=run_fingerprint, epoch=epoch + 1,
                                      model=trainable_state(model), optimizer=optimizer.state_dict(),
                                      scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=rng,
                                      history=history), ckpt_path)
    bar.close()
    return history


def _check_finite(bad_step: float, steps: int, epoch: int, epochs: int, optimizer, amp: bool) -> None:
    if bad_step < steps:
        raise FloatingPointError(
            f"The training loss became NaN or inf at epoch {epoch + 1}/{epochs}, step {int(bad_step) + 1}/{steps} "
            f"(lr {optimizer.param_groups[0]['lr']:g}). Try a lower learning rate, check the class priors given to "
            "the loss (no zero or negative entries, they must sum to 1)"
            + (", or train without mixed precision (amp=False)." if amp else ".")
        )
