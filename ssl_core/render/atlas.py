"""The table behind a map in Embedding Atlas: one row per patch, with its place on the map and a thumbnail crop.

Columns: ``id`` (the point's row in the map), ``x``, ``y`` (float32), ``image`` (the source image's file name,
dictionary-encoded), ``row``, ``col`` (int16: the patch's place in its image's grid), ``patch`` (a caption,
"NAME · row R, col C", the text Embedding Atlas shows in a point's tooltip) and ``thumbnail`` (the patch as a small
WebP picture, a ``data:image/webp;base64,...`` string, which Embedding Atlas shows as an image; null where the
source image could not be read).

Thumbnails are cheap by construction: each source image is read once (``image_of``: the image as the encoder saw it,
[H, W, 3] uint8, its patch grid matching the rows and columns), resized so that one patch is ``side`` pixels (one
resize per image, not one per patch), then cut into its patches; only the patches on the map are encoded. At the
default 16 px a thumbnail is 100 to 350 bytes of text (smooth to noisy patches) and takes about 0.06 ms to cut and
encode on one core (docs/scale.md), so a million points cost 110 to 330 MB and about a minute; ``side=0`` leaves
them out.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from ssl_core.errors import BadRequest, PatchLensError
from ssl_core.progress import ProgressFn

THUMBNAIL_SIDE = 16  # pixels of a patch's thumbnail
WEBP_QUALITY = 70
ImageOf = Callable[[int], np.ndarray]  # image id -> the image as the encoder saw it [H, W, 3] uint8


def patch_thumbnails(image: np.ndarray, grid_hw: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
                     side: int = THUMBNAIL_SIDE) -> list[str]:
    """Data URLs of the patches (rows[i], cols[i]) of one image [H, W, 3] uint8 whose patch grid is ``grid_hw``:
    the image resized once to ``side`` pixels a patch, then cut."""
    h, w = grid_hw
    small = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((w * side, h * side), Image.BILINEAR))
    urls = []
    for r, c in zip(np.asarray(rows).tolist(), np.asarray(cols).tolist()):
        buffer = io.BytesIO()
        Image.fromarray(small[r * side:(r + 1) * side, c * side:(c + 1) * side]).save(buffer, "WEBP",
                                                                                        quality=WEBP_QUALITY)
        urls.append("data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return urls


def atlas_table(coords: np.ndarray, image_ids: np.ndarray, rows: np.ndarray, cols: np.ndarray, names: Sequence[str],
                grids: Sequence[tuple[int, int]], image_of: ImageOf | None = None, side: int = THUMBNAIL_SIDE,
                progress: ProgressFn | None = None) -> tuple[pa.Table, list[str]]:
    """The Arrow table of a map (see the module docstring) and the images whose thumbnails could not be made.

    ``coords`` [N, 2]; ``image_ids``, ``rows``, ``cols`` [N]: each point's source image (an index into ``names`` and
    ``grids``, the images' grid heights and widths) and patch. Without ``image_of`` (or with ``side=0``) the table
    has no thumbnails. Progress counts images whose thumbnails are done."""
    coords, image_ids = np.asarray(coords, np.float32), np.asarray(image_ids, np.int64)
    n = len(coords)
    if coords.ndim != 2 or coords.shape[1] != 2 or not len(image_ids) == len(rows) == len(cols) == n:
        raise BadRequest(f"a map table needs coordinates [N, 2] and N image ids, rows and columns; got coordinates "
                         f"{coords.shape} and {len(image_ids)}, {len(rows)}, {len(cols)}")
    short = np.array([Path(name).name for name in names], dtype=object)
    rows16, cols16 = np.asarray(rows, np.int16), np.asarray(cols, np.int16)
    columns = {
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "x": pa.array(coords[:, 0]), "y": pa.array(coords[:, 1]),
        "image": pa.DictionaryArray.from_arrays(pa.array(image_ids.astype(np.int32)), pa.array(short.tolist())),
        "row": pa.array(rows16), "col": pa.array(cols16),
        "patch": pa.array([f"{short[i]} · row {r}, col {c}" for i, r, c in
                           zip(image_ids.tolist(), rows16.tolist(), cols16.tolist())]),
    }
    failed: list[str] = []
    if image_of is not None and side > 0:
        columns["thumbnail"] = _thumbnails(image_ids, rows16, cols16, names, grids, image_of, side, failed, progress)
    return pa.table(columns), failed


def _thumbnails(image_ids: np.ndarray, rows: np.ndarray, cols: np.ndarray, names: Sequence[str],
                grids: Sequence[tuple[int, int]], image_of: ImageOf, side: int, failed: list[str],
                progress: ProgressFn | None) -> pa.Array:
    """A thumbnail per point, each source image read once (points grouped by image)."""
    thumbnails: list[str | None] = [None] * len(image_ids)
    order = np.argsort(image_ids, kind="stable")
    images, starts = np.unique(image_ids[order], return_index=True)
    bounds = np.append(starts, len(order))
    for done, (image_id, lo, hi) in enumerate(zip(images.tolist(), bounds[:-1], bounds[1:]), 1):
        points = order[lo:hi]
        try:
            urls = patch_thumbnails(image_of(image_id), grids[image_id], rows[points], cols[points], side)
        except (PatchLensError, OSError, ValueError) as error:  # moved, unreadable, unreachable: no thumbnails
            failed.append(f"{names[image_id]}: {getattr(error, 'reason', error)}")
        else:
            for point, url in zip(points.tolist(), urls):
                thumbnails[point] = url
        if progress is not None:
            progress(done, len(images))
    return pa.array(thumbnails, pa.string())


__all__ = ["atlas_table", "patch_thumbnails", "THUMBNAIL_SIDE", "ImageOf"]
