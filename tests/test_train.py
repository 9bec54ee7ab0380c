"""lt.training.train on tiny stand-ins (a small nn.Module, an in-memory dataset): recipe, seeding, micro-batching,
checkpoint/resume, NaN handling, the DataLoader path."""
import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lt_utils.training import epoch_indices, train

import lt_utils.training as lt_train


class TinyImages:
    """An in-memory dataset like the lab's: uint8 ``.images``, ``.targets``, ``.classnames``, ``.class_counts``."""

    def __init__(self, n=96, num_classes=4, size=6, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(n) % num_classes
        base = torch.randint(0, 256, (num_classes, 3, size, size), generator=g)
        noise = torch.randint(-30, 31, (n, 3, size, size), generator=g)
        self.images = (base[self.targets] + noise).clamp(0, 255).to(torch.uint8)
        self.classnames = [f"c{i}" for i in range(num_classes)]
        self.class_counts = torch.bincount(self.targets, minlength=num_classes)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


class PlainDataset(torch.utils.data.Dataset):
    """No ``.images``: goes through the DataLoader path; returns float images."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x.float() / 255, y


class TinyNet(nn.Module):
    """A frozen 'backbone' and a trainable head, optionally with dropout (uses the global RNG)."""

    def __init__(self, num_classes=4, size=6, dropout=0.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 16), nn.Tanh())
        self.backbone.requires_grad_(False)
        self.adapter = nn.Linear(16, 16)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        h = self.backbone(x)
        return self.head(self.drop(h + self.adapter(h)))


class RandomFlip:
    """A seeded uint8 -> float augmentation, like TensorAugment's interface."""

    def __call__(self, images, generator=None):
        flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
        x = images.float() / 255
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


def trainable(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def assert_same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


KW = dict(batch_size=32, lr=0.05, progress=False)


def test_learns_and_only_trainable_change():
    data, model = TinyImages(), TinyNet()
    frozen_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.weight.detach().clone()
    history = train(model, data, F.cross_entropy, epochs=4, **{**KW, "lr": 0.5})
    assert set(history) == {"loss", "acc", "lr", "time_s"} and len(history["loss"]) == 4
    assert history["loss"][-1] < history["loss"][0] and history["acc"][-1] > 0.9
    assert_same(frozen_before, model.backbone.state_dict())
    assert not torch.equal(head_before, model.head.weight)


def test_cosine_schedule_per_epoch():
    history = train(TinyNet(), TinyImages(), F.cross_entropy, epochs=4, **KW)
    expected = [0.05 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert history["lr"] == pytest.approx(expected)


def test_seeded():
    runs = [trainable_after(seed) for seed in (0, 0, 1)]
    assert_same(runs[0], runs[1])
    assert not torch.equal(runs[0]["head.weight"], runs[2]["head.weight"])


def trainable_after(seed, **kw):
    model = TinyNet(dropout=0.2)
    train(model, TinyImages(), F.cross_entropy, epochs=2, seed=seed, augment=RandomFlip(), **KW, **kw)
    return trainable(model)


def test_micro_batches_equal_one_batch():
    full, split = TinyNet(), TinyNet()
    h1 = train(full, TinyImages(n=100), F.cross_entropy, epochs=2, **KW)
    h2 = train(split, TinyImages(n=100), F.cross_entropy, epochs=2, micro_batch_size=12, **KW)
    assert_same(trainable(full), trainable(split), atol=1e-6)
    assert h1["loss"] == pytest.approx(h2["loss"], abs=1e-6) and h1["acc"] == h2["acc"]


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    """Dropout and augmentation are random: the checkpoint must carry the RNG states too."""
    kw = dict(epochs=3, augment=RandomFlip(), **KW)
    reference = TinyNet(dropout=0.2)
    ref_history = train(reference, TinyImages(), F.cross_entropy, **kw)

    calls = {"n": 0}

    def interrupted_loss(logits, y):  # dies in the middle of epoch 3 (3 steps per epoch)
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return F.cross_entropy(logits, y)

    with pytest.raises(KeyboardInterrupt):
        train(TinyNet(dropout=0.2), TinyImages(), interrupted_loss, checkpoint_dir=tmp_path, **kw)
    assert (tmp_path / "last.pt").is_file()
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2

    resumed = TinyNet(dropout=0.2)  # same frozen backbone (as a reloaded foundation model), other trainables:
    with torch.no_grad():  # the checkpoint must restore them
        resumed.head.weight.add_(1.0)
    history = train(resumed, TinyImages(), F.cross_entropy, checkpoint_dir=tmp_path, **kw)
    assert_same(trainable(reference), trainable(resumed), atol=1e-6)
    assert history["loss"] == pytest.approx(ref_history["loss"], abs=1e-6)
    assert history["acc"] == ref_history["acc"]
    # a finished run resumes to itself without training
    again = TinyNet(dropout=0.2)
    train(again, TinyImages(), interrupted_loss, checkpoint_dir=tmp_path, **kw)
    assert_same(trainable(reference), trainable(again), atol=1e-6)


def test_resume_refuses_other_settings(tmp_path):
    train(TinyNet(), TinyImages(), F.cross_entropy, epochs=1, checkpoint_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match="resume=False"):
        train(TinyNet(), TinyImages(), F.cross_entropy, epochs=2, checkpoint_dir=tmp_path, **KW)
    train(TinyNet(), TinyImages(), F.cross_entropy, epochs=2, checkpoint_dir=tmp_path, resume=False, **KW)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    """Same hyper-parameters and dataset size, another loss: the run fingerprint tells them apart."""
    run = dict(model="tiny", peft="adapter", loss="la", data=dict(n=96))
    train(TinyNet(), TinyImages(), F.cross_entropy, epochs=1, checkpoint_dir=tmp_path, run_fingerprint=run, **KW)
    with pytest.raises(ValueError, match=r"loss.*'la'.*'ce'.*resume=False"):
        train(TinyNet(), TinyImages(), F.cross_entropy, epochs=1, checkpoint_dir=tmp_path,
              run_fingerprint=dict(run, loss="ce"), **KW)
    with pytest.raises(ValueError, match="resume=False"):  # one without a fingerprint is another run too
        train(TinyNet(), TinyImages(), F.cross_entropy, epochs=1, checkpoint_dir=tmp_path, **KW)
    calls = []  # the same run (tuples and lists alike, as in JSON) resumes: nothing left to train
    train(TinyNet(), TinyImages(), lambda z, y: calls.append(1) or F.cross_entropy(z, y), epochs=1,
          checkpoint_dir=tmp_path, run_fingerprint=dict(run), **KW)
    assert calls == []
    with pytest.raises(TypeError, match="JSON"):
        train(TinyNet(), TinyImages(), F.cross_entropy, epochs=1, run_fingerprint=dict(model=object()), **KW)


def test_a_corrupt_checkpoint_is_refused_and_kept(tmp_path):
    train(TinyNet(), TinyImages(), F.cross_entropy, epochs=1, checkpoint_dir=tmp_path, **KW)
    ckpt = tmp_path / "last.pt"
    assert (tmp_path / "last.pt.sha256").read_text().split()[0] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01  # a bit flip on disk
    ckpt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupt.*[Dd]elete it.*resume=False"):
        train(TinyNet(), TinyImages(), F.cross_entropy, epochs=1, checkpoint_dir=tmp_path, **KW)
    assert ckpt.read_bytes() == bytes(data), "the checkpoint is left for the user to judge"
    train(TinyNet(), TinyImages(), F.cross_entropy, epochs=1, checkpoint_dir=tmp_path, resume=False, **KW)
    assert (tmp_path / "last.pt.sha256").read_text().split()[0] == hashlib.sha256(ckpt.read_bytes()).hexdigest()


def test_nan_loss_names_epoch_and_step():
    calls = {"n": 0}

    def loss_fn(logits, y):
        calls["n"] += 1
        loss = F.cross_entropy(logits, y)
        return loss * float("nan") if calls["n"] == 5 else loss

    with pytest.raises(FloatingPointError, match=r"epoch 2/3, step 2/3.*lower learning rate"):
        train(TinyNet(), TinyImages(), loss_fn, epochs=3, **KW)


def test_no_per_step_host_sync(monkeypatch):
    syncs = []
    monkeypatch.setattr(lt_train, "LOG_EVERY", 4)
    monkeypatch.setattr(lt_train, "_to_host", lambda t: syncs.append(1) or t.tolist())
    train(TinyNet(), TinyImages(n=320), F.cross_entropy, epochs=2, **KW)  # 10 steps per epoch
    assert len(syncs) == 2 * (10 // 4 + 1)


def test_dataloader_path_matches_in_memory_path():
    """Without .images the DataLoader (DistributedSampler order) draws the same batches as the tensor path."""
    a, b = TinyNet(), TinyNet()
    train(a, TinyImages(), F.cross_entropy, epochs=2, **KW)
    train(b, PlainDataset(TinyImages()), F.cross_entropy, epochs=2, **KW)
    assert_same(trainable(a), trainable(b), atol=1e-6)


def test_amp_request_falls_back_on_cpu():
    history = train(TinyNet(), TinyImages(), F.cross_entropy, epochs=1, amp=True, device="cpu", **KW)
    assert math.isfinite(history["loss"][0])


def test_epoch_indices_shard_a_global_permutation():
    full = epoch_indices(10, seed=3, epoch=1)
    shards = [epoch_indices(10, seed=3, epoch=1, rank=r, world_size=2) for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))
    assert torch.equal(shards[0], full[0::2]) and torch.equal(shards[1], full[1::2])
    assert not torch.equal(full, epoch_indices(10, seed=3, epoch=2))


def test_bad_input():
    frozen = TinyNet().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(frozen, TinyImages(), F.cross_entropy, epochs=1, **KW)
    with pytest.raises(ValueError, match="epochs"):
        train(TinyNet(), TinyImages(), F.cross_entropy, epochs=0, **KW)
    with pytest.raises(ValueError, match="micro_batch_size"):
        train(TinyNet(), TinyImages(), F.cross_entropy, epochs=1, micro_batch_size=0, **KW)
