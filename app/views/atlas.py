"""Maps too large for plotly, for Embedding Atlas: every patch of an index (or of loaded images) laid out in 2-D
block by block (`ssl_core.analyses.maps.layout_patches`) and tabled with thumbnails (`ssl_core.render.atlas`).

No serving here (`app.atlas`) and no Gradio. Plotly draws maps up to `ATLAS_MIN_POINTS` points; above, the Gallery
and ``patchlens umap --engine auto`` open Embedding Atlas.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from app.views.result import ViewResult
from ssl_core.analyses.maps import DEFAULT_FIT_LIMIT, PatchMap, StageFn, VectorReader, layout_patches
from ssl_core.errors import BadRequest
from ssl_core.features.patch_table import PatchTable
from ssl_core.progress import ProgressFn
from ssl_core.render.atlas import THUMBNAIL_SIDE, ImageOf, atlas_table
from ssl_core.search.patch_index import PatchIndex

ATLAS_MIN_POINTS = 100_000  # maps of more points than this open in Embedding Atlas (plotly below)
ENGINES = ("plotly", "atlas", "auto")


@dataclass
class AtlasMap:
    """A map laid out for Embedding Atlas: its Arrow table, its layout, and the images left without thumbnails."""

    table: object  # pyarrow.Table (ssl_core.render.atlas)
    patch_map: PatchMap
    missing: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.patch_map.describe()}; {self.table.num_rows:,} points, {self.table.nbytes / 2**20:,.0f} MB table"
        if self.missing:
            text += f"; {len(self.missing):,} images without thumbnails (unreadable here), e.g. {self.missing[0]}"
        return text


def atlas_result(atlas: AtlasMap, url: str) -> ViewResult:
    """The Gallery's answer for a map served in Embedding Atlas at ``url``: the link, and the map's numbers."""
    points = atlas.table.num_rows
    notes = (f"{points:,} patches are more than the plotly map draws well ({ATLAS_MIN_POINTS:,}), so this map opens in "
             f"**Embedding Atlas**: [open the map of {points:,} patches]({url}) (served by this app at {url}, on this "
             f"machine only; hover a point for its image, patch and thumbnail). {atlas.describe()}.")
    columns = atlas.table
    numbers = {"coords": atlas.patch_map.coords, "image_ids": columns["image"].combine_chunks().indices.to_numpy(),
               "rows": columns["row"].to_numpy(), "cols": columns["col"].to_numpy(),
               "image_names": np.array(columns["image"].combine_chunks().dictionary.to_pylist(), dtype=str)}
    return ViewResult(notes=notes, numbers=numbers, name=f"index-{atlas.patch_map.method}-atlas-map")


def engine_for(engine: str, points: int) -> str:
    """The engine that draws a map of ``points`` points: ``auto`` is atlas above `ATLAS_MIN_POINTS`, else plotly."""
    if engine not in ENGINES:
        raise BadRequest(f"the map engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "auto":
        return "atlas" if points > ATLAS_MIN_POINTS else "plotly"
    return engine


def atlas_map(read: VectorReader, image_ids: np.ndarray, rows: np.ndarray, cols: np.ndarray, names: Sequence[str],
              grids: Sequence[tuple[int, int]], image_of: ImageOf | None, method: str = "umap", seed: int = 0,
              fit_limit: int = DEFAULT_FIT_LIMIT, side: int = THUMBNAIL_SIDE, progress: ProgressFn | None = None,
              stage: StageFn | None = None) -> AtlasMap:
    """Lay out the points whose vectors ``read`` gives (block by block) and table them with their thumbnails."""
    stage = stage or (lambda text: None)
    patch_map = layout_patches(read, len(image_ids), method, seed, fit_limit, progress=progress, stage=stage)
    stage(f"cutting thumbnails of {len(image_ids):,} patches" if image_of is not None and side else "tabling points")
    table, missing = atlas_table(patch_map.coords, image_ids, rows, cols, names, grids, image_of, side, progress)
    return AtlasMap(table, patch_map, missing)


def atlas_of_index(index: PatchIndex, method: str = "umap", seed: int = 0, fit_limit: int = DEFAULT_FIT_LIMIT,
                   side: int = THUMBNAIL_SIDE, progress: ProgressFn | None = None,
                   stage: StageFn | None = None) -> AtlasMap:
    """Every patch of an index, its vectors read in blocks (from disk for IVF-PQ), thumbnails from its images."""
    if len(index) < 3:
        raise BadRequest(f"a map needs at least 3 patches; the index has {len(index)}")
    image_ids, rows, cols = index.patch_positions()
    return atlas_map(index.read_vectors, image_ids, rows, cols, [im.path for im in index.images],
                     [im.grid_hw for im in index.images], index.processed_image, method, seed, fit_limit, side,
                     progress, stage)


def atlas_of_patches(table: PatchTable, images: Sequence[np.ndarray], method: str = "umap", seed: int = 0,
                     fit_limit: int = DEFAULT_FIT_LIMIT, side: int = THUMBNAIL_SIDE, progress: ProgressFn | None = None,
                     stage: StageFn | None = None) -> AtlasMap:
    """The patches of embedded images (``images``: each as the encoder saw it, in the table's image order)."""
    return atlas_map(lambda ids: table.vectors[ids], table.image_ids, table.rows, table.cols, table.names,
                     table.grids, lambda i: images[i], method, seed, fit_limit, side, progress, stage)


__all__ = ["AtlasMap", "atlas_result", "atlas_map", "atlas_of_index", "atlas_of_patches", "engine_for", "ATLAS_MIN_POINTS", "ENGINES"]
