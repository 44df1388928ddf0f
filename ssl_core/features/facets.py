"""Facets of a block (dino-vit-features): the query, key and value tokens of its attention, next to its output.

`capture_qkv` hooks the attention module of chosen blocks and recomputes, from the module's own input and
weights, the query, key and value heads exactly as timm's ViT, BEiT, EVA/DINOv3 (rotary) and PE attention do:
``[B, heads, T, head_dim]`` each, with q/k norms and rotary embeddings applied to the patch tokens. The
captured facets are an independent path to the attention weights too: ``softmax(q kᵀ · scale)`` (plus BEiT's
relative position bias, which this does not add) is what `ssl_core.features.attention_hooks` captures.

`facet_tokens` gives one facet of one block as patch tokens ``[h, w, heads*head_dim]`` per image (heads
concatenated, as dino-vit-features does), and the prefix (class, register) tokens apart.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from timm.layers import apply_rot_embed_cat
from torch import nn

from ssl_core.errors import BadRequest

FACETS = ("query", "key", "value", "token")


def query_key_value(attn: nn.Module, x: torch.Tensor, rope: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, heads, T, head_dim] of a timm attention module for its input x [B, T, C] (rope: [L, 2*dh] or None)."""
    B, T, _ = x.shape
    heads = int(attn.num_heads)
    if getattr(attn, "qkv", None) is not None:
        qkv = attn.qkv(x)  # [B, T, 3 * heads * dh]
        if getattr(attn, "q_bias", None) is not None:  # BEiT / EVA: separate q, (zero) k and v biases
            qkv = qkv + torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        q, k, v = qkv.reshape(B, T, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (proj(x).reshape(B, T, heads, -1).transpose(1, 2)
                   for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    q = attn.q_norm(q) if hasattr(attn, "q_norm") else q
    k = attn.k_norm(k) if hasattr(attn, "k_norm") else k
    if rope is not None:  # rotary embeddings on the patch tokens only, as the module applies them
        npt, half = int(getattr(attn, "num_prefix_tokens", 0)), bool(getattr(attn, "rotate_half", False))
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)
    return q, k, v


@contextlib.contextmanager
def capture_qkv(model: nn.Module, blocks: Sequence[int]) -> Iterator[dict[int, tuple[torch.Tensor, ...]]]:
    """Inside the block, each forward pass stores ``{block: (q, k, v)}`` (each [B, heads, T, head_dim], float)."""
    captured: dict[int, tuple[torch.Tensor, ...]] = {}

    def hook_for(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0]
            rope = kwargs.get("rope", args[1] if len(args) > 1 else None)
            captured[index] = tuple(t.detach().float() for t in query_key_value(module, x, rope))
        return hook

    hooks = [model.blocks[b].attn.register_forward_pre_hook(hook_for(b), with_kwargs=True) for b in blocks]
    try:
        yield captured
    finally:
        for h in hooks:
            h.remove()


def attention_from_qkv(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q kᵀ · scale): [B, heads, T, T] from q, k [B, heads, T, dh]."""
    return torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)


@dataclass
class FacetTokens:
    """One facet of one block for one image."""

    facet: str  # "query" | "key" | "value" | "token"
    block: int
    patch_tokens: torch.Tensor  # [h, w, D] (D = heads * head_dim for q/k/v)
    prefix_tokens: torch.Tensor  # [P, D] class and register tokens
    grid_hw: tuple[int, int]


def check_facet(facet: str) -> str:
    if facet not in FACETS:
        raise BadRequest(f"unknown facet '{facet}' (choose from {', '.join(FACETS)})")
    return facet


def facet_tokens(encoder, images: Sequence, facet: str, block: int = -1) -> list[FacetTokens]:
    """The ``facet`` of ``block`` (negative counts from the end) for each image, through the encoder's own resize.

    ``"token"`` is the block's output (the residual stream, as ``layer_tokens``); q/k/v are its attention's.
    """
    check_facet(facet)
    [block] = encoder.resolve_layers([block])
    out = []
    for image in images:
        processed = encoder.prepare(image)
        x = encoder.to_tensor(processed)[None].to(encoder.device)  # [1, 3, H, W]
        grid = (x.shape[-2] // encoder.patch_size, x.shape[-1] // encoder.patch_size)
        if facet == "token":
            [features] = encoder.extract([processed], layers=[block])
            tokens = torch.cat([features.layer_prefix_tokens[block], features.tokens(block).flatten(0, 1)])
        else:
            tokens = _qkv_tokens(encoder, x, grid, block, FACETS.index(facet))
        P = encoder.num_prefix_tokens
        out.append(FacetTokens(facet, block, tokens[P:].reshape(*grid, -1), tokens[:P], grid))
    return out


def _qkv_tokens(encoder, x: torch.Tensor, grid: tuple[int, int], block: int, which: int) -> torch.Tensor:
    """q (0), k (1) or v (2) of one block for one image: [T, heads * head_dim] on the CPU. x: [1, 3, H, W]."""
    with encoder.running(grid) as model, capture_qkv(model, [block]) as captured:
        model.forward_intermediates(x, indices=[block], intermediates_only=True, stop_early=True)
    facet = captured[block][which][0]  # [heads, T, dh]
    return facet.permute(1, 0, 2).reshape(facet.shape[1], -1).cpu()


__all__ = ["FACETS", "FacetTokens", "query_key_value", "capture_qkv", "attention_from_qkv", "facet_tokens",
           "check_facet"]
