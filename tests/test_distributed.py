"""The distributed paths: two CPU processes (gloo) started like torchrun (env variables) must give one process's
results up to float noise. Training with micro-batching (DDP no_sync), checkpointing, augmentation drawn for the
global batch, an uneven last batch and DistributedSampler's padding, and a resume; sharded evaluation (predictions,
kNN) gathered on every rank; the cached runs deciding on rank 0, and ``zero_shot`` / ``fine_tune`` end to end.
Each scenario group runs in one spawn (starting a process costs seconds); the tests compare what it saved."""
import os
import shutil
import socket
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import lt_utils.training as lt_train
from lt_utils import lab
from lt_utils.augment import TensorAugment
from lt_utils.cache import CacheMissError
from lt_utils.data import InMemoryDataset
from lt_utils.distributed import gather_rows, shard_range
from lt_utils.metrics import knn_predict
from lt_utils.runs import _cached_on_all_ranks, _predict_splits, fine_tune, knn_predict_sharded, zero_shot
from lt_utils.training import epoch_indices, train
from test_train import KW, TinyImages, TinyNet, assert_same, trainable

WORLD_SIZE = 2
# Global batch 32 (KW) over 2 ranks: 97 samples end in a batch of 1 (rank 1's row is padding only), 99 in a batch
# of 3 (rank 1 pads one row); each epoch is also padded to an even length by epoch_indices.
AUG_SIZES = (97, 99)
RESUME = dict(n=99, epochs=3, interrupt_call=17)  # 7 loss calls per epoch and rank: call 17 is epoch 3, step 2
AUG_KW = dict(micro_batch_size=8, device="cpu", **KW)
TINY_LAB = dict(DOWNSTREAM_N_MAX=120, VAL_PER_CLASS=2, TEST_PER_CLASS=2)  # as conftest's tiny_lab
TINY_PRETRAIN = dict(corpus_size=512, epochs=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank, port):
    """This process as rank ``rank`` of a torchrun-like gloo group (a hang fails after a minute, not never)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))


def _spawn(worker, out_dir):
    mp.spawn(worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


def _run(model, history):
    return {"params": trainable(model), "loss": history["loss"], "acc": history["acc"]}


def assert_run_close(a, b, atol=1e-5):
    assert_same(a["params"], b["params"], atol=atol)
    torch.testing.assert_close(torch.tensor(a["loss"]), torch.tensor(b["loss"]), atol=atol, rtol=0)
    assert a["acc"] == b["acc"]


# ------------------------------------------------------------------------------------------------ training
class Interrupt(Exception):
    pass


def _train_worker(rank, port, out_dir):
    _join(rank, port)
    out = {}
    model = TinyNet()
    history = train(model, TinyImages(), F.cross_entropy, epochs=2, micro_batch_size=8, distributed=True,
                    device="cpu", checkpoint_dir=os.path.join(out_dir, "ckpt"), **KW)
    out["plain"] = _run(model, history)
    for n in AUG_SIZES:
        model = TinyNet()
        history = train(model, TinyImages(n=n), F.cross_entropy, epochs=2, augment=TensorAugment(6),
                        checkpoint_dir=os.path.join(out_dir, f"ckpt{n}"), **AUG_KW)
        out[f"augment{n}"] = _run(model, history)

    calls = []

    def interrupted_loss(logits, y):  # both ranks stop at the same call, after the epoch-2 checkpoint
        calls.append(1)
        if len(calls) == RESUME["interrupt_call"]:
            raise Interrupt
        return F.cross_entropy(logits, y)

    folder = os.path.join(out_dir, "resume")
    data, kw = TinyImages(n=RESUME["n"]), dict(epochs=RESUME["epochs"], augment=TensorAugment(6), **AUG_KW)
    try:
        train(TinyNet(), data, interrupted_loss, checkpoint_dir=folder, **kw)
    except Interrupt:
        out["interrupted"] = True
    if rank == 0:  # the checkpoint of epoch 2, for one process to resume
        shutil.copytree(folder, os.path.join(out_dir, "resume-copy"))
    dist.barrier()
    model = TinyNet()
    with torch.no_grad():
        model.head.weight.add_(1.0)  # other trainables than the checkpoint's: the resume must restore them
    out["resumed"] = _run(model, train(model, data, F.cross_entropy, checkpoint_dir=folder, **kw))

    # a checkpoint_dir that is not shared (rank 0 finds the plain run's checkpoint, rank 1 none), then a checkpoint
    # only rank 0 finds corrupt: every rank must stop with an error, none wait in DDP for the others
    out["unshared"] = _resume_error(os.path.join(out_dir, "ckpt" if rank == 0 else f"empty{rank}"))
    own = os.path.join(out_dir, f"ckpt-copy{rank}")
    shutil.copytree(os.path.join(out_dir, "ckpt"), own)
    if rank == 0:
        with open(os.path.join(own, lt_train.CHECKPOINT_NAME), "ab") as f:
            f.write(b"\0")
    out["corrupt_on_one"] = _resume_error(own)
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _resume_error(checkpoint_dir) -> str | None:
    """The error (type and message) of resuming the plain 2-epoch run from ``checkpoint_dir``, or None."""
    try:
        train(TinyNet(), TinyImages(), F.cross_entropy, epochs=2, micro_batch_size=8, distributed=True,
              device="cpu", checkpoint_dir=checkpoint_dir, **KW)
    except (ValueError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    return None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """What each rank of a 2-process job trained (every training scenario in one spawn), and its folder."""
    folder = tmp_path_factory.mktemp("distributed-train")
    return _spawn(_train_worker, folder), folder


def test_two_processes_match_one(trained):
    ranks, folder = trained
    assert_same(ranks[0]["plain"]["params"], ranks[1]["plain"]["params"])  # DDP keeps the replicas identical
    assert ranks[0]["plain"]["loss"] == ranks[1]["plain"]["loss"]  # statistics are reduced over both shards
    single = TinyNet()
    history = train(single, TinyImages(), F.cross_entropy, epochs=2, device="cpu", **KW)
    assert_run_close(_run(single, history), ranks[0]["plain"])
    ckpt = torch.load(folder / "ckpt" / "last.pt", weights_only=True)  # written once, by rank 0
    assert ckpt["epoch"] == 2 and isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == WORLD_SIZE


@pytest.mark.parametrize("n", AUG_SIZES)
def test_augmented_two_processes_match_one(trained, n):
    """Crops and flips are drawn for the global batch, and the padding stays out of the loss: the same run as one
    process, whatever the number of processes (per-rank draws or a padded row would move it far past 1e-5)."""
    ranks, folder = trained
    assert_same(ranks[0][f"augment{n}"]["params"], ranks[1][f"augment{n}"]["params"])
    single = TinyNet()
    history = train(single, TinyImages(n=n), F.cross_entropy, epochs=2, augment=TensorAugment(6), **AUG_KW)
    assert_run_close(_run(single, history), ranks[0][f"augment{n}"])
    rng = torch.load(folder / f"ckpt{n}" / "last.pt", weights_only=True)["rng"]
    assert torch.equal(rng[0]["augment"], rng[1]["augment"])  # one augmentation stream on every rank


def test_distributed_resume_equals_uninterrupted(trained):
    ranks, folder = trained
    assert all(r["interrupted"] for r in ranks)
    kw = dict(epochs=RESUME["epochs"], augment=TensorAugment(6), **AUG_KW)
    reference = TinyNet()
    reference_run = _run(reference, train(reference, TinyImages(n=RESUME["n"]), F.cross_entropy, **kw))
    assert_run_close(reference_run, ranks[0]["resumed"])
    assert_same(ranks[0]["resumed"]["params"], ranks[1]["resumed"]["params"])
    # the 2-process checkpoint of epoch 2 resumed by one process: the augmentation stream is the global one
    model = TinyNet()
    history = train(model, TinyImages(n=RESUME["n"]), F.cross_entropy, checkpoint_dir=folder / "resume-copy", **kw)
    assert_run_close(reference_run, _run(model, history))


def test_ranks_stop_together_when_only_some_can_resume(trained):
    ranks, _ = trained
    assert all("Only some ranks see the checkpoint" in r["unshared"] for r in ranks)
    assert ranks[0]["corrupt_on_one"].startswith("ValueError") and "corrupt" in ranks[0]["corrupt_on_one"]
    assert ranks[1]["corrupt_on_one"].startswith("RuntimeError: Another rank could not resume")


# ---------------------------------------------------------------------------------- augmentation of a shard
def test_shards_of_an_augmented_batch_are_rows_of_the_global_draws():
    augment = TensorAugment(6, train=True)
    for total, world_size in ((7, 2), (7, 3), (4, 4), (1, 2)):
        images = TinyImages(n=total).images
        whole = augment(images, generator=torch.Generator().manual_seed(5))
        for rank in range(world_size):
            rows = torch.arange(rank, total + (-total) % world_size, world_size)  # its rows of the padded batch
            padded = rows % total  # the padding repeats the first rows (DistributedSampler's rule)
            part = augment(images[padded], generator=torch.Generator().manual_seed(5),
                           shard=(rank, world_size, total))
            assert torch.equal(part, whole[padded]), (total, world_size, rank)
            unpadded = rows[rows < total]
            if len(unpadded):  # a shard given without its padding rows
                assert torch.equal(augment(images[unpadded], generator=torch.Generator().manual_seed(5),
                                           shard=(rank, world_size, total)), whole[unpadded])
    one = augment(images, generator=torch.Generator().manual_seed(5), shard=(0, 1, len(images)))
    assert torch.equal(one, augment(images, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="this rank's rows"):
        augment(TinyImages(n=5).images, shard=(0, 2, 7))
    with pytest.raises(ValueError, match="rank < world_size"):
        augment(TinyImages(n=2).images, shard=(2, 2, 4))


# --------------------------------------------------------------------------------- host-resident batches
def test_host_batches_equal_device_batches():
    """Sorted gathering and the background thread give the same batches, in the same order, padding included."""
    data = TinyImages(n=37)
    order = epoch_indices(37, seed=3, epoch=1, rank=1, world_size=4)  # shuffled, with repeated (padding) rows
    resident = list(lt_train._tensor_batches(data.images, data.targets, order, 4, torch.device("cpu")))
    hosted = list(lt_train._host_batches(data.images, data.targets, order, 4, torch.device("cpu")))
    assert len(hosted) == len(resident) == 3
    for (xa, ya), (xb, yb) in zip(resident, hosted):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_training_from_host_batches_equals_device_batches(monkeypatch):
    runs = []
    for host in (False, True):
        used = []
        monkeypatch.setattr(lt_train, "_keep_on_host", lambda images, device, host=host: used.append(1) or host)
        model = TinyNet()
        history = train(model, TinyImages(n=99), F.cross_entropy, epochs=2, augment=TensorAugment(6), **AUG_KW)
        assert used
        runs.append(_run(model, history))
    assert_run_close(runs[0], runs[1], atol=0)


def test_images_stay_on_the_host_when_the_device_is_the_cpu():
    assert not lt_train._keep_on_host(TinyImages().images, torch.device("cpu"))


# ---------------------------------------------------------------------------------- sharded evaluation
class FeatNet(nn.Module):
    """A model with ``features`` and ``head`` (one pass in ``predict``) and its preprocessing facts."""

    image_size, mean, std = 6, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 8), nn.Tanh())
        self.head = nn.Linear(8, 4)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


PROFILE = SimpleNamespace(dataset="lab", tte=False, num_workers=0)


def _splits():
    """val of 13 images (6 + 7 over two ranks), test of 1 (fewer images than ranks), with sample ids."""
    def split(n, seed, offset):
        data = TinyImages(n=n, seed=seed)
        return InMemoryDataset(data.images, data.targets, data.classnames, ids=offset + torch.arange(n))
    return {"val": split(13, 1, 0), "test": split(1, 2, 100)}


def _knn_inputs():
    g = torch.Generator().manual_seed(0)
    bank, query = torch.randn(20, 5, generator=g), torch.randn(9, 5, generator=g)
    return bank, torch.arange(20) % 4, query


def _runs_worker(rank, port, out_dir):
    _join(rank, port)
    out = {}
    for n in (5, 1):  # 2 + 3 rows, 0 + 1 rows
        start, stop = shard_range(n, rank, WORLD_SIZE)
        out[f"gather{n}"] = gather_rows(torch.arange(3.0 * n).view(n, 3)[start:stop], n)
    out["predict"] = _predict_splits(FeatNet(), _splits(), PROFILE, FeatNet(), "cpu", progress=False)
    bank, labels, query = _knn_inputs()
    out["knn"] = knn_predict_sharded(bank, labels, query, k=5, num_classes=4, bank_ids=torch.arange(20),
                                     query_ids=100 + torch.arange(9))
    try:  # a query that is also in the bank (id 5), in rank 1's slice only: every rank stops
        knn_predict_sharded(bank, labels, query, k=5, bank_ids=torch.arange(20),
                            query_ids=torch.tensor([100, 101, 102, 103, 104, 105, 106, 107, 5]))
    except (ValueError, RuntimeError) as err:
        out["knn_error"] = type(err).__name__

    # --- cached runs: rank 0 decides, every rank returns rank 0's value
    calls = []

    def compute():
        calls.append(1)
        start, stop = shard_range(5, rank, WORLD_SIZE)
        return dict(rows=gather_rows(torch.full((stop - start, 2), float(rank)), 5), rank=rank)  # a collective

    shared = os.path.join(out_dir, "cache")
    os.environ["LT_CACHE_DIR"] = shared
    out["first"] = _cached_on_all_ranks("probe", {"x": 1}, compute, depends_on=("runs",))
    out["second"] = _cached_on_all_ranks("probe", {"x": 1}, compute, depends_on=("runs",))
    out["calls_after_load"] = len(calls)
    # no shared disk: rank 1's cache holds the result, rank 0's does not; rank 1 must compute with rank 0
    os.environ["LT_CACHE_DIR"] = shared if rank == 1 else os.path.join(out_dir, "cache-rank0")
    out["third"] = _cached_on_all_ranks("probe", {"x": 1}, compute, depends_on=("runs",))
    out["calls_after_split_caches"] = len(calls)
    os.environ.update(LT_CACHE_ONLY="1", LT_CACHE_DIR=os.path.join(out_dir, "cache-empty"))
    try:
        _cached_on_all_ranks("probe", {"x": 2}, compute, depends_on=("runs",))
    except (CacheMissError, RuntimeError) as err:
        out["cache_only"] = type(err).__name__
    del os.environ["LT_CACHE_ONLY"]

    # --- zero_shot and fine_tune end to end on a tiny lab world
    for name, value in TINY_LAB.items():
        setattr(lab, name, value)
    lab.PRETRAIN_CONFIG.update(TINY_PRETRAIN)
    os.environ.update(LT_CACHE_DIR=os.path.join(out_dir, "lab-cache"), LT_PROFILE="lab")
    out["zero_shot"] = zero_shot("lab", "lab-clip", progress=False)
    out["fine_tune"] = fine_tune("lab", "lab-clip", loss="ce", epochs=1, progress=False)
    out["fine_tune_again"] = fine_tune("lab", "lab-clip", loss="ce", epochs=1, progress=False)
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """What each rank of a 2-process job returned from the sharded evaluations and cached runs (one spawn)."""
    return _spawn(_runs_worker, tmp_path_factory.mktemp("distributed-runs"))


def test_gather_rows_of_unequal_shards(evaluated):
    for rank in evaluated:
        for n in (5, 1):
            assert torch.equal(rank[f"gather{n}"], torch.arange(3.0 * n).view(n, 3))


def test_gather_rows_without_a_process_group():
    local = torch.randn(4, 2)
    assert gather_rows(local, 4) is local
    with pytest.raises(ValueError, match="shard_range"):
        gather_rows(local, 5)


def test_shard_range_is_contiguous_and_balanced():
    for n, world_size in ((13, 2), (1, 2), (10, 4), (0, 3)):
        ranges = [shard_range(n, r, world_size) for r in range(world_size)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        sizes = [b - a for a, b in ranges]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard_range(5, 2, 2)


def test_sharded_predictions_equal_one_process(evaluated):
    single = _predict_splits(FeatNet(), _splits(), PROFILE, FeatNet(), "cpu", progress=False)
    for rank in evaluated:
        for split in ("val", "test"):
            ours, reference = rank["predict"][split], single[split]
            assert ours.keys() == reference.keys() == {"logits", "features", "labels", "ids"}
            for key in ("logits", "features"):
                torch.testing.assert_close(ours[key], reference[key], atol=1e-6, rtol=0)
            assert torch.equal(ours["labels"], reference["labels"]) and torch.equal(ours["ids"], reference["ids"])


def test_sharded_knn_equals_one_process(evaluated):
    bank, labels, query = _knn_inputs()
    reference = knn_predict(bank, labels, query, k=5, num_classes=4)
    assert torch.equal(knn_predict_sharded(bank, labels, query, k=5, num_classes=4), reference)  # one process
    for rank in evaluated:
        torch.testing.assert_close(rank["knn"], reference, atol=1e-6, rtol=0)
    assert [rank["knn_error"] for rank in evaluated] == ["RuntimeError", "ValueError"]


def test_cached_runs_take_one_branch_on_every_rank(evaluated):
    for rank in evaluated:
        assert rank["first"]["rank"] == 0 and rank["second"]["rank"] == 0  # rank 0's value, stored and loaded
        assert torch.equal(rank["first"]["rows"], torch.tensor([[0.0, 0.0]] * 2 + [[1.0, 1.0]] * 3))
        assert rank["calls_after_load"] == 1  # loaded by rank 0: nobody computed
        assert rank["calls_after_split_caches"] == 2  # rank 0 found nothing: rank 1 computed with it
        assert rank["third"]["rank"] == 0
    assert [rank["cache_only"] for rank in evaluated] == ["CacheMissError", "RuntimeError"]


def test_zero_shot_and_fine_tune_under_two_processes_equal_one(evaluated, tiny_lab, one_thread):
    assert {k: getattr(lab, k) for k in TINY_LAB} == TINY_LAB  # the workers shrank the world alike
    assert {k: lab.PRETRAIN_CONFIG[k] for k in TINY_PRETRAIN} == TINY_PRETRAIN
    zs = zero_shot("lab", "lab-clip", progress=False)
    ft = fine_tune("lab", "lab-clip", loss="ce", epochs=1, progress=False)
    for rank in evaluated:
        assert not rank["zero_shot"]["from_cache"] and not rank["fine_tune"]["from_cache"]
        assert rank["fine_tune_again"]["from_cache"]
        for split in ("val", "test"):
            for key in ("logits", "features"):
                torch.testing.assert_close(rank["zero_shot"][split][key], zs[split][key], atol=1e-6, rtol=0)
                torch.testing.assert_close(rank["fine_tune"][split][key], ft[split][key], atol=1e-5, rtol=0)
            assert torch.equal(rank["zero_shot"][split]["labels"], zs[split]["labels"])
        assert_same(rank["fine_tune"]["trainable_state"], ft["trainable_state"], atol=1e-5)
        torch.testing.assert_close(torch.tensor(rank["fine_tune"]["history"]["loss"]),
                                   torch.tensor(ft["history"]["loss"]), atol=1e-5, rtol=0)
    # every rank returns rank 0's result, timings included
    assert evaluated[0]["fine_tune"]["train_time_s"] == evaluated[1]["fine_tune"]["train_time_s"]
    assert evaluated[0]["zero_shot"]["eval_time_s"] == evaluated[1]["zero_shot"]["eval_time_s"]
