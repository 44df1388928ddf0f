"""2-D maps of patch embeddings (UMAP, or PCA as the fast alternative) and the colourings drawn on them.

Policy:

* **UMAP** (umap-learn) with the cosine metric and a fixed ``random_state`` (which makes umap-learn run on one
  thread, and the map reproducible). The first UMAP in a process pays for numba compilation (about 15 s).
* **PCA** (the first two components, via `ssl_core.analyses.pca.fit_pca`) of the L2-normalised vectors, so both methods
  see the same cosine geometry.
* **Size limit.** Above ``fit_limit`` points the map is fitted on a seeded random sample of that many points and
  the rest are placed by the fit's ``transform``; `PatchMap` says so (``fitted_on`` < ``total``).
* **Colourings** are arrays, rendered elsewhere (`ssl_core.render.figures`): categorical labels (source image, k-means
  part from `ssl_core.analyses.parts.kmeans`), an RGB colour per point (grid position: the four corners of the grid get
  four colours, blended bilinearly in between), or a scalar (attention received, coloured with a colormap).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ssl_core.errors import BadRequest
from ssl_core.progress import ProgressFn

if TYPE_CHECKING:
    from ssl_core.features.encoder import PatchFeatures
    from ssl_core.search.patch_index import PatchTable

METHODS = ("umap", "pca")
COLOURINGS = ("image", "part", "position", "attention")
DEFAULT_FIT_LIMIT = 20_000
TRANSFORM_CHUNK = 10_000
# grid-position colours of the top-left, top-right, bottom-left and bottom-right patches
CORNER_COLOURS = np.array([(0.90, 0.10, 0.10), (0.10, 0.60, 0.95), (0.15, 0.75, 0.20), (0.95, 0.80, 0.10)])


@dataclass
class PatchMap:
    coords: np.ndarray  # [N, 2] float32
    method: str  # "umap" | "pca"
    fitted_on: int  # points the map was fitted on (a seeded sample when < total)
    total: int
    seed: int

    def describe(self) -> str:
        name = "UMAP (cosine)" if self.method == "umap" else "PCA (first two components of unit vectors)"
        if self.fitted_on < self.total:
            return (f"{name} fitted on a random sample of {self.fitted_on:,} of {self.total:,} patches (seed {self.seed}); "
                    f"the other {self.total - self.fitted_on:,} placed with the fit's transform")
        return f"{name} of {self.total:,} patches (seed {self.seed})"


def map_patches(vectors: np.ndarray, method: str = "umap", seed: int = 0, fit_limit: int = DEFAULT_FIT_LIMIT,
                n_neighbors: int = 15, min_dist: float = 0.1, progress: ProgressFn | None = None) -> PatchMap:
    """A 2-D map of patch vectors [N, D] (see the module docstring); progress counts points placed."""
    if method not in METHODS:
        raise BadRequest(f"map method must be one of {', '.join(METHODS)}, not {method!r}")
    x = np.asarray(vectors, dtype=np.float32)
    total = x.shape[0]
    if total < 3:
        raise BadRequest(f"a map needs at least 3 patches, got {total}")
    fit_ids = np.arange(total)
    if total > fit_limit:
        fit_ids = np.sort(np.random.default_rng(seed).choice(total, fit_limit, replace=False))
    rest = np.setdiff1d(np.arange(total), fit_ids, assume_unique=True)
    coords = np.empty((total, 2), np.float32)
    if method == "pca":
        from ssl_core.analyses.pca import fit_pca

        unit = torch.nn.functional.normalize(torch.from_numpy(x), dim=-1)
        coords[:] = fit_pca(unit[fit_ids], k=2).project(unit).numpy()
        if progress is not None:
            progress(total, total)
        return PatchMap(coords, method, len(fit_ids), total, seed)
    import warnings

    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(fit_ids) - 1), min_dist=min_dist,
                        metric="cosine", random_state=seed, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "n_jobs overridden by setting random_state", spectral init notes
        coords[fit_ids] = reducer.fit_transform(x[fit_ids])
        if progress is not None:
            progress(len(fit_ids), total)
        for start in range(0, len(rest), TRANSFORM_CHUNK):
            chunk = rest[start:start + TRANSFORM_CHUNK]
            coords[chunk] = reducer.transform(x[chunk])
            if progress is not None:
                progress(len(fit_ids) + start + len(chunk), total)
    return PatchMap(coords, method, len(fit_ids), total, seed)


def nearest_point(coords: np.ndarray, x: float, y: float, max_distance: float | None = None) -> int | None:
    """Index of the point of ``coords`` [N, 2] nearest to (x, y); None when there is none within ``max_distance``."""
    if len(coords) == 0:
        return None
    d2 = ((np.asarray(coords, np.float64) - np.array([x, y], np.float64)) ** 2).sum(1)
    best = int(np.argmin(d2))
    if max_distance is not None and d2[best] > max_distance**2:
        return None
    return best


# --------------------------------------------------------------------------------------------------- colourings
@dataclass
class Colouring:
    kind: str  # "categorical" | "rgb" | "scalar"
    values: np.ndarray  # categorical: [N] int labels; rgb: [N, 3] float in [0, 1]; scalar: [N] float
    title: str
    names: list[str] = field(default_factory=list)  # categorical: a name per label


def colour_by_image(image_ids: np.ndarray, names: Sequence[str]) -> Colouring:
    """One category per source image."""
    return Colouring("categorical", np.asarray(image_ids, np.int64), "source image", [str(n) for n in names])


def colour_by_part(vectors: np.ndarray, k: int = 8, seed: int = 0) -> Colouring:
    """One category per k-means part (spherical k-means over all the points, `ssl_core.analyses.parts.kmeans`)."""
    from ssl_core.analyses.parts import kmeans

    result = kmeans(torch.from_numpy(np.asarray(vectors, np.float32)), k, seed)
    return Colouring("categorical", result.labels.numpy(), f"k-means part (k={k})", [f"part {i}" for i in range(k)])


def colour_by_position(rows: np.ndarray, cols: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> Colouring:
    """A colour per grid position: row and column normalised to [0, 1] by each point's grid, corners blended."""
    v = np.asarray(rows, np.float64) / np.maximum(np.asarray(heights, np.float64) - 1, 1)  # [N] 0 top .. 1 bottom
    u = np.asarray(cols, np.float64) / np.maximum(np.asarray(widths, np.float64) - 1, 1)  # [N] 0 left .. 1 right
    tl, tr, bl, br = CORNER_COLOURS
    rgb = ((1 - v)[:, None] * ((1 - u)[:, None] * tl + u[:, None] * tr)
           + v[:, None] * ((1 - u)[:, None] * bl + u[:, None] * br))
    return Colouring("rgb", rgb, "grid position (corners: red, blue, green, yellow)")


def colour_by_attention(values: np.ndarray, title: str = "class-token attention (last layer, heads averaged)") -> Colouring:
    """A scalar per point, e.g. the attention each patch receives (see `attention_per_patch`)."""
    return Colouring("scalar", np.asarray(values, np.float64), title)


def colour_patches(table: PatchTable, by: str, attention: np.ndarray | None = None, parts: int = 8, seed: int = 0) -> Colouring:
    """The colouring named ``by`` (one of `COLOURINGS`) for the rows of a `ssl_core.features.patch_table.PatchTable`.

    ``attention``: a value per row, needed for ``by="attention"`` (see `attention_per_patch`).
    """
    if by == "image":
        return colour_by_image(table.image_ids, table.names)
    if by == "part":
        return colour_by_part(table.vectors, min(parts, len(table)), seed)
    if by == "position":
        return colour_by_position(table.rows, table.cols, *table.heights_widths())
    if by == "attention":
        if attention is None:
            raise BadRequest("colouring by attention needs attention values (not stored in an index: map images instead)")
        return colour_by_attention(attention)
    raise BadRequest(f"colour by must be one of {', '.join(COLOURINGS)}, not {by!r}")


def attention_per_patch(features: Sequence[PatchFeatures]) -> np.ndarray:
    """Class-token attention to each patch (last layer, heads averaged), all images' patches row-major: [N].

    ``features``: `PatchFeatures` extracted with ``attention=True``.
    """
    from ssl_core.analyses.attention import class_attention_map

    maps = []
    for f in features:
        if f.attention is None:
            raise BadRequest("features were extracted without attention (use attention=True)")
        maps.append(class_attention_map(f.attention, f.num_prefix, f.grid_hw).reshape(-1).numpy())
    return np.concatenate(maps) if maps else np.zeros(0)


__all__ = ["PatchMap", "map_patches", "nearest_point", "Colouring", "colour_by_image", "colour_by_part",
           "colour_by_position", "colour_by_attention", "colour_patches", "attention_per_patch", "METHODS", "COLOURINGS", "DEFAULT_FIT_LIMIT"]
