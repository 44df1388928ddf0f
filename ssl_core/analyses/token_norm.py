"""Artifact tokens: the norm of every patch token, block by block, with high-norm outliers flagged.

Large ViTs trained long (DINOv2, CLIP, ...) repurpose a few low-information patches as global scratch space:
their tokens' norms are several times the others' (Darcet et al., "Vision Transformers Need Registers", 2024),
and they show as bright spots in attention maps. Registers are extra tokens that take that role instead; their
norms are reported apart. A patch is an outlier in a block when its norm exceeds the block's median by more than
``threshold`` robust standard deviations (1.4826 x the median absolute deviation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ssl_core.errors import BadRequest

ROBUST_SIGMA = 1.4826  # MAD -> standard deviation for normal data


@dataclass
class TokenNorms:
    """Token norms of one image across blocks."""

    blocks: list[int]
    patch_norms: np.ndarray  # [L, h, w]
    outliers: np.ndarray  # [L, h, w] bool
    cutoffs: np.ndarray  # [L] the norm above which a patch is flagged
    class_norms: np.ndarray | None  # [L] or None without a class token
    register_norms: np.ndarray  # [L, R] (R = 0 without registers)
    threshold: float

    def describe(self) -> str:
        last = self.patch_norms[-1]
        flagged = int(self.outliers[-1].sum())
        text = (f"block {self.blocks[-1]}: patch-token norms median {np.median(last):.1f}, max {last.max():.1f}; "
                f"{flagged} of {last.size} patches above {self.cutoffs[-1]:.1f} (median + {self.threshold:g} robust sd)")
        if self.register_norms.shape[1]:
            text += f"; register norms {', '.join(f'{v:.1f}' for v in self.register_norms[-1])}"
        return text


def outlier_cutoff(norms: np.ndarray, threshold: float) -> float:
    """median + threshold x robust sd of a set of norms."""
    median = float(np.median(norms))
    return median + threshold * ROBUST_SIGMA * float(np.median(np.abs(norms - median)))


def token_norms(features, blocks: list[int] | None = None, threshold: float = 5.0) -> TokenNorms:
    """Norms of a `PatchFeatures`' tokens for ``blocks`` (default: every block it was extracted with, else the
    final normed output, reported as block -1)."""
    if threshold <= 0:
        raise BadRequest(f"the outlier threshold must be positive, not {threshold}")
    blocks = sorted(features.layer_tokens) if blocks is None else list(blocks)
    grids = [features.tokens(b) for b in blocks] if blocks else [features.patch_tokens]  # each [h, w, D]
    prefixes = [features.layer_prefix_tokens[b] for b in blocks] if blocks else [features.prefix_tokens]  # [P, D]
    norms = torch.stack([g.float().norm(dim=-1) for g in grids]).numpy()  # [L, h, w]
    cutoffs = np.array([outlier_cutoff(n.ravel(), threshold) for n in norms])
    prefix_norms = torch.stack([p.float().norm(dim=-1) for p in prefixes]).numpy()  # [L, P]
    start = int(features.has_class_token)
    return TokenNorms(blocks or [-1], norms, norms > cutoffs[:, None, None], cutoffs,
                      prefix_norms[:, 0] if features.has_class_token else None,
                      prefix_norms[:, start:start + features.num_registers], threshold)


__all__ = ["TokenNorms", "token_norms", "outlier_cutoff"]
