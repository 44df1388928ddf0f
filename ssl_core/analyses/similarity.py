"""Click-a-patch similarity: the cosine between one patch token and every patch of one or more images."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_core.errors import BadRequest


def cosine_maps(query: torch.Tensor, grids: list[torch.Tensor]) -> list[torch.Tensor]:
    """Cosine of a query vector [D] with every patch of each grid [h, w, D]. Returns [h, w] per grid."""
    q = F.normalize(query.float(), dim=-1)
    return [F.normalize(g.float(), dim=-1) @ q for g in grids]


def patch_similarity(grids: list[torch.Tensor], source: int, row: int, col: int) -> list[torch.Tensor]:
    """Similarity maps of patch (row, col) of grid ``source`` against all grids (its own included).

    grids: [h, w, D] each (sizes may differ) -> one [h, w] cosine map per grid.
    """
    h, w, _ = grids[source].shape
    if not (0 <= row < h and 0 <= col < w):
        raise BadRequest(f"patch ({row}, {col}) is outside the {h}x{w} grid")
    return cosine_maps(grids[source][row, col], grids)
