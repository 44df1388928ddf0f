"""Analyses of captured attention (`ssl_core.features.attention_hooks`): rollout, class-token maps, mass masks.

Every function takes a ``[L, heads, T, T]`` tensor of one image (T = prefix tokens + h*w patches) and returns
maps over the patch grid, or (`attention_shares`) how a token's attention splits over the kinds of tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_core.errors import BadRequest


def rollout(attention: torch.Tensor, residual_weight: float = 0.5, head_fusion: str = "mean") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) across layers.

    attention: [L, heads, T, T] for one image. Each layer's head-fused map A is mixed with the identity
    for the residual path, ``A' = w*I + (1-w)*A`` renormalised by rows, and the layers are multiplied
    from the first to the last: ``R = A'_L ... A'_2 A'_1``. Returns R: [T, T].
    """
    fused = _fuse_heads(attention, head_fusion)  # [L, T, T]
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    result = eye
    for layer_map in fused:
        mixed = residual_weight * eye + (1 - residual_weight) * layer_map
        mixed = mixed / mixed.sum(-1, keepdim=True)
        result = mixed @ result
    return result


def _fuse_heads(attention: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """[L, heads, T, T] -> [L, T, T] (mean, max or min over the heads)."""
    if head_fusion == "mean":
        return attention.mean(1)
    if head_fusion == "max":
        return attention.amax(1)
    if head_fusion == "min":
        return attention.amin(1)
    raise BadRequest(f"head_fusion must be mean, max or min, not {head_fusion!r}")


def query_attention_to_patches(attention_rows: torch.Tensor, num_prefix: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Attention from one query token to the patch tokens, as a grid.

    attention_rows: [..., T] (e.g. [heads, T] for the class token's row per head).
    Returns [..., h, w]: the prefix (class/register) columns are dropped, not renormalised, so the
    values are the share of the query's attention that goes to each patch.
    """
    h, w = grid_hw
    return attention_rows[..., num_prefix:].reshape(*attention_rows.shape[:-1], h, w)


def mass_mask(weights: torch.Tensor, keep_mass: float) -> torch.Tensor:
    """Boolean mask of the largest weights that together hold ``keep_mass`` of the total (DINO's figure).

    weights: [...] non-negative. Keeps the smallest set of entries, largest first, whose sum reaches
    ``keep_mass * weights.sum()``.
    """
    if not 0.0 <= keep_mass <= 1.0:
        raise BadRequest(f"keep_mass must be in [0, 1], got {keep_mass}")
    flat = weights.flatten().double()
    order = torch.argsort(flat, descending=True)
    cumulative = torch.cumsum(flat[order], 0) / flat.sum().clamp_min(1e-12)
    count = int(torch.searchsorted(cumulative, cumulative.new_tensor(keep_mass)).item()) + 1
    count = min(count, flat.numel()) if keep_mass > 0 else 0
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[:count]] = True
    return mask.reshape(weights.shape)


def class_attention_map(attention: torch.Tensor, num_prefix: int, grid_hw: tuple[int, int], layer: int = -1,
                        head: int | None = None, query: int = 0) -> torch.Tensor:
    """How much one query token (default: the class token) attends to each patch, in one layer.

    attention: [L, heads, T, T]. head None averages the heads. Returns [h, w].
    Models without prefix tokens have no class token: the map is then the attention each patch receives,
    averaged over all query patches.
    """
    layer_maps = attention[layer]  # [heads, T, T]
    rows = layer_maps[:, query] if num_prefix > 0 else layer_maps.mean(1)  # [heads, T]
    rows = rows.mean(0) if head is None else rows[head]
    return query_attention_to_patches(rows, num_prefix, grid_hw)


def rollout_map(attention: torch.Tensor, num_prefix: int, grid_hw: tuple[int, int], residual_weight: float = 0.5,
                head_fusion: str = "mean") -> torch.Tensor:
    """The rollout's class-token row over the patches [h, w] (for pooled models: the mean row)."""
    rolled = rollout(attention, residual_weight, head_fusion)  # [T, T]
    row = rolled[0] if num_prefix > 0 else rolled[num_prefix:].mean(0)
    return query_attention_to_patches(row, num_prefix, grid_hw)


@dataclass(frozen=True)
class AttentionShares:
    """How one query token's attention in one layer (heads averaged) splits over the token kinds; sums to 1."""

    class_token: float
    registers: float
    patches: float


def attention_shares(attention: torch.Tensor, has_class_token: bool, num_registers: int, layer: int = -1,
                     query: int = 0) -> AttentionShares:
    """The share of token ``query``'s attention (default the class token) that goes to the class token, to the
    register tokens and to the patches, in one layer, heads averaged.

    attention: [L, heads, T, T] for one image, tokens ordered [class (if any), registers..., patches...] as timm
    and `PatchFeatures.register_tokens` order them (T = class + R + h*w).
    """
    row = attention[layer, :, query].double().mean(0)  # [T]: heads averaged; each head's row sums to 1
    start = 1 if has_class_token else 0  # the first register's column
    end = start + num_registers  # the first patch's column
    return AttentionShares(class_token=float(row[:start].sum()), registers=float(row[start:end].sum()),
                           patches=float(row[end:].sum()))
