"""Sliding-window tiling: patch tokens of images too large to run through a ViT at once.

An image larger than `TILE_ABOVE_PX` on its short side is kept at its own resolution (both sides rounded to whole
patches), split into overlapping windows on the model's patch grid, and each window is run on its own
(`tile_windows`, `tiled_patch_tokens`). The windows' patch tokens are stitched into one grid ``[h, w, D]``; where
windows overlap, their tokens are averaged.

What this does not give: the tokens a single forward pass over the whole image would give. A ViT's attention is
global, so a token depends on every patch of the window it was computed in, and a window sees only its own
patches; with absolute position embeddings (interpolated to each window's grid) it also sees the window's
positions, not the image's. Tokens far from a window's border come closest to a one-pass result; averaging the
overlaps smooths the seams. Only a model whose tokens depend on their own patch alone (no mixing between patches,
no absolute positions) gives exactly the one-pass tokens: `tests/test_tiling.py` checks both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ssl_core.data.images import MAX_SHORT_SIDE, ImageSource, ResizePolicy, load_image
from ssl_core.errors import BadRequest, TooMuchWork
from ssl_core.progress import ProgressFn

TILE_ABOVE_PX = MAX_SHORT_SIDE  # short sides above this are tiled rather than run at once
MAX_STITCHED_BYTES = 4 * 1024**3  # the stitched float32 grid and its sums


@dataclass(frozen=True)
class Window:
    """A window on the patch grid: its first row and column, and its size, in patches."""

    top: int
    left: int
    rows: int
    cols: int


def window_starts(cells: int, window: int, overlap: int) -> list[int]:
    """Starts of windows of ``window`` cells over ``cells`` cells, overlapping by at least ``overlap`` cells, the
    first at 0 and the last flush with the end (one window when it covers everything)."""
    if cells <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, cells - window, stride))
    return [*starts, cells - window]


def tile_windows(grid_hw: tuple[int, int], window: int, overlap: int) -> list[Window]:
    """Square windows of ``window`` patches (smaller along a side the grid is smaller on) covering a grid of
    ``grid_hw`` patches, neighbours overlapping by at least ``overlap`` patches; row by row."""
    if window < 1 or not 0 <= overlap < window:
        raise BadRequest(f"a window of {window} patches needs an overlap from 0 to {window - 1} patches, "
                         f"not {overlap}")
    h, w = grid_hw
    rows, cols = min(window, h), min(window, w)
    return [Window(top, left, rows, cols) for top in window_starts(h, rows, min(overlap, rows - 1))
            for left in window_starts(w, cols, min(overlap, cols - 1))]


def needs_tiling(source: Image.Image) -> bool:
    """Whether an image is larger than `TILE_ABOVE_PX` on its short side."""
    return min(source.size) > TILE_ABOVE_PX


def native_image(encoder, source: ImageSource | Image.Image) -> Image.Image:
    """The image at its own resolution, both sides rounded to whole patches of ``encoder`` (aspect ratio kept)."""
    image = source if isinstance(source, Image.Image) and source.mode == "RGB" else load_image(source)
    policy = ResizePolicy(short_side=min(image.size), patch_size=encoder.patch_size, max_aspect=float("inf"))
    return policy.apply(image)


def plan_windows(encoder, image: Image.Image, window_px: int | None = None, overlap_px: int | None = None,
                 ) -> tuple[tuple[int, int], list[Window]]:
    """(the image's patch grid (h, w), the windows `tiled_patch_tokens` runs) for windows of ``window_px``
    (default: the model's own image size) overlapping by ``overlap_px`` (default: a quarter window)."""
    p = encoder.patch_size
    width, height = image.size
    if width % p or height % p:
        raise BadRequest(f"a {width}x{height} px image is not whole patches of {p} px: use native_image first")
    grid = (height // p, width // p)
    window = max(1, (window_px or encoder.spec.image_size) // p)
    overlap = window // 4 if overlap_px is None else overlap_px // p
    return grid, tile_windows(grid, window, overlap)


def tiled_patch_tokens(encoder, image: Image.Image, window_px: int | None = None, overlap_px: int | None = None,
                       layer: int | None = None, progress: ProgressFn | None = None,
                       max_bytes: int = MAX_STITCHED_BYTES) -> torch.Tensor:
    """Patch tokens [h, w, D] (float32, CPU) of ``image`` (sides whole patches: see `native_image`) from
    overlapping windows of ``window_px`` (default: the model's own image size) overlapping by ``overlap_px``
    (default: a quarter window), each run on its own (``layer`` None: the final normed tokens), overlaps averaged.
    `TooMuchWork` before any forward pass when the stitched grid would take more than ``max_bytes``."""
    p = encoder.patch_size
    grid, windows = plan_windows(encoder, image, window_px, overlap_px)
    needed = grid[0] * grid[1] * (encoder.embed_dim + 1) * 4
    if needed > max_bytes:
        raise TooMuchWork(f"stitching a {grid[0]}x{grid[1]} patch grid of {encoder.embed_dim} dimensions takes "
                          f"{needed / 1024**3:.1f} GiB, more than {max_bytes / 1024**3:.1f} GiB: use a smaller image")
    sums = torch.zeros(*grid, encoder.embed_dim)  # [h, w, D]
    counts = torch.zeros(*grid, 1)  # [h, w, 1]
    pixels = encoder.to_tensor(image)  # [3, H, W] normalised
    for done, win in enumerate(windows):
        crop = pixels[:, win.top * p:(win.top + win.rows) * p, win.left * p:(win.left + win.cols) * p]
        tokens = encoder.forward_patch_tokens(crop[None].to(encoder.device), layer)  # [1, rows*cols, D]
        sums[win.top:win.top + win.rows, win.left:win.left + win.cols] += (
            tokens[0].float().cpu().reshape(win.rows, win.cols, -1))
        counts[win.top:win.top + win.rows, win.left:win.left + win.cols] += 1
        if progress is not None:
            progress(done + 1, len(windows))
    return sums / counts


__all__ = ["TILE_ABOVE_PX", "Window", "window_starts", "tile_windows", "needs_tiling", "native_image",
           "plan_windows", "tiled_patch_tokens"]
