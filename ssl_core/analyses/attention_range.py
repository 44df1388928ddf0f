"""Where each head looks: mean attention distance and query-key NMI, per block and head.

Two measures that tell masked image modelling from contrastive / self-distillation models (part-to-part vs
part-to-whole). Both are taken among the patches: the prefix columns (class token, registers) are dropped and each
query patch's row is renormalised over the patches, so a head that parks its attention on a register is judged by
where the rest goes.

* **Mean attention distance** (Dosovitskiy et al. 2021, Fig. 7; Xie et al. 2022 "Revealing the dark secrets of
  MIM"; Park et al. 2023): ``sum_k a(q, k) * |pos(q) - pos(k)|``, averaged over the query patches, in patches (times
  the patch size: pixels of the model's input). ``relative_distance`` divides it by the same mean under uniform
  attention over the grid, so grids of any size compare: 1 is as spread as uniform attention, 0 a patch attending
  to itself. MIM models keep local heads up to the last block; contrastive ones turn global.
* **Query-key NMI** (Park et al. 2023, "What do self-supervised vision transformers learn?"): draw a query patch q
  uniformly and a key k from q's attention row; ``I(Q; K) / sqrt(H(Q) H(K))``. 0 when every query attends to the
  same keys (attention "collapses into homogeneity": the whole-object maps of contrastive models' late blocks), 1
  when each query has keys of its own. H(Q) = log n for n patches.

Every function takes one image's ``[L, heads, T, T]`` attention (T = prefix + h*w, rows summing to 1) and returns
``[L, heads]``; `attention_range` averages images of any grids. A query whose whole attention underflows to the
prefix (exactly 0 on every patch) keeps a zero row: it counts as distance 0 and adds no key mass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ssl_core.data.images import ImageSource
from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder
from ssl_core.features.patch_features import PatchFeatures
from ssl_core.progress import ProgressFn


def patch_attention(attention: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """[..., T, T] -> [..., n, n] float64: patch queries to patch keys, rows renormalised to sum to 1."""
    among_patches = attention[..., num_prefix:, num_prefix:].double()
    return among_patches / among_patches.sum(-1, keepdim=True).clamp_min(1e-12)


def grid_distances(grid_hw: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """[n, n] float64: Euclidean distance between patch centres, in patches, patches in row-major order."""
    h, w = grid_hw
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    positions = torch.stack([rows.flatten(), cols.flatten()], -1).double()  # [n, 2]
    return torch.cdist(positions, positions)


def mean_attention_distance(attention: torch.Tensor, num_prefix: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """[L, heads, T, T] -> [L, heads]: the attention-weighted query-key distance in patches, mean over queries.
    One block at a time, as `query_key_nmi`: a float64 copy of a large model's whole attention at a high resolution
    would take gigabytes."""
    distances = grid_distances(grid_hw, attention.device)  # [n, n]
    return torch.stack([(patch_attention(block, num_prefix) * distances).sum(-1).mean(-1)  # block: [H, T, T]
                        for block in attention])


def uniform_attention_distance(grid_hw: tuple[int, int]) -> float:
    """The mean distance between two patches drawn uniformly (attention spread evenly over the grid), in patches."""
    return float(grid_distances(grid_hw).mean())


def query_key_nmi(attention: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """[L, heads, T, T] -> [L, heads]: I(Q; K) / sqrt(H(Q) H(K)) with Q uniform over the patches, one block at a
    time; NaN for a grid of one patch (16 px at patch 16), where there is no query-key information to measure."""
    if attention.shape[-1] - num_prefix < 2:
        return torch.full(attention.shape[:2], float("nan"), dtype=torch.float64, device=attention.device)
    return torch.stack([_block_nmi(patch_attention(block, num_prefix)) for block in attention])


def _block_nmi(weights: torch.Tensor) -> torch.Tensor:
    """weights: [H, n, n] p(k | q) -> [H]."""
    key_entropy = _entropy(weights.mean(-2))  # H(K) of the marginal p(k): [H]
    conditional = _entropy(weights).mean(-1)  # H(K | Q): [H]
    mutual = (key_entropy - conditional).clamp_min(0.0)
    return mutual / (math.log(weights.shape[-1]) * key_entropy).sqrt().clamp_min(1e-12)


def _entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Natural-log entropy over the last axis, 0 log 0 = 0."""
    return -torch.special.xlogy(probabilities, probabilities).sum(-1)


@dataclass(frozen=True)
class AttentionRange:
    """Per block and head, averaged over the images: how far (and how query-specific) each head attends."""

    distance: np.ndarray  # [L, heads] mean attention distance, in patches
    relative_distance: np.ndarray  # [L, heads] distance / uniform attention's distance on the same grid
    nmi: np.ndarray  # [L, heads] query-key normalised mutual information
    patch_size: int
    images: int

    @property
    def distance_px(self) -> np.ndarray:
        """[L, heads]: the distance in pixels of the model's input."""
        return self.distance * self.patch_size

    @property
    def blocks(self) -> list[int]:
        return list(range(self.distance.shape[0]))


def attention_range(features: Iterable[PatchFeatures]) -> AttentionRange:
    """Both measures of the module docstring for every block and head, averaged over the images (extracted with
    ``attention=True``; their grids may differ). ``features`` is read once and may be a generator, so a long list of
    images need not hold all its attention maps at once."""
    distance, relative, nmi, patch_size = [], [], [], 0
    for f in features:
        if f.attention is None:
            raise BadRequest("attention range needs images extracted with attention")
        patch_size = f.patch_size
        d = mean_attention_distance(f.attention, f.num_prefix, f.grid_hw)  # [L, H]
        distance.append(d)
        relative.append(d / max(uniform_attention_distance(f.grid_hw), 1e-12))
        nmi.append(query_key_nmi(f.attention, f.num_prefix))
    if not distance:
        raise BadRequest("attention range needs at least one image")
    return AttentionRange(torch.stack(distance).mean(0).numpy(), torch.stack(relative).mean(0).numpy(),
                          torch.stack(nmi).mean(0).numpy(), patch_size, len(distance))


def encoder_attention_range(encoder: Encoder, images: Sequence[ImageSource], chunk: int = 1,
                            progress: ProgressFn | None = None) -> AttentionRange:
    """`attention_range` of ``encoder`` over ``images``, extracting ``chunk`` images at a time so that only their
    attention maps are held at once (a ViT-B's are 22 MB per 224 px image; SigLIP-so400m's at 378 px 0.9 GB)."""
    def features() -> Iterator[PatchFeatures]:
        for start in range(0, len(images), chunk):
            yield from encoder.extract(images[start:start + chunk], attention=True, batch_size=chunk)
            if progress is not None:
                progress(min(start + chunk, len(images)), len(images))

    return attention_range(features())


__all__ = ["AttentionRange", "attention_range", "encoder_attention_range", "patch_attention", "grid_distances",
           "mean_attention_distance", "uniform_attention_distance", "query_key_nmi"]
