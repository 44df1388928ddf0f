"""Attention weights of timm ViTs, captured only on request.

timm computes attention with fused ``scaled_dot_product_attention``, which never materialises the
weights. `capture_attention` switches the attention modules of one model to their explicit path for the
duration of one forward pass and hooks ``attn_drop`` (which receives the softmaxed weights in ViT, BEiT
and EVA alike), then restores the fused path. Plain feature extraction never pays for it.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ssl_core.errors import AttentionUnavailableError


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a timm ViT/BEiT/EVA, in block order."""
    return [m for m in model.modules() if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)]


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect each block's attention weights ``[B, heads, T, T]`` during the forward passes inside the block."""
    modules = attention_modules(model)
    if not modules:
        raise AttentionUnavailableError(f"{type(model).__name__} has no attention modules PatchLens can read")
    captured: list[torch.Tensor] = []
    fused = [m.fused_attn for m in modules]
    hooks = [m.attn_drop.register_forward_hook(lambda _m, _inp, out: captured.append(out.detach().float()))
             for m in modules]
    try:
        for m in modules:
            m.fused_attn = False
        yield captured
    finally:
        for m, flag in zip(modules, fused):
            m.fused_attn = flag
        for h in hooks:
            h.remove()


def check_attention(maps: list[torch.Tensor], num_blocks: int, num_tokens: int) -> torch.Tensor:
    """Stack captured maps to ``[B, L, heads, T, T]`` after checking they are really attention weights."""
    if len(maps) != num_blocks:
        raise AttentionUnavailableError(f"captured {len(maps)} attention maps for {num_blocks} blocks")
    stacked = torch.stack(maps, dim=1)  # [B, L, H, T, T]
    if stacked.shape[-1] != num_tokens or stacked.shape[-2] != num_tokens:
        raise AttentionUnavailableError(f"attention maps of shape {tuple(stacked.shape)} for {num_tokens} tokens")
    row_sums = stacked.sum(-1)
    if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-2):
        raise AttentionUnavailableError("captured tensors are not attention weights (rows do not sum to 1)")
    return stacked
