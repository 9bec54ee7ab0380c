"""Parameter-efficient fine-tuning (PEFT) for open_clip's ``VisionTransformer``, injected without rewriting it.

Every method freezes the backbone and adds (or unfreezes) a few parameters, following LIFT (Shi et al., ICML
2024), whose recipe the paper reuses:

- ``adaptformer``: in every block a bottleneck branch parallel to the MLP, fed the residual stream before
  ``ln_2``: LN -> Linear(D -> r) -> ReLU -> Linear(r -> D) -> x learnable scale (init 1). The up-projection and
  the biases start at zero, so at step 0 the model is *exactly* the frozen model.
- ``vpt_shallow`` / ``vpt_deep``: 10 learnable prompt tokens appended after the patch tokens before the first
  block (shallow) or replaced before every block (deep). The class token stays at position 0.
- ``lora``: low-rank updates of the query and value projections (zero-initialised, so step 0 is exact too).
- ``bitfit``: the bias terms of the transformer blocks. ``linear_probe``: nothing (the head alone trains).
  ``full``: every parameter of the vision tower.

How the injection works: each ``ResidualAttentionBlock`` is *re-classed in place* to a small subclass whose
``forward`` adds the branch; its weights, parameter names and the rest of the model stay as open_clip built them.
LoRA uses ``torch.nn.utils.parametrize`` on the fused ``in_proj_weight`` instead. Every block then computes
its self-attention with ``self_attention`` (the same result as ``nn.MultiheadAttention``, without its layout copies).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn
from torch.nn.utils import parametrize

PEFT_METHODS = ("adaptformer", "vpt_shallow", "vpt_deep", "lora", "bitfit", "linear_probe", "full")


def adaptformer_bottleneck(num_classes: int, num_layers: int) -> int:
    """LIFT's bottleneck width r = 2 ** max(0, floor(log2(C / (2 L)))): CIFAR-100 4, ImageNet-LT 32 (L = 12)."""
    if num_classes < 1 or num_layers < 1:
        raise ValueError(f"num_classes and num_layers must be >= 1, got {num_classes} and {num_layers}.")
    return 2 ** max(0, math.floor(math.log2(num_classes / (2 * num_layers))))


def count_parameters(module: nn.Module) -> dict:
    """``dict(trainable=..., total=...)``: numbers of parameters with and without ``requires_grad``."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return dict(trainable=trainable, total=total)


# --- attention ---------------------------------------------------------------------------------------------------
def self_attention(attn: nn.MultiheadAttention, x: torch.Tensor,
                   written_out: Optional[bool] = None) -> torch.Tensor:
    """``attn(x, x, x, need_weights=False)[0]`` for a batch-first ``x`` (B x T x D), without the layout copies of
    ``nn.MultiheadAttention``: one projection to q, k and v, heads split by views. ``written_out`` (default: on
    the CPU) writes the attention out as PyTorch's math kernel computes it (q and k each scaled by
    head_dim ** -1/4), the kernel ``lt.training.train`` selects on the CPU, so training gives the same bits, in less
    time (benchmarks/RESULTS.md, 2026-11-23, lab); otherwise it is ``F.scaled_dot_product_attention`` (flash
    kernels on CUDA)."""
    batch, tokens, dim = x.shape
    heads = attn.num_heads
    head_dim = dim // heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(batch, tokens, 3, heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each B x heads x T x head_dim
    if written_out is None:
        written_out = x.device.type == "cpu"
    if written_out:
        root_scale = math.sqrt(1.0 / math.sqrt(head_dim))
        weights = torch.softmax((q * root_scale) @ (k.transpose(-2, -1) * root_scale), dim=-1)
        out = weights @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return F.linear(out.transpose(1, 2).reshape(batch, tokens, dim), attn.out_proj.weight, attn.out_proj.bias)


def _plain_self_attention(attn: nn.MultiheadAttention) -> bool:
    """Whether ``self_attention`` computes what ``attn`` does: q, k, v of one width, no extra key/value bias or
    zero token, no attention dropout in training."""
    return (attn._qkv_same_embed_dim and attn.batch_first and attn.bias_k is None and not attn.add_zero_attn
            and not (attn.training and attn.dropout > 0))


class PEFTBlock(ResidualAttentionBlock):
    """open_clip's block with the attention of ``self_attention``; the base of every PEFT block."""

    def attention(self, q_x, k_x=None, v_x=None, attn_mask=None):
        if k_x is None and v_x is None and attn_mask is None and _plain_self_attention(self.attn):
            return self_attention(self.attn, q_x)
        return super().attention(q_x, k_x, v_x, attn_mask)


# --- AdaptFormer -------------------------------------------------------------------------------------------------
class AdaptFormer(nn.Module):
    """The parallel bottleneck branch: LN -> down (D -> r) -> ReLU -> up (r -> D) -> x scale."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.down_proj = nn.Linear(dim, bottleneck)
        self.up_proj = nn.Linear(bottleneck, dim)
        self.scale = nn.Parameter(torch.ones(1))
        nn.init.kaiming_normal_(self.down_proj.weight, a=math.sqrt(5))
        # zero up-projection and biases: the branch outputs exactly 0 at init
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x):
        return self.up_proj(F.relu(self.down_proj(self.ln(x)))) * self.scale


class AdaptFormerBlock(PEFTBlock):
    """open_clip's block plus ``self.adaptformer`` fed the residual stream before ``ln_2``."""

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
        # the same two residual steps as ResidualAttentionBlock.forward, plus the parallel branch
        k_x = self.ln_1_kv(k_x) if hasattr(self, "ln_1_kv") and k_x is not None else None
        v_x = self.ln_1_kv(v_x) if hasattr(self, "ln_1_kv") and v_x is not None else None
        x = q_x + self.ls_1(self.attention(q_x=self.ln_1(q_x), k_x=k_x, v_x=v_x, attn_mask=attn_mask))
        return x + self.ls_2(self.mlp(self.ln_2(x))) + self.adaptformer(x)


# --- VPT ---------------------------------------------------------------------------------------------------------
class PromptedBlock(PEFTBlock):
    """open_clip's block that first drops any prompt tokens after the first ``vpt_seq_len`` tokens and appends
    its own ``vpt_prompts`` (batch-first token layout)."""

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
        prompts = self.vpt_prompts.to(q_x.dtype).expand(q_x.shape[0], -1, -1)
        q_x = torch.cat([q_x[:, : self.vpt_seq_len], prompts], dim=1)
        return super().forward(q_x, k_x, v_x, attn_mask)


# --- LoRA --------------------------------------------------------------------------------------------------------
# Why not the `peft` library: its LoRA targets nn.Linear-like layers, while nn.MultiheadAttention keeps q, k and v
# in ONE fused parameter (in_proj_weight); peft cannot put LoRA on the q and v slices alone (its experimental
# MultiheadAttention support adapts the fused projection as a whole). A parametrization of that weight can.
class LoRAQV(nn.Module):
    """Parametrization of a fused ``in_proj_weight`` [3D, D]: W + s * [B_q^T A_q^T; 0; B_v^T A_v^T], s = 1 / r.

    Equivalent to q += s * x A_q B_q and v += s * x A_v B_v (LIFT's LoRA); B starts at zero, so W is unchanged.
    """

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.dim, self.scaling = dim, 1.0 / rank
        self.lora_a = nn.Parameter(torch.empty(2, dim, rank))  # [q, v]
        self.lora_b = nn.Parameter(torch.zeros(2, rank, dim))
        for a in self.lora_a:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def forward(self, weight):
        delta = self.scaling * (self.lora_a @ self.lora_b).transpose(1, 2)  # [2, D, D], rows = output features
        zeros = torch.zeros_like(delta[0])
        return weight + torch.cat([delta[0], zeros, delta[1]], dim=0).to(weight.dtype)


# --- apply -------------------------------------------------------------------------------------------------------
def _blocks(visual: nn.Module) -> nn.ModuleList:
    if not isinstance(visual, VisionTransformer):
        raise TypeError(f"apply_peft expects open_clip's VisionTransformer, got {type(visual).__name__}.")
    blocks = visual.transformer.resblocks
    for block in blocks:
        if type(block) is not ResidualAttentionBlock:
            raise TypeError(
                f"apply_peft supports open_clip's plain ResidualAttentionBlock, found {type(block).__name__} "
                "(a custom block type or a block that already carries PEFT)."
            )
    if not visual.transformer.batch_first:
        raise TypeError("apply_peft expects a batch-first transformer (open_clip's default).")
    return blocks


def _new_module(module: nn.Module, like: torch.Tensor) -> nn.Module:
    # PEFT parameters live on the backbone's device, in its dtype (float32 with AMP: autocast casts activations)
    return module.to(device=like.device, dtype=like.dtype)


def apply_peft(visual: VisionTransformer, method: str, num_classes: int, *, bottleneck: Optional[int] = None,
               rank: Optional[int] = None, num_tokens: int = 10) -> dict:
    """Freeze ``visual`` (open_clip ``VisionTransformer``) and inject one PEFT ``method`` in place.

    ``bottleneck`` (AdaptFormer) and ``rank`` (LoRA) default to ``adaptformer_bottleneck(num_classes, L)``;
    ``num_tokens`` is the VPT prompt length. Returns ``dict(method, trainable, total, ...)`` (parameter counts of
    ``visual``, the head not included). A vision tower can carry one method; build a fresh one to try another.
    """
    if method not in PEFT_METHODS:
        raise ValueError(f"Unknown PEFT method {method!r}; choose one of {', '.join(PEFT_METHODS)}.")
    if getattr(visual, "peft_method", None) is not None:
        raise RuntimeError(
            f"This vision tower already carries PEFT {visual.peft_method!r}; load or copy a fresh foundation model."
        )
    blocks = _blocks(visual)
    num_layers, dim = len(blocks), visual.transformer.width
    ref = visual.positional_embedding
    info = dict(method=method)
    visual.requires_grad_(False)

    if method == "adaptformer":
        r = bottleneck or adaptformer_bottleneck(num_classes, num_layers)
        for block in blocks:
            block.__class__ = AdaptFormerBlock  # same weights and names; forward gains the branch
            block.adaptformer = _new_module(AdaptFormer(dim, r), ref)
        info["bottleneck"] = r
    elif method in ("vpt_shallow", "vpt_deep"):
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}.")
        patch_area = visual.conv1.kernel_size[0] * visual.conv1.kernel_size[1]
        bound = math.sqrt(6.0 / (3 * patch_area + dim))  # VPT's uniform (Xavier-like) init
        for block in blocks if method == "vpt_deep" else blocks[:1]:
            block.__class__ = PromptedBlock
            block.vpt_seq_len = ref.shape[0]  # class token + patches
            prompts = torch.empty(1, num_tokens, dim, device=ref.device, dtype=ref.dtype).uniform_(-bound, bound)
            block.vpt_prompts = nn.Parameter(prompts)
        info["num_tokens"] = num_tokens
    elif method == "lora":
        r = rank or adaptformer_bottleneck(num_classes, num_layers)
        for block in blocks:
            if getattr(block.attn, "in_proj_weight", None) is None:
                raise TypeError("LoRA on q/v expects nn.MultiheadAttention with a fused in_proj_weight.")
            parametrize.register_parametrization(block.attn, "in_proj_weight", _new_module(LoRAQV(dim, r), ref))
            block.attn.parametrizations.in_proj_weight.original.requires_grad_(False)
        info["rank"] = r
    elif method == "bitfit":
        for name, p in blocks.named_parameters():
            if name.endswith("bias"):
                p.requires_grad_(True)
    elif method == "full":
        visual.requires_grad_(True)
    # linear_probe: the backbone stays frozen, only the head trains
    for block in blocks:
        if type(block) is ResidualAttentionBlock:
            block.__class__ = PEFTBlock  # the faster attention, the same result

    visual.peft_method = method
    info.update(count_parameters(visual))
    return info
