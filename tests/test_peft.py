"""PEFT injection into open_clip's VisionTransformer: what trains, what stays exact at init, parameter counts."""
import copy

import open_clip
import pytest
import torch
from open_clip.transformer import VisionTransformer
from torch.nn.attention import SDPBackend, sdpa_kernel

from lt_utils.peft import (PEFT_METHODS, AdaptFormerBlock, PEFTBlock, PromptedBlock, adaptformer_bottleneck,
                           apply_peft, count_parameters, self_attention)


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(image_size=16, patch_size=4, width=32, layers=3, heads=2, mlp_ratio=2.0,
                             output_dim=8).eval()


def trainable_names(module):
    return [n for n, p in module.named_parameters() if p.requires_grad]


@pytest.fixture
def images():
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_bottleneck_formula_matches_lift_values():
    # L = 12: CIFAR-100 4, Places-LT 8, ImageNet-LT 32, iNat 2018 256; tiny C gives at least 1
    assert [adaptformer_bottleneck(c, 12) for c in (100, 365, 1000, 8142, 10)] == [4, 8, 32, 256, 1]
    with pytest.raises(ValueError):
        adaptformer_bottleneck(0, 12)


def test_adaptformer_vit_b16_imagenet_count():
    with torch.device("meta"):  # counts only: the real ViT-B/16 shapes, no memory or init time
        visual = open_clip.create_model("ViT-B-16", pretrained=None, device="meta").visual
    info = apply_peft(visual, "adaptformer", num_classes=1000)
    d, r, layers = 768, 32, 12
    per_block = 2 * d + (d * r + r) + (r * d + d) + 1  # LN, down, up, scale
    assert info["bottleneck"] == 32
    assert info["trainable"] == layers * per_block == 617_868  # about 0.62M, as the paper/LIFT report
    assert info["total"] == count_parameters(visual)["total"]


@pytest.mark.parametrize("method", ["adaptformer", "lora"])
def test_zero_init_methods_equal_frozen_model_exactly(method, images):
    frozen, tuned = tiny_vit(), tiny_vit()
    apply_peft(tuned, method, num_classes=100)
    with torch.no_grad():
        assert torch.equal(tuned(images), frozen(images))


def test_adaptformer_only_adapters_train_and_branch_is_wired(images):
    visual = tiny_vit()
    info = apply_peft(visual, "adaptformer", num_classes=100, bottleneck=4)
    names = trainable_names(visual)
    assert names and all(".adaptformer." in n for n in names)
    assert all(isinstance(b, AdaptFormerBlock) for b in visual.transformer.resblocks)
    assert info["trainable"] == 3 * (2 * 32 + 32 * 4 + 4 + 4 * 32 + 32 + 1)
    before = visual(images).detach()
    visual(images).sum().backward()
    assert all(p.grad is None for n, p in visual.named_parameters() if not p.requires_grad)
    # gradient reaches the up-projection (the only one non-zero at init); moving it changes the output
    assert visual.transformer.resblocks[0].adaptformer.up_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        visual.transformer.resblocks[1].adaptformer.up_proj.weight.normal_()
        assert not torch.allclose(visual(images), before)


def test_adaptformer_branch_is_parallel_to_the_mlp_on_the_pre_ln2_stream():
    visual = tiny_vit()
    apply_peft(visual, "adaptformer", num_classes=100, bottleneck=4)
    block = visual.transformer.resblocks[0]
    with torch.no_grad():
        block.adaptformer.up_proj.weight.normal_()
        block.adaptformer.scale.fill_(0.5)
        block.ln_2.weight.normal_(), block.ln_2.bias.normal_()  # a fresh LN is nearly idempotent: make it bite
        x = torch.randn(2, 17, 32)
        h = x + block.attention(block.ln_1(x))  # residual stream after attention, before ln_2
        expected = h + block.mlp(block.ln_2(h)) + block.adaptformer(h)
        torch.testing.assert_close(block(x), expected)
        a = block.adaptformer
        branch = a.up_proj(torch.relu(a.down_proj(a.ln(h)))) * 0.5
        torch.testing.assert_close(a(h), branch)


def test_lora_touches_only_q_and_v(images):
    visual = tiny_vit()
    info = apply_peft(visual, "lora", num_classes=100, rank=2)
    names = trainable_names(visual)
    assert names and all("lora_" in n for n in names)
    assert info["trainable"] == 3 * (2 * 32 * 2 + 2 * 2 * 32)
    attn = visual.transformer.resblocks[0].attn
    w0 = attn.parametrizations.in_proj_weight.original.detach().clone()
    with torch.no_grad():
        attn.parametrizations.in_proj_weight[0].lora_b.normal_()
    w = attn.in_proj_weight.detach()
    d = 32
    assert torch.equal(w[d:2 * d], w0[d:2 * d])  # k untouched
    assert not torch.equal(w[:d], w0[:d]) and not torch.equal(w[2 * d:], w0[2 * d:])
    visual(images).sum().backward()
    assert attn.parametrizations.in_proj_weight[0].lora_a.grad is not None


@pytest.mark.parametrize("method", ["vpt_shallow", "vpt_deep"])
def test_vpt_adds_prompt_tokens(method, images):
    visual, frozen = tiny_vit(), tiny_vit()
    info = apply_peft(visual, method, num_classes=100, num_tokens=5)
    blocks = visual.transformer.resblocks
    prompted = [isinstance(b, PromptedBlock) for b in blocks]
    assert prompted == ([True] * 3 if method == "vpt_deep" else [True, False, False])
    assert info["trainable"] == sum(prompted) * 5 * 32
    assert all(n.endswith("vpt_prompts") for n in trainable_names(visual))
    seen = []
    hooks = [b.register_forward_hook(lambda m, a, out: seen.append(out.shape[1])) for b in blocks]
    out = visual(images)
    for h in hooks:
        h.remove()
    assert seen == [17 + 5] * 3  # class token + 16 patches + 5 prompts in every block
    assert out.shape == frozen(images).shape
    assert not torch.allclose(out, frozen(images))  # prompts are attended to: VPT is not exact at init
    out.sum().backward()
    assert blocks[0].vpt_prompts.grad.abs().sum() > 0


def test_bitfit_linear_probe_full(images):
    visual = tiny_vit()
    apply_peft(visual, "bitfit", num_classes=10)
    names = trainable_names(visual)
    assert names and all(n.startswith("transformer.resblocks.") and n.endswith("bias") for n in names)
    assert "transformer.resblocks.0.attn.in_proj_bias" in names

    visual = tiny_vit()
    assert apply_peft(visual, "linear_probe", num_classes=10)["trainable"] == 0

    visual = tiny_vit()
    info = apply_peft(visual, "full", num_classes=10)
    assert info["trainable"] == info["total"] > 0


def test_every_method_runs_forward_backward(images):
    for method in PEFT_METHODS:
        visual = tiny_vit()
        apply_peft(visual, method, num_classes=10)
        out = visual(images)
        assert out.shape == (4, 8)
        if method != "linear_probe":
            out.square().mean().backward()
            assert any(p.grad is not None for p in visual.parameters() if p.requires_grad), method


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="adaptformer"):
        apply_peft(tiny_vit(), "prefix_tuning", num_classes=10)
    visual = tiny_vit()
    apply_peft(visual, "adaptformer", num_classes=10)
    with pytest.raises(RuntimeError, match="already carries"):
        apply_peft(visual, "lora", num_classes=10)
    with pytest.raises(TypeError):
        apply_peft(torch.nn.Linear(2, 2), "adaptformer", num_classes=10)


def test_deepcopy_of_peft_model_is_independent(images):
    visual = tiny_vit()
    apply_peft(visual, "vpt_deep", num_classes=10)
    clone = copy.deepcopy(visual)
    with torch.no_grad():
        expected = clone(images)
        visual.transformer.resblocks[0].vpt_prompts.add_(1.0)
        assert torch.equal(clone(images), expected)
        assert not torch.equal(visual(images), expected)


@pytest.mark.parametrize("width, heads", [(64, 4), (96, 2), (48, 3)])  # head_dim 16 (the lab's), 48, 16
def test_self_attention_gives_the_bits_of_multihead_attention(width, heads):
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
    x = torch.randn(5, 17, width, requires_grad=True)
    with sdpa_kernel(SDPBackend.MATH):  # the kernel lt.training.train picks on the CPU
        expected = attn(x, x, x, need_weights=False)[0]
    got = self_attention(attn, x)
    assert torch.equal(got, expected)
    grad = torch.randn_like(got)
    assert torch.equal(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])
    attn.eval()
    with torch.no_grad():  # nn.MultiheadAttention's fused inference kernel scales q once: equal up to rounding
        torch.testing.assert_close(self_attention(attn, x), attn(x, x, x, need_weights=False)[0])


def test_self_attention_through_the_fused_kernel_matches_multihead_attention():
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    x = torch.randn(3, 27, 64, requires_grad=True)
    got = self_attention(attn, x, written_out=False)  # F.scaled_dot_product_attention, as on CUDA
    expected = attn(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(got, expected)
    grad = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])


@pytest.mark.gpu
def test_self_attention_on_cuda_under_autocast():
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(768, 12, batch_first=True).cuda()  # ViT-B/16's attention
    x = torch.randn(8, 197, 768, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        got, expected = self_attention(attn, x), attn(x, x, x, need_weights=False)[0]
    assert got.dtype == expected.dtype == torch.float16
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_every_method_leaves_blocks_with_the_fast_attention(method):
    visual = tiny_vit()
    apply_peft(visual, method, num_classes=100)
    assert all(isinstance(b, PEFTBlock) for b in visual.transformer.resblocks)


def test_peft_block_falls_back_to_multihead_attention_when_it_must(images):
    visual = tiny_vit()
    apply_peft(visual, "bitfit", num_classes=10)
    block = visual.transformer.resblocks[0]
    x = torch.randn(2, 17, 32)
    mask = torch.zeros(17, 17)
    mask[:, 5:] = float("-inf")  # a mask: self_attention has none, the block must use nn.MultiheadAttention
    masked = block.attention(x, attn_mask=mask)
    torch.testing.assert_close(masked, block.attn(x, x, x, need_weights=False, attn_mask=mask)[0])
    assert not torch.allclose(masked, block.attention(x))
    block.attn.dropout = 0.5  # attention dropout in training: nn.MultiheadAttention applies it
    block.train()
    torch.manual_seed(3)
    dropped = block.attention(x)
    torch.manual_seed(3)
    torch.testing.assert_close(dropped, block.attn(x, x, x, need_weights=False)[0])
