"""Best-buddy correspondences between two images (dino-vit-features): mutual nearest patches.

Patch i of image A and patch j of image B are best buddies when j is i's most similar patch in B (cosine of
their tokens) *and* i is j's most similar patch in A. Mutual nearest neighbours are few and reliable: they are
what the paper draws as lines between two images, and what co-segmentation starts from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.errors import BadRequest


@dataclass
class Correspondences:
    """Best buddies of two patch grids, most similar first."""

    patches_a: np.ndarray  # [M, 2] int (row, col) in image A
    patches_b: np.ndarray  # [M, 2] int (row, col) in image B
    similarity: np.ndarray  # [M] cosine of each pair's tokens
    grid_a: tuple[int, int]
    grid_b: tuple[int, int]
    total: int  # best buddies found before keeping the top ones

    @property
    def count(self) -> int:
        return int(len(self.similarity))

    @property
    def mean_similarity(self) -> float:
        return float(self.similarity.mean()) if self.count else float("nan")

    def describe(self) -> str:
        shown = f", the top {self.count} shown" if self.count < self.total else ""
        return (f"{self.total} best buddies between a {self.grid_a[0]}x{self.grid_a[1]} and a "
                f"{self.grid_b[0]}x{self.grid_b[1]} patch grid{shown}; mean cosine {self.mean_similarity:.3f}")


def best_buddies(tokens_a: torch.Tensor, tokens_b: torch.Tensor, top: int | None = None) -> Correspondences:
    """Mutual nearest patches of tokens_a [h1, w1, D] and tokens_b [h2, w2, D] (cosine), the ``top`` most similar."""
    if tokens_a.shape[-1] != tokens_b.shape[-1]:
        raise BadRequest(f"tokens of dimension {tokens_a.shape[-1]} and {tokens_b.shape[-1]} cannot be compared")
    if top is not None and top < 1:
        raise BadRequest(f"the number of correspondences to keep must be at least 1, not {top}")
    (h1, w1, _), (h2, w2, _) = tokens_a.shape, tokens_b.shape
    a = F.normalize(tokens_a.reshape(h1 * w1, -1).float(), dim=-1)  # [N1, D]
    b = F.normalize(tokens_b.reshape(h2 * w2, -1).float(), dim=-1)  # [N2, D]
    similarity = a @ b.T  # [N1, N2]
    nearest_in_b = similarity.argmax(dim=1)  # [N1]
    nearest_in_a = similarity.argmax(dim=0)  # [N2]
    mutual = nearest_in_a[nearest_in_b] == torch.arange(h1 * w1, device=a.device)  # [N1] bool
    buddies = torch.nonzero(mutual).flatten()  # [M] indices into A
    partners = nearest_in_b[buddies]  # [M] indices into B
    scores = similarity[buddies, partners]
    order = torch.argsort(scores, descending=True)[:top]
    buddies, partners, scores = buddies[order], partners[order], scores[order]
    return Correspondences(
        patches_a=torch.stack([buddies // w1, buddies % w1], dim=1).cpu().numpy(),
        patches_b=torch.stack([partners // w2, partners % w2], dim=1).cpu().numpy(),
        similarity=scores.cpu().numpy(), grid_a=(h1, w1), grid_b=(h2, w2), total=int(mutual.sum()))


__all__ = ["Correspondences", "best_buddies"]
