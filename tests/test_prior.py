import pytest
import torch
import torch.nn.functional as F

import lt_utils as lt


# tiny tensors: one thread avoids OpenMP contention on a shared 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")


def planted(num_classes=50, per_class=20, evidence=3.0, noise=1.0, ratio=100.0, seed=0):
    """Balanced-set logits z = evidence * onehot(y) + noise + log(planted prior), the prior long-tailed and
    shuffled over the classes."""
    g = torch.Generator().manual_seed(seed)
    prior = ratio ** (-torch.arange(num_classes) / (num_classes - 1))
    prior = (prior / prior.sum())[torch.randperm(num_classes, generator=g)]
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    logits = evidence * F.one_hot(labels, num_classes).float() \
        + noise * torch.randn(len(labels), num_classes, generator=g) + torch.log(prior)
    return logits, labels, prior


def mean_confidence(logits, temperature):
    return F.softmax(logits / temperature, dim=1).amax(dim=1).mean().item()


@pytest.mark.parametrize("noise, evidence, seed", [(1.0, 3.0, 0), (2.0, 4.0, 1)])
def test_recovers_planted_prior_rank(noise, evidence, seed):
    logits, labels, prior = planted(noise=noise, evidence=evidence, seed=seed)
    est, temperature = lt.estimate_prior(logits, labels, steps=500, return_temperature=True)
    assert lt.rank_correlation(prior, est) >= 0.95
    # the estimate solves GLA's problem: its gradient (mean prediction - label frequency) vanishes
    assert lt.prior.prior_optimality_gap(logits, labels, est, temperature) < 1e-4


def test_noise_free_recovery_is_exact():
    # z - log p is the same for every sample of a class, so q = p is the exact minimiser
    logits, labels, prior = planted(noise=0.0, evidence=2.0)
    est = lt.estimate_prior(logits, labels, calibrate=False, steps=1000)
    assert ((est - prior).abs() / prior).max() < 1e-3


def test_uniform_prior_gives_flat_estimate():
    logits, labels, _ = planted(ratio=1.0, noise=1.0)
    est = lt.estimate_prior(logits, labels, steps=300)
    # 20 samples per class leave sampling noise (ratio ~3-4 here), far below a planted ratio of 100
    assert est.max() / est.min() < 10


def test_estimate_is_a_distribution():
    logits, labels, _ = planted(num_classes=10)
    est = lt.estimate_prior(logits.double(), labels, steps=200)
    assert est.dtype == torch.float32 and est.shape == (10,)
    assert (est > 0).all() and est.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_calibration_matches_confidence_to_accuracy():
    logits, labels, _ = planted(noise=1.5)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    for scale in (0.3, 1.0, 4.0):  # under- and over-confident versions of the same model
        temperature = lt.prior.calibrate_temperature(logits * scale, labels, tol=1e-3)
        assert 0.1 <= temperature <= 10
        assert abs(mean_confidence(logits * scale, temperature) - accuracy) <= 1e-3
    assert lt.prior.calibrate_temperature(logits * 4.0, labels) > lt.prior.calibrate_temperature(logits * 0.3, labels)


def test_calibration_removes_logit_scale():
    logits, labels, _ = planted(noise=1.5)
    est_a, t_a = lt.estimate_prior(logits, labels, steps=300, return_temperature=True)
    est_b, t_b = lt.estimate_prior(logits * 3, labels, steps=300, return_temperature=True)
    assert t_b / t_a == pytest.approx(3.0, rel=0.02)
    assert (est_a - est_b).abs().max() < 0.01 * est_a.max()


def test_temperature_bounds_warn():
    labels = torch.arange(5).repeat(4)
    perfect = 0.01 * F.one_hot(labels, 5).float()  # always right, almost uniform softmax: needs T < 0.1
    with pytest.warns(UserWarning, match="under-confident"):
        assert lt.prior.calibrate_temperature(perfect, labels) == 0.1
    wrong = 100 * F.one_hot((labels + 1) % 5, 5).float()  # always wrong and sure of it
    with pytest.warns(UserWarning, match="over-confident"):
        assert lt.prior.calibrate_temperature(wrong, labels) == 10.0


def test_return_temperature():
    logits, labels, _ = planted(num_classes=10)
    _, temperature = lt.estimate_prior(logits, labels, steps=10, return_temperature=True)
    assert temperature == lt.prior.calibrate_temperature(logits, labels)
    _, temperature = lt.estimate_prior(logits, labels, calibrate=False, steps=10, return_temperature=True)
    assert temperature == 1.0


def test_bad_inputs():
    logits, labels, _ = planted(num_classes=10)
    with pytest.raises(ValueError, match="one label per row"):
        lt.estimate_prior(logits, labels[:-1])
    with pytest.raises(ValueError, match="empty"):
        lt.estimate_prior(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"num_samples, num_classes"):
        lt.estimate_prior(logits[0], labels[:1])
    with pytest.raises(ValueError, match="integer class indices"):
        lt.estimate_prior(logits, labels.float())
    with pytest.raises(ValueError, match=r"lie in \[0, 9\]"):
        lt.estimate_prior(logits, labels + 1)
    with pytest.raises(ValueError, match=r"classes \[3\] have no labelled sample"):
        keep = labels != 3
        lt.estimate_prior(logits[keep], labels[keep])
    bad = logits.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        lt.estimate_prior(bad, labels)
    with pytest.raises(ValueError, match="steps"):
        lt.estimate_prior(logits, labels, steps=0)


def test_unbalanced_set_warns():
    logits, labels, _ = planted(num_classes=10)
    keep = (labels != 0) | (torch.arange(len(labels)) % 20 < 5)  # class 0 keeps 5 of 20
    with pytest.warns(UserWarning, match="not balanced"):
        lt.estimate_prior(logits[keep], labels[keep], steps=10)


def test_rank_correlation():
    a = torch.tensor([0.1, 0.5, 0.2, 0.9])
    assert lt.rank_correlation(a, a * 2) == pytest.approx(1.0)
    assert lt.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert lt.rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="same length"):
        lt.rank_correlation([1, 2, 3], [1, 2])
