"""The Gallery views: a patch index over a gallery, nearest-patch search from a click, a UMAP map of patches with
click-to-pick, and a CKA heatmap between two encoders.

No Gradio and no math here. A map is shown as a picture (`ssl_core.render.figures.map_picture`) because
``gr.Plot`` sends no clicks to Python; a click on the picture (pixel x, y) is mapped back to the nearest point by
`pick_point`. Views that make something a later click needs (an index, a map) return it as `ViewResult.state`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from app.views.result import (
    DISPLAY_MIN_SIDE,
    Click,
    ViewResult,
    display_factor,
    file_stem,
    patch_at,
    to_display,
    untrained_warning,
)
from ssl_core.analyses.cka import compare_encoders
from ssl_core.analyses.maps import Colouring, PatchMap, StageFn, attention_per_patch, colour_patches, map_patches
from ssl_core.data.images import ImageSource
from ssl_core.errors import IndexMismatch
from ssl_core.features.encoder import Encoder
from ssl_core.features.patch_table import PatchTable
from ssl_core.progress import ProgressFn
from ssl_core.render import draw
from ssl_core.render.figures import ScatterPicture, cka_figure, colouring_rgb, map_picture, umap_figure
from ssl_core.search.patch_index import PatchIndex
from ssl_core.search.records import PatchHit
from ssl_core.search.sources import Readable, gallery_files
from ssl_core.search.storage import is_index_directory
from ssl_core.work import WorkLimits

BOX_COLOUR = (0, 255, 255)
CROP_CONTEXT = 2  # patches of context around a hit on each side
CROP_MIN_SIDE = 128
MAP_MAX_POINTS = 20_000  # an index's map shows a seeded sample of at most this many patches


# --------------------------------------------------------------------------------------------- index
def build_index(encoder: Encoder, sources: Sequence[str], layer: int | None = None, kind: str = "auto",
                directory: str | None = None, current: PatchIndex | None = None,
                progress: ProgressFn | None = None, readable: Readable | None = None,
                limits: WorkLimits | None = None) -> ViewResult:
    """Index image files and folders (state: the index), or extend ``current`` (same model and layer) or the index
    saved in ``directory`` with the new ones; save it there. ``readable``: which files found may be read. With
    ``limits``, more image files than one job may embed are refused before any is."""
    if limits is not None:
        files = len(gallery_files(list(sources), readable)[0])
        limits.check(f"Indexing {files:,} image files", files, "Index the folder with the command line (`patchlens "
                     "index build FOLDER --out DIR`) and load the index here.")
    if current is not None and current.matches(encoder, layer):
        index, report = current, current.add(list(sources), encoder, progress, readable=readable)
    elif directory and is_index_directory(Path(directory)):
        index = PatchIndex.load(directory)
        index.check_encoder(encoder, layer)
        report = index.add(list(sources), encoder, progress, readable=readable)
    else:
        index, report = PatchIndex.build(list(sources), encoder, layer, kind, progress, readable=readable)
    if directory:
        index.save(directory)
    notes = f"{report.summary()}.\n\n{index.describe()}" + (f" · saved in `{directory}`" if directory else "")
    skipped = list(dict.fromkeys(report.failed + report.skipped + report.refused))
    if skipped:
        notes += "\n\nSkipped:\n" + "\n".join(f"- {problem}" for problem in skipped)
    return ViewResult(notes=notes, warnings=untrained_warning(encoder), state=index)


def mismatch_note(index: PatchIndex, encoder: Encoder) -> ViewResult:
    """Why ``index`` cannot be searched with ``encoder`` (a note for the Gallery, not an error); empty if it can."""
    try:
        index.check_encoder(encoder)
    except IndexMismatch as err:
        return ViewResult(notes=f"⚠️ The index does not fit the model chosen at the top: {err}")
    return ViewResult()


def load_index(directory: str) -> ViewResult:
    index = PatchIndex.load(directory)
    return ViewResult(notes=index.describe(), state=index)


def save_index(index: PatchIndex, directory: str | Path) -> ViewResult:
    index.save(directory)
    return ViewResult(notes=f"Saved to {directory} · {index.describe()}", state=index)


# --------------------------------------------------------------------------------------------- search
def patch_crop(image: np.ndarray, row: int, col: int, patch_size: int, context: int = CROP_CONTEXT,
               min_side: int = CROP_MIN_SIDE) -> np.ndarray:
    """The patch (row, col) of a processed image with ``context`` patches around it, boxed and enlarged."""
    h, w = image.shape[0] // patch_size, image.shape[1] // patch_size
    top, left = max(row - context, 0), max(col - context, 0)
    bottom, right = min(row + context + 1, h), min(col + context + 1, w)
    crop = image[top * patch_size:bottom * patch_size, left * patch_size:right * patch_size]
    return draw.enlarge(draw.mark_patch(crop, row - top, col - left, patch_size, BOX_COLOUR, width=1), min_side)


def boxed_source(image: np.ndarray, row: int, col: int, patch_size: int) -> np.ndarray:
    """A whole processed image with one patch boxed, enlarged for display."""
    boxed = draw.mark_patch(image, row, col, patch_size, BOX_COLOUR, width=max(1, patch_size // 8))
    return draw.enlarge(boxed, DISPLAY_MIN_SIDE)


def query_picture(index: PatchIndex, encoder: Encoder, query: ImageSource | Image.Image) -> ViewResult:
    """The query image as `search_click` maps clicks on it: the index's resize, enlarged for display."""
    features = index.embed_query(encoder, query).features
    return ViewResult(pictures={"query": to_display(features, features.image)})


def search_click(index: PatchIndex, encoder: Encoder, query: ImageSource | Image.Image, click: Click, k: int = 10,
                 exclude_query_image: bool = True) -> ViewResult:
    """The k gallery patches nearest to the patch under a click on the query picture (state: the hits)."""
    embedded = index.embed_query(encoder, query)
    features = embedded.features
    row, col = patch_at(click, features.grid_hw)
    hits = index.search_patch(embedded, row, col, k, exclude_query_image)
    step = features.patch_size * display_factor(features)
    shown = draw.mark_patch(to_display(features, features.image), row, col, step, BOX_COLOUR)
    images: dict[int, np.ndarray] = {}
    for hit in hits:
        if hit.image_index not in images:
            images[hit.image_index] = index.processed_image(hit.image_index)
    p = index.manifest.patch_size
    gallery = [(patch_crop(images[h.image_index], h.row, h.col, p),
                f"{h.score:.3f} · {Path(h.image).name} · ({h.row}, {h.col})") for h in hits]
    pictures = {"query": shown}
    if hits:
        pictures["source"] = boxed_source(images[hits[0].image_index], hits[0].row, hits[0].col, p)
    left_out = " (the query image left out)" if exclude_query_image and embedded.image_index is not None else ""
    notes = (f"Patch (row {row}, col {col}) of **{Path(embedded.name).name}**: {len(hits)} nearest of {len(index):,} "
             f"gallery patches{left_out} · {index.describe()}")
    return ViewResult(pictures=pictures, galleries={"hits": gallery}, notes=notes, state=hits,
                      numbers=hits_numbers(hits, row, col), name=file_stem(encoder.name, "nearest-patches"),
                      item_names={"hits": [f"{i + 1:02d}-{Path(h.image).stem}-r{h.row}c{h.col}"
                                           for i, h in enumerate(hits)]})


def hits_numbers(hits: Sequence[PatchHit], row: int, col: int) -> dict[str, np.ndarray]:
    """The hits as arrays: score, image name, image number in the index, patch row and column; the query patch."""
    return {"query_patch": np.array([row, col]), "scores": np.array([h.score for h in hits], np.float32),
            "image_names": np.array([Path(h.image).name for h in hits], dtype=str),
            "image_ids": np.array([h.image_index for h in hits], np.int64),
            "rows": np.array([h.row for h in hits], np.int64), "cols": np.array([h.col for h in hits], np.int64)}


# --------------------------------------------------------------------------------------------- maps
@dataclass
class MapView:
    """A drawn map, kept for picking its points."""

    picture: ScatterPicture
    patch_map: PatchMap
    colouring: Colouring
    table: PatchTable
    patch_size: int
    images: list[np.ndarray] | None = None  # processed images of a map of loaded images
    index: PatchIndex | None = None  # or the index the points come from


def map_of_images(encoder: Encoder, images: Sequence[Image.Image], names: Sequence[str], layer: int | None = None,
                  method: str = "umap", colour_by: str = "image", parts: int = 8, seed: int = 0,
                  progress: ProgressFn | None = None, stage: StageFn | None = None) -> ViewResult:
    """A map of every patch of the loaded images (state: the `MapView`); ``stage`` hears what is being done."""
    table, features = PatchTable.embed(encoder, names, images, layer, attention=colour_by == "attention")
    attention = attention_per_patch(features) if colour_by == "attention" else None
    result = _map_view(table, method, colour_by, attention, parts, seed, encoder.patch_size, progress, stage,
                       images=[f.image for f in features])
    result.warnings = untrained_warning(encoder)
    return result.named(file_stem(encoder.name, f"{method}-map"))


def map_of_index(index: PatchIndex, method: str = "umap", colour_by: str = "image", parts: int = 8, seed: int = 0,
                 max_points: int = MAP_MAX_POINTS, progress: ProgressFn | None = None,
                 stage: StageFn | None = None) -> ViewResult:
    """A map of an index's patches (a seeded sample of ``max_points`` for a large index; state: the `MapView`)."""
    table = index.table(limit=max_points, seed=seed)
    result = _map_view(table, method, colour_by, None, parts, seed, index.manifest.patch_size, progress, stage,
                       index=index)
    if len(table) < len(index):
        result.notes = f"Showing a random sample of {len(table):,} of the index's {len(index):,} patches. " + result.notes
    return result.named(file_stem("index", f"{method}-map"))


def _map_view(table: PatchTable, method: str, colour_by: str, attention: np.ndarray | None, parts: int, seed: int,
              patch_size: int, progress: ProgressFn | None, stage: StageFn | None,
              images: list[np.ndarray] | None = None, index: PatchIndex | None = None) -> ViewResult:
    patch_map = map_patches(table.vectors, method, seed, progress=progress, stage=stage)
    colouring = colour_patches(table, colour_by, attention, parts, seed)
    hover = [f"{Path(table.names[i]).name} · ({r}, {c})" for i, r, c in zip(table.image_ids, table.rows, table.cols)]
    view = MapView(map_picture(patch_map, colouring), patch_map, colouring, table, patch_size, images, index)
    return ViewResult(pictures={"map": view.picture.image}, figures={"scatter": umap_figure(patch_map, colouring, hover)},
                      notes=f"{patch_map.describe()}; colour: {colouring.title}. Click a point to see its patch.",
                      state=view, numbers=map_numbers(table, patch_map, colouring), name=f"{method}-map")


def map_numbers(table: PatchTable, patch_map: PatchMap, colouring: Colouring) -> dict[str, np.ndarray]:
    """The map as arrays: each point's 2-D coordinates, image number and name, patch row and column, its colour
    (RGB) and the value it is coloured by (a category, RGB in [0, 1] or a scalar)."""
    return {"coords": patch_map.coords, "image_ids": np.asarray(table.image_ids), "rows": np.asarray(table.rows),
            "cols": np.asarray(table.cols), "image_names": np.array([Path(n).name for n in table.names], dtype=str),
            "colours": colouring_rgb(colouring), "colour_values": np.asarray(colouring.values)}


def pick_point(view: MapView, x: float, y: float) -> ViewResult:
    """A click at pixel (x, y) of the map picture: the map with the point ringed, its patch crop, its source image
    with the patch boxed, and a caption. Nothing is picked when no point is within a few pixels."""
    point = view.picture.point_at(x, y)
    if point is None:
        return ViewResult(pictures={"map": view.picture.image}, notes="No patch there: click on a point.")
    image_id, row, col = int(view.table.image_ids[point]), int(view.table.rows[point]), int(view.table.cols[point])
    image = view.images[image_id] if view.images is not None else view.index.processed_image(image_id)
    return ViewResult(pictures={"map": map_picture(view.patch_map, view.colouring, highlight=point).image,
                                "crop": patch_crop(image, row, col, view.patch_size),
                                "source": boxed_source(image, row, col, view.patch_size)},
                      notes=f"{Path(view.table.names[image_id]).name} · patch (row {row}, col {col})")


# --------------------------------------------------------------------------------------------- CKA
def cka_view(encoder_a: Encoder, encoder_b: Encoder, images: Sequence[Image.Image], pooling: str = "grid",
             grid_size: int = 4, debiased: bool = False, progress: ProgressFn | None = None) -> ViewResult:
    """The layer-by-layer CKA heatmap between two encoders (or one against itself) over the loaded images."""
    result = compare_encoders(encoder_a, encoder_b, list(images), pooling, grid_size, debiased, progress)
    notes = result.describe() + "."
    dims = max(encoder_a.embed_dim, encoder_b.embed_dim)
    if result.samples < 4 * dims and not debiased:
        notes += (f" With {result.samples} samples against {dims} dimensions, "
                  "linear CKA leans towards 1: tick *debiased* for an estimate without that pull.")
    numbers = {"cka": result.matrix, "labels_a": np.array(result.labels_a, dtype=str),
               "labels_b": np.array(result.labels_b, dtype=str),
               "models": np.array([result.model_a, result.model_b], dtype=str)}
    return ViewResult(figures={"cka": cka_figure(result)}, numbers=numbers, notes=notes,
                      warnings=untrained_warning(encoder_a, encoder_b),
                      name=file_stem("cka", encoder_a.name, encoder_b.name))
