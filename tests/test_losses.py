import math
import warnings

import numpy as np
import pytest
import torch

import lt_utils as lt


def reference_ce(logits, targets, offset=None):
    """Independent float64 reference: mean_i [logsumexp(z_i + o) - (z_i + o)_{y_i}], written with numpy loops."""
    z = np.asarray(logits, dtype=np.float64)
    o = np.zeros(z.shape[1]) if offset is None else np.asarray(offset, dtype=np.float64)
    losses = []
    for row, y in zip(z, np.asarray(targets)):
        a = row + o
        losses.append(math.log(sum(math.exp(v - a.max()) for v in a)) + a.max() - a[y])
    return float(np.mean(losses))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g) * 3
    targets = torch.randint(0, 5, (16,), generator=g)
    counts = torch.tensor([500, 120, 40, 9, 3])
    return logits, targets, counts


def test_cross_entropy_matches_reference(batch):
    logits, targets, _ = batch
    assert lt.cross_entropy_loss(logits, targets).item() == pytest.approx(reference_ce(logits, targets), rel=1e-5)


def test_logit_adjusted_matches_reference(batch):
    logits, targets, counts = batch
    p = counts.double().numpy() / counts.sum().item()
    for tau in (1.0, 0.5, 2.0):
        got = lt.logit_adjusted_loss(logits, targets, counts, tau=tau).item()
        assert got == pytest.approx(reference_ce(logits, targets, tau * np.log(p)), rel=1e-5)


def test_counts_and_probabilities_give_same_loss(batch):
    logits, targets, counts = batch
    probs = counts.float() / counts.sum()
    assert lt.logit_adjusted_loss(logits, targets, counts).item() == pytest.approx(
        lt.logit_adjusted_loss(logits, targets, probs.tolist()).item(), rel=1e-6)


def test_balanced_softmax_is_ce_plus_log_counts(batch):
    logits, targets, counts = batch
    got = lt.losses.balanced_softmax_loss(logits, targets, counts).item()
    assert got == pytest.approx(reference_ce(logits, targets, np.log(counts.numpy().astype(float))), rel=1e-5)
    assert got == pytest.approx(lt.logit_adjusted_loss(logits, targets, counts, tau=1.0).item(), rel=1e-6)


def test_gla_train_matches_reference(batch):
    logits, targets, counts = batch
    pretrain = torch.tensor([0.1, 0.4, 0.2, 0.2, 0.1])
    p = counts.double().numpy() / counts.sum().item()
    offset = 0.7 * np.log(p) + np.log(pretrain.double().numpy())
    got = lt.gla_train_loss(logits, targets, counts, pretrain, tau=0.7).item()
    assert got == pytest.approx(reference_ce(logits, targets, offset), rel=1e-5)


def test_adjusted_loss_differs_from_ce(batch):
    logits, targets, counts = batch
    adjusted = lt.logit_adjusted_loss(logits, targets, counts).item()
    assert abs(adjusted - lt.cross_entropy_loss(logits, targets).item()) > 1e-3


@pytest.mark.parametrize("name", ["ce", "la", "bs", "gla_train"])
def test_make_loss_equals_functions(batch, name):
    logits, targets, counts = batch
    pretrain = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1])
    loss_fn = lt.losses.make_loss(name, data_prior=counts, pretrain_prior=pretrain, tau=1.5)
    expected = {"ce": lambda: lt.cross_entropy_loss(logits, targets),
                "la": lambda: lt.logit_adjusted_loss(logits, targets, counts, tau=1.5),
                "bs": lambda: lt.losses.balanced_softmax_loss(logits, targets, counts),
                "gla_train": lambda: lt.gla_train_loss(logits, targets, counts, pretrain, tau=1.5)}[name]()
    assert loss_fn(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_make_loss_gradient_flows(batch):
    logits, targets, counts = batch
    logits = logits.clone().requires_grad_(True)
    lt.losses.make_loss("la", data_prior=counts)(logits, targets).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # gradient of CE(z + o) is softmax(z + o) - onehot, averaged
    p = torch.softmax(logits.detach() + torch.log(counts.float() / counts.sum()), dim=1)
    expected = (p - torch.nn.functional.one_hot(targets, 5)) / len(targets)
    torch.testing.assert_close(logits.grad, expected, rtol=1e-4, atol=1e-6)


def test_make_loss_errors():
    with pytest.raises(ValueError, match="'ce', 'la', 'gla_train', 'bs'"):
        lt.losses.make_loss("focal")
    with pytest.raises(ValueError, match="needs data_prior"):
        lt.losses.make_loss("la")
    with pytest.raises(ValueError, match="needs data_prior"):
        lt.losses.make_loss("bs")
    with pytest.raises(ValueError, match="needs pretrain_prior"):
        lt.losses.make_loss("gla_train", data_prior=[1, 2, 3])
    with pytest.raises(ValueError, match="pretrain_prior has 2 entries but there are 3 classes"):
        lt.losses.make_loss("gla_train", data_prior=[1, 2, 3], pretrain_prior=[0.5, 0.5])


@pytest.mark.parametrize("prior, message", [
    ([1.0, 2.0, 3.0], "has 3 entries but there are 5 classes"),
    ([1.0, -1.0, 3.0, 1.0, 1.0], "negative"),
    ([0.0, 0.0, 0.0, 0.0, 0.0], "sums to zero"),
    ([1.0, float("nan"), 3.0, 1.0, 1.0], "NaN"),
    ([1.0, float("inf"), 3.0, 1.0, 1.0], "NaN or inf"),
    ([[1.0, 2.0, 3.0, 4.0, 5.0]], "1-D"),
])
def test_bad_priors_refused(batch, prior, message):
    logits, targets, _ = batch
    with pytest.raises(ValueError, match=message):
        lt.logit_adjusted_loss(logits, targets, prior)


def test_make_loss_wrong_length_refused_at_call(batch):
    logits, targets, _ = batch
    loss_fn = lt.losses.make_loss("la", data_prior=[3, 2, 1])
    with pytest.raises(ValueError, match="one entry per class"):
        loss_fn(logits, targets)


def test_zero_count_class_is_clamped_and_warned(batch):
    logits, targets, _ = batch
    counts = torch.tensor([50, 0, 10, 5, 1])
    with pytest.warns(UserWarning, match=r"zero for classes \[1\]"):
        loss = lt.logit_adjusted_loss(logits, targets, counts)
    assert torch.isfinite(loss)
    p = counts.double().numpy() / 66
    offset = np.log(np.maximum(p, lt.losses.PRIOR_EPS))
    assert loss.item() == pytest.approx(reference_ce(logits, targets, offset), rel=1e-5)
    with pytest.warns(UserWarning, match="zero for classes"):
        loss_fn = lt.losses.make_loss("gla_train", data_prior=counts, pretrain_prior=[1, 1, 1, 1, 1])
    with warnings.catch_warnings():  # validated once: no warning inside the training loop
        warnings.simplefilter("error")
        assert torch.isfinite(loss_fn(logits, targets))


def test_bad_logits_or_targets(batch):
    logits, targets, counts = batch
    with pytest.raises(ValueError, match=r"\(batch, num_classes\)"):
        lt.cross_entropy_loss(logits[0], targets)
    with pytest.raises(ValueError, match="16 class indices"):
        lt.losses.make_loss("la", data_prior=counts)(logits, targets[:3])


def test_amp_safe_float32(batch):
    logits, targets, counts = batch
    half = logits.half()
    loss = lt.losses.make_loss("la", data_prior=counts)(half, targets)
    assert loss.dtype == torch.float32
    ref = lt.logit_adjusted_loss(half.float(), targets, counts)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = lt.losses.make_loss("gla_train", data_prior=counts, pretrain_prior=[1, 2, 3, 4, 5])(logits.bfloat16(), targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.gpu
def test_losses_on_cuda_under_autocast(batch):
    logits, targets, counts = batch
    loss_fn = lt.losses.make_loss("gla_train", data_prior=counts, pretrain_prior=[1, 2, 3, 4, 5])
    with torch.autocast("cuda"):
        loss = loss_fn(logits.cuda().half(), targets.cuda())
    assert loss.dtype == torch.float32 and loss.is_cuda
    assert loss.item() == pytest.approx(loss_fn(logits.half().float(), targets).item(), rel=1e-5)
