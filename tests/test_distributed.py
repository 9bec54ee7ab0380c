"""The distributed path of lt.training.train: two CPU processes (gloo) started like torchrun (env variables), with
micro-batching (DDP no_sync) and checkpointing on; compared with one process over the same global batches."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lt_utils.training import train
from test_train import KW, TinyImages, TinyNet, assert_same, trainable

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = TinyNet()
    history = train(model, TinyImages(), F.cross_entropy, epochs=2, micro_batch_size=8, distributed=True,
                    device="cpu", checkpoint_dir=os.path.join(out_dir, "ckpt"), **KW)
    torch.save({"params": trainable(model), "loss": history["loss"], "acc": history["acc"]},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    assert_same(ranks[0]["params"], ranks[1]["params"])  # DDP keeps the replicas identical
    assert ranks[0]["loss"] == ranks[1]["loss"]  # statistics are reduced over both shards

    single = TinyNet()
    history = train(single, TinyImages(), F.cross_entropy, epochs=2, device="cpu", **KW)
    assert_same(trainable(single), ranks[0]["params"], atol=1e-5)
    torch.testing.assert_close(torch.tensor(history["loss"]), torch.tensor(ranks[0]["loss"]), atol=1e-5, rtol=0)
    assert history["acc"] == ranks[0]["acc"]

    ckpt = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)  # written once, by rank 0
    assert ckpt["epoch"] == 2 and isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == WORLD_SIZE
