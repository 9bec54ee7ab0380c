import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lt_utils as lt


# tiny tensors: one thread avoids OpenMP contention on a shared 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------- predict
class TinyClassifier(nn.Module):
    """forward(x) -> logits, features(x) -> features, head: the Classifier contract; counts calls."""

    def __init__(self, num_classes=4, dim=6):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, dim))
        self.head = nn.Linear(dim, num_classes)
        self.calls = {"body": 0}

    def features(self, x):
        self.calls["body"] += 1
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


class OnePass(TinyClassifier):
    def forward_with_features(self, x):
        f = self.features(x)
        return self.head(f), f


class NoHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = TinyClassifier()

    def features(self, x):
        return self.inner.features(x)

    def forward(self, x):
        return self.inner(x)


class InMemory:
    def __init__(self, n=10, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g)
        self.targets = torch.randint(0, 4, (n,), generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float() / 255, int(self.targets[i])


def to_float(x):
    return x.float() / 255


@pytest.mark.parametrize("model_cls", [TinyClassifier, OnePass])
def test_predict_in_memory_matches_direct_forward(model_cls):
    torch.manual_seed(0)
    model, data = model_cls(), InMemory(n=10)
    model.train()
    out = lt.metrics.predict(model, data, batch_size=4, transform=to_float, progress=False)
    assert model.training  # mode restored
    assert set(out) == {"logits", "features", "labels"}
    assert out["logits"].shape == (10, 4) and out["features"].shape == (10, 6)
    assert out["logits"].dtype == torch.float32 and out["logits"].device.type == "cpu"
    with torch.no_grad():
        x = to_float(data.images)
        torch.testing.assert_close(out["logits"], model(x))
        torch.testing.assert_close(out["features"], model.features(x))
    assert torch.equal(out["labels"], data.targets)


def test_predict_one_body_pass_per_batch():
    model, data = TinyClassifier(), InMemory(n=10)
    lt.metrics.predict(model, data, batch_size=4, transform=to_float, progress=False)
    assert model.calls["body"] == 3  # features then head: no second forward
    model = NoHead()
    out = lt.metrics.predict(model, data, batch_size=4, transform=to_float, progress=False)
    assert model.inner.calls["body"] == 6  # without a head the model is called twice (documented)
    assert out["features"].shape == (10, 6)


def test_predict_dataloader_path_and_without_features():
    model, data = TinyClassifier(), InMemory(n=9)

    class Plain(torch.utils.data.Dataset):  # no .images: goes through a DataLoader
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    out = lt.metrics.predict(model, Plain(), batch_size=4, progress=False)
    ref = lt.metrics.predict(model, data, batch_size=5, transform=to_float, progress=False)
    torch.testing.assert_close(out["logits"], ref["logits"])
    assert torch.equal(out["labels"], data.targets)
    out = lt.metrics.predict(model, Plain(), batch_size=4, progress=False, with_features=False)
    assert out["features"] is None and out["logits"].shape == (9, 4)


def test_predict_default_transform_from_model_attributes():
    model, data = TinyClassifier(), InMemory(n=6)
    model.image_size, model.mean, model.std = 4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    out = lt.metrics.predict(model, data, batch_size=4, progress=False)
    x = (data.images.float() / 255 - 0.5) / 0.25  # same size: the resize is the identity
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], model(x), rtol=1e-4, atol=1e-4)


def test_predict_errors():
    model = TinyClassifier()
    with pytest.raises(ValueError, match="pass transform="):
        lt.metrics.predict(model, InMemory(), progress=False)  # uint8 images, no transform, model has no mean/std
    empty = InMemory()
    empty.images, empty.targets = empty.images[:0], empty.targets[:0]
    with pytest.raises(ValueError, match="empty"):
        lt.metrics.predict(model, empty, transform=to_float, progress=False)


# ------------------------------------------------------------------------------------------------ accuracies
def test_per_class_accuracy_against_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 5, generator=g)
    labels = torch.randint(0, 4, (200,), generator=g)  # class 4 never occurs
    per_class = lt.metrics.per_class_accuracy(logits, labels, 5)
    preds = logits.argmax(1)
    for c in range(4):
        sel = labels == c
        assert per_class[c].item() == pytest.approx(100 * (preds[sel] == c).float().mean().item(), rel=1e-6)
    assert math.isnan(per_class[4])
    torch.testing.assert_close(lt.metrics.per_class_accuracy(preds, labels, 5), per_class, equal_nan=True)
    assert lt.accuracy(logits, labels) == pytest.approx(100 * (preds == labels).float().mean().item())
    assert lt.metrics.per_class_accuracy(logits, labels).shape == (5,)  # width of the logits


def test_group_accuracy_and_matrix():
    per_class = torch.tensor([100.0, 50.0, 0.0, 30.0, float("nan"), 80.0])
    d_groups = torch.tensor([0, 0, 1, 1, 2, 2])
    p_groups = torch.tensor([0, 1, 0, 1, 0, 0])
    torch.testing.assert_close(lt.metrics.group_accuracy(per_class, d_groups), torch.tensor([75.0, 15.0, 80.0]))
    acc = lt.metrics.group_accuracy(per_class, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert math.isnan(acc[2])  # empty group
    matrix, counts = lt.metrics.group_matrix(per_class, d_groups, p_groups, return_counts=True)
    nan = float("nan")
    expected = torch.tensor([[100.0, 50.0, nan], [0.0, 30.0, nan], [80.0, nan, nan]])
    torch.testing.assert_close(matrix, expected, equal_nan=True)
    assert counts.tolist() == [[1, 1, 0], [1, 1, 0], [2, 0, 0]]
    with pytest.raises(ValueError, match="one group index per class"):
        lt.metrics.group_accuracy(per_class, d_groups[:3])
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        lt.metrics.group_matrix(per_class, d_groups + 1, p_groups)


def test_accuracy_report():
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(6).repeat(10)
    logits = torch.randn(60, 6, generator=g) + 2 * torch.nn.functional.one_hot(labels, 6)
    d_groups, p_groups = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 2, 0, 1, 2])
    report = lt.accuracy_report(logits, labels, d_groups, p_groups)
    assert report["overall"] == pytest.approx(report["mean_per_class"], rel=1e-5)  # balanced set
    torch.testing.assert_close(report["d_group"], lt.metrics.group_accuracy(report["per_class"], d_groups))
    assert report["matrix"].shape == (3, 3) and report["matrix_counts"].sum() == 6
    assert "matrix" not in lt.accuracy_report(logits, labels, d_groups)


# ------------------------------------------------------------------------------------------------------- kNN
def brute_force_knn(bank, bank_labels, query, k, t, num_classes, relative=True):
    """float64 reference; ``relative``: weights exp((sim - the query's largest sim) / t), as knn_predict's."""
    bank, query = bank.double().numpy(), query.double().numpy()
    scores = np.zeros((len(query), num_classes))
    for i, q in enumerate(query):
        sims = [float(q @ b / (np.linalg.norm(q) * np.linalg.norm(b))) for b in bank]
        top = max(sims) if relative else 0.0
        for j in sorted(range(len(bank)), key=lambda j: -sims[j])[:k]:
            scores[i, int(bank_labels[j])] += math.exp((sims[j] - top) / t)
    return torch.tensor(scores)


@pytest.mark.parametrize("k, chunk", [(5, 7), (200, 1024), (1, 3)])
def test_knn_against_brute_force(k, chunk):
    g = torch.Generator().manual_seed(3)
    bank, query = torch.randn(40, 8, generator=g) * 3, torch.randn(17, 8, generator=g)
    bank_labels = torch.randint(0, 5, (40,), generator=g)
    scores = lt.knn_predict(bank, bank_labels, query, k=k, t=0.1, num_classes=5, chunk=chunk)
    ref = brute_force_knn(bank, bank_labels, query, k, 0.1, 5)  # k=200 > bank: all 40 neighbours vote
    torch.testing.assert_close(scores.double(), ref, rtol=1e-4, atol=1e-3)
    assert torch.equal(scores.argmax(1), ref.argmax(1))


def test_knn_is_stable_at_small_temperature():
    # exp(sim / t) overflows float32 for t below ~0.011; relative weights stay finite, the argmax does not move
    g = torch.Generator().manual_seed(5)
    bank, query = torch.randn(60, 8, generator=g), torch.randn(25, 8, generator=g)
    bank_labels = torch.randint(0, 6, (60,), generator=g)
    scores = lt.knn_predict(bank, bank_labels, query, k=20, t=0.005, num_classes=6)
    assert torch.isfinite(scores).all()
    absolute = brute_force_knn(bank, bank_labels, query, 20, 0.005, 6, relative=False)  # exp(200) fits float64
    assert torch.equal(scores.argmax(1), absolute.argmax(1))
    torch.testing.assert_close(scores.double(), brute_force_knn(bank, bank_labels, query, 20, 0.005, 6),
                               rtol=1e-4, atol=1e-6)


def old_knn_scores(bank, bank_labels, query, k, t, num_classes):
    """knn_predict before the stable form: float32 exp(sim / t), the numbers the book printed."""
    bank, query = F.normalize(bank.float(), dim=1), F.normalize(query.float(), dim=1)
    sim, idx = (query @ bank.T).topk(min(k, len(bank)), dim=1)
    return torch.zeros(len(query), num_classes).scatter_add_(1, bank_labels[idx], (sim / t).exp())


@pytest.mark.parametrize("seed", range(3))
def test_knn_predictions_at_t_01_match_the_old_formula(seed):
    # the stable form scales each query's scores by exp(-max sim / t): the book's kNN accuracies cannot move
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(50, 64, generator=g)
    bank_labels, query_labels = torch.arange(50).repeat(10), torch.randint(0, 50, (1500,), generator=g)
    bank = centers[bank_labels] + 1.5 * torch.randn(500, 64, generator=g)
    query = centers[query_labels] + 1.5 * torch.randn(1500, 64, generator=g)
    for k in (200, 20):
        scores = lt.knn_predict(bank, bank_labels, query, k=k, t=0.1, num_classes=50, chunk=256)
        old = old_knn_scores(bank, bank_labels, query, k, 0.1, 50)
        assert torch.equal(scores.argmax(1), old.argmax(1))
        torch.testing.assert_close(lt.metrics.per_class_accuracy(scores, query_labels, 50),
                                   lt.metrics.per_class_accuracy(old, query_labels, 50), rtol=0, atol=0, equal_nan=True)


def test_knn_accuracy_on_separable_clusters():
    g = torch.Generator().manual_seed(4)
    centers = torch.randn(4, 16, generator=g) * 5
    bank_labels, query_labels = torch.arange(4).repeat(10), torch.arange(4).repeat(5)
    bank = centers[bank_labels] + torch.randn(40, 16, generator=g)
    query = centers[query_labels] + torch.randn(20, 16, generator=g)
    assert lt.metrics.knn_accuracy(bank, bank_labels, query, query_labels, k=10) == 100.0
    assert lt.metrics.knn_accuracy(bank, bank_labels, query, (query_labels + 1) % 4, k=10) == 0.0


def test_knn_errors():
    bank, labels = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="same width"):
        lt.knn_predict(bank, labels, torch.randn(3, 5))
    with pytest.raises(ValueError, match="one label per bank sample"):
        lt.knn_predict(bank, labels[:4], torch.randn(3, 4))
    with pytest.raises(ValueError, match="empty"):
        lt.knn_predict(bank[:0], labels[:0], torch.randn(3, 4))
    with pytest.raises(ValueError, match="k >= 1"):
        lt.knn_predict(bank, labels, torch.randn(3, 4), k=0)


@pytest.mark.gpu
def test_predict_and_knn_on_cuda_match_cpu():
    model, data = OnePass(), InMemory(n=20)
    cpu = lt.metrics.predict(model, data, batch_size=8, transform=to_float, progress=False, device="cpu")
    gpu = lt.metrics.predict(model, data, batch_size=8, transform=to_float, progress=False, device="cuda")  # autocast
    assert gpu["logits"].device.type == "cpu" and gpu["logits"].dtype == torch.float32
    torch.testing.assert_close(gpu["logits"], cpu["logits"], rtol=2e-2, atol=2e-2)
    bank, labels = torch.randn(50, 8), torch.randint(0, 3, (50,))
    query = torch.randn(9, 8)
    torch.testing.assert_close(lt.knn_predict(bank.cuda(), labels, query, k=5),
                               lt.knn_predict(bank, labels, query, k=5), rtol=1e-3, atol=1e-3)
