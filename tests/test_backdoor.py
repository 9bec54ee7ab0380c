import math

import numpy as np
import pytest
import torch

import lt_utils as lt


def models(m=3, n=50, c=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, generator=g) * (1 + i) for i in range(m)]


def softmax_np(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_logits_mode_is_weighted_sum():
    zs = models()
    fused = lt.backdoor_adjust(zs)
    torch.testing.assert_close(fused, sum(zs) / 3)
    fused = lt.backdoor_adjust(zs, weights=[2, 1, 1])
    torch.testing.assert_close(fused, 0.5 * zs[0] + 0.25 * zs[1] + 0.25 * zs[2])


def test_logit_sum_argmax_is_product_of_softmaxes():
    zs = models(m=3, n=200, c=10, seed=1)
    product = np.prod([softmax_np(z.double().numpy()) for z in zs], axis=0)
    assert np.array_equal(lt.backdoor_adjust(zs).argmax(1).numpy(), product.argmax(1))
    # softmax of the (official) sum of logits is the normalised product of experts
    official = lt.backdoor_adjust(zs) * len(zs)
    torch.testing.assert_close(torch.softmax(official.double(), 1),
                               torch.from_numpy(product / product.sum(1, keepdims=True)), rtol=1e-5, atol=1e-7)


def test_probs_mode_is_the_papers_average():
    zs = models(m=3, n=40, c=5, seed=2)
    for weights in (None, [0.2, 0.0, 0.8]):
        w = np.ones(3) / 3 if weights is None else np.asarray(weights)
        expected = sum(wi * softmax_np(z.double().numpy()) for wi, z in zip(w, zs))  # P(y|do(x)) = sum_c P(y|x,c)P(c)
        fused = lt.backdoor_adjust(zs, weights=weights, mode="probs")
        np.testing.assert_allclose(fused.exp().double().numpy(), expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(fused.exp().sum(1).numpy(), 1.0, rtol=1e-5)


def test_modes_can_disagree():
    # A: 0 (0.73) or 2; B: 1 (0.62) or 2. Probabilities average to class 0; the product of experts picks 2,
    # the class neither model rules out
    a, b = torch.tensor([[5.0, 0.0, 4.0]]), torch.tensor([[-6.0, 0.5, 0.0]])
    assert lt.backdoor_adjust([a, b]).argmax().item() == 2
    assert lt.backdoor_adjust([a, b], mode="probs").argmax().item() == 0


def test_single_model_equals_the_model():
    z = models(m=1)[0]
    torch.testing.assert_close(lt.backdoor_adjust([z]), z)
    torch.testing.assert_close(lt.backdoor_adjust([z], mode="probs"), torch.log_softmax(z, 1))


def test_input_forms_agree():
    zs = models()
    ref = lt.backdoor_adjust(zs, mode="probs")
    torch.testing.assert_close(lt.backdoor_adjust(torch.stack(zs), mode="probs"), ref)
    torch.testing.assert_close(lt.backdoor_adjust({"a": zs[0], "b": zs[1], "c": zs[2]}, mode="probs"), ref)
    assert lt.backdoor_adjust([z.double() for z in zs]).dtype == torch.float64
    assert lt.backdoor_adjust([z.half() for z in zs]).dtype == torch.float32


def test_probs_mode_is_stable_for_huge_logits():
    zs = [torch.tensor([[1000.0, 0.0]]), torch.tensor([[0.0, 1000.0]])]
    fused = lt.backdoor_adjust(zs, mode="probs")
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, torch.full((1, 2), math.log(0.5)))


def test_inputs_not_modified():
    zs = models()
    copies = [z.clone() for z in zs]
    lt.backdoor_adjust(zs)
    lt.backdoor_adjust(zs, mode="probs")
    assert all(torch.equal(a, b) for a, b in zip(zs, copies))


def test_bad_inputs():
    zs = models()
    with pytest.raises(ValueError, match="at least one model"):
        lt.backdoor_adjust([])
    with pytest.raises(ValueError, match="model 0 has \\(50, 7\\), model 1 has \\(49, 7\\)"):
        lt.backdoor_adjust([zs[0], zs[1][:-1]])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        lt.backdoor_adjust([zs[0][0]])
    with pytest.raises(ValueError, match="one weight per model"):
        lt.backdoor_adjust(zs, weights=[1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        lt.backdoor_adjust(zs, weights=[1, -1, 1])
    with pytest.raises(ValueError, match="not all zero"):
        lt.backdoor_adjust(zs, weights=[0, 0, 0])
    with pytest.raises(ValueError, match="Unknown mode 'mean'"):
        lt.backdoor_adjust(zs, mode="mean")
