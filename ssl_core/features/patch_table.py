"""Patches of several images as rows of one table: what a gallery index stores and what patch maps are drawn from.

    table, features = PatchTable.embed(encoder, names, images, layer=None)   # None: final normed tokens
    table.vectors        # [N, D] unit rows, every image's patches row-major, images one after another
    table.image_ids, table.rows, table.cols                                   # [N] each: where a row comes from

Vectors are L2-normalised (``faiss.normalize_L2``), so an inner product is a cosine similarity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ssl_core.data.images import ImageSource
from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder, PatchFeatures
from ssl_core.progress import ProgressFn


def grid_positions(grid_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each patch of a grid, row-major: ([h*w], [h*w]) int."""
    h, w = grid_hw
    rows, cols = np.divmod(np.arange(h * w), w)
    return rows, cols


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, contiguous, a copy); zero rows stay zero."""
    import faiss

    out = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    faiss.normalize_L2(out)
    return out


def region_mask(cells: np.ndarray | Iterable[tuple[int, int]], grid_hw: tuple[int, int]) -> np.ndarray:
    """A region of a patch grid as a bool mask [h, w], from a bool mask of that shape or (row, col) pairs."""
    if isinstance(cells, np.ndarray) and cells.dtype == bool:
        if cells.shape != tuple(grid_hw):
            raise BadRequest(f"region mask of shape {cells.shape} for a {tuple(grid_hw)} grid")
        mask = cells
    else:
        mask = np.zeros(grid_hw, bool)
        for row, col in cells:
            mask[row, col] = True
    if not mask.any():
        raise BadRequest("the region holds no patches")
    return mask


def patch_vectors(features: PatchFeatures, layer: int | None) -> np.ndarray:
    """An image's patch tokens at a layer (None: final normed output) as unit rows [h*w, D] float32, row-major."""
    tokens = features.tokens(layer)  # [h, w, D]
    return normalize_rows(tokens.reshape(-1, tokens.shape[-1]).numpy())


@dataclass
class PatchTable:
    """Patches of several images as rows: what the index stores and what maps are drawn from."""

    vectors: np.ndarray  # [N, D] unit rows (float16 or float32)
    image_ids: np.ndarray  # [N] int: position in `names`
    rows: np.ndarray  # [N] int
    cols: np.ndarray  # [N] int
    names: list[str]  # image names or paths
    grids: list[tuple[int, int]]  # (h, w) per image

    @classmethod
    def from_features(cls, names: Sequence[str], features: Sequence[PatchFeatures], layer: int | None) -> "PatchTable":
        grids = [tuple(f.grid_hw) for f in features]
        positions = [grid_positions(g) for g in grids]
        dim = features[0].patch_tokens.shape[-1] if features else 0
        return cls(
            vectors=np.concatenate([patch_vectors(f, layer) for f in features]) if features else np.zeros((0, dim), np.float32),
            image_ids=np.concatenate([np.full(g[0] * g[1], i, np.int32) for i, g in enumerate(grids)] or [np.zeros(0, np.int32)]),
            rows=np.concatenate([r for r, _ in positions] or [np.zeros(0, np.int64)]),
            cols=np.concatenate([c for _, c in positions] or [np.zeros(0, np.int64)]),
            names=list(names), grids=grids,
        )

    @classmethod
    def embed(cls, encoder: Encoder, names: Sequence[str], images: Sequence[ImageSource], layer: int | None = None,
              attention: bool = False, progress: ProgressFn | None = None) -> tuple["PatchTable", list[PatchFeatures]]:
        """Extract images with an encoder at a layer (and attention, on request): the table and the features."""
        features = encoder.extract(list(images), layers=() if layer is None else (layer,), attention=attention,
                                   progress=progress)
        return cls.from_features(names, features, None if layer is None else encoder.resolve_layers([layer])[0]), features

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def subset(self, keep: np.ndarray) -> "PatchTable":
        """The rows at indices ``keep`` (same image list)."""
        return PatchTable(self.vectors[keep], self.image_ids[keep], self.rows[keep], self.cols[keep], self.names, self.grids)

    def heights_widths(self) -> tuple[np.ndarray, np.ndarray]:
        """Grid height and width of each row's image ([N], [N])."""
        grids = np.array(self.grids, dtype=np.int64).reshape(-1, 2)
        return grids[self.image_ids, 0], grids[self.image_ids, 1]


__all__ = ["PatchTable", "grid_positions", "normalize_rows", "patch_vectors", "region_mask"]
