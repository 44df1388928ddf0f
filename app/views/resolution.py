"""The one way every per-patch map is drawn at a chosen resolution: the raw patch grid, bilinear, or guided by the
image (`ssl_core.analyses.upsample`), or the difference between an upsampling and the raw grid (what it invented).

The ``*_pixels`` helpers draw a map over the patch grid on the processed image (its size for every resolution)
and give its colour scale; the ``*_picture`` helpers take the geometry (`PatchFeatures` or `DisplayGrid`) and
return the picture at display size, so a click maps to the same patch at any resolution
(`app.views.result.patch_at`); Compare fits the pixels to its own common size. Scalar maps keep their colour bar (a
signed difference gets its own, centred on 0; an RGB map's difference is the length of the colour change). No math
here beyond calling ``ssl_core``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from app.views.result import PatchGeometry, shown, shown_map
from ssl_core.analyses.upsample import change_from_grid, upsample_labels, upsample_map
from ssl_core.errors import BadRequest
from ssl_core.render import draw
from ssl_core.render.draw import Scale

PATCH_GRID = "patch grid"
MODES = {PATCH_GRID: "nearest", "bilinear": "bilinear", "guided": "guided"}
DIFFERENCES = {"difference: bilinear − patch grid": "bilinear", "difference: guided − patch grid": "guided"}
CHOICES = (*MODES, *DIFFERENCES)
MARK_BOX = (255, 255, 255)


@dataclass(frozen=True)
class Resolution:
    """How maps are drawn: ``mode`` nearest | bilinear | guided; ``difference``: upsampled − raw grid instead."""

    mode: str = "nearest"
    difference: bool = False

    @classmethod
    def of(cls, choice: str | None) -> Resolution:
        """The resolution of one of `CHOICES` (None: the patch grid); `BadRequest` for anything else."""
        choice = choice or PATCH_GRID
        if choice in MODES:
            return cls(MODES[choice])
        if choice in DIFFERENCES:
            return cls(DIFFERENCES[choice], difference=True)
        raise BadRequest(f"unknown resolution {choice!r} (choose from {', '.join(CHOICES)})")

    @property
    def label(self) -> str:
        return next(c for c, m in (DIFFERENCES if self.difference else MODES).items() if m == self.mode)


def _difference_scale(change: np.ndarray, label: str) -> Scale:
    reach = max(float(np.abs(change).max()), 1e-6)
    return Scale(-reach, reach, "RdBu_r", f"{label} change")


Drawn = tuple[np.ndarray, Scale | None]  # a picture at the processed image's size, and its colour scale (if any)


def scalar_pixels(image: np.ndarray, values: torch.Tensor | np.ndarray, scale: Scale, resolution: Resolution,
                  alpha: float = 0.75, marks: np.ndarray | None = None, patch_size: int = 1,
                  mark_colour: tuple[int, int, int] = MARK_BOX) -> Drawn:
    """A scalar map [h, w] over ``image`` [H, W, 3] and its scale (a difference: its own, centred on 0); ``marks``
    [h, w] bool: patches of ``patch_size`` px to box (a clicked patch, outliers) in ``mark_colour``."""
    values = draw.as_numpy(values).astype(np.float32)
    if resolution.difference:
        pixels = change_from_grid(values, image, resolution.mode)  # [H, W]
        scale = _difference_scale(pixels, scale.label)
    else:
        pixels = values if resolution.mode == "nearest" else upsample_map(values, image, resolution.mode)
    picture = draw.scale_overlay(image, pixels, scale, alpha=alpha, smooth=False)
    if marks is not None:
        picture = draw.mark_patches(picture, marks, patch_size, mark_colour, width=1)
    return picture, scale


def rgb_pixels(image: np.ndarray, rgb: torch.Tensor | np.ndarray, resolution: Resolution) -> Drawn:
    """An RGB map [h, w, 3] in [0, 1] (e.g. PCA) at ``image``'s size; its difference is the length of the colour
    change per pixel, on a scale of its own."""
    rgb = draw.as_numpy(rgb).astype(np.float32)
    if resolution.difference:
        change = change_from_grid(rgb, image, resolution.mode)  # [H, W] >= 0
        scale = Scale(0.0, max(float(change.max()), 1e-6), "viridis", "RGB change")
        return draw.scale_overlay(image, change, scale, alpha=0.9, smooth=False), scale
    return draw.unit_rgb(upsample_map(rgb, image, resolution.mode)), None


def label_pixels(image: np.ndarray, labels: torch.Tensor | np.ndarray, resolution: Resolution,
                 alpha: float = 0.6) -> Drawn:
    """A label map [h, w] (parts; -1 black) over ``image``; its difference marks the pixels whose label the
    upsampling changed (1) against the raw grid (0)."""
    labels = draw.as_numpy(labels).astype(np.int64)
    pixels = upsample_labels(labels, image, resolution.mode)  # [H, W]
    if resolution.difference:
        changed = (pixels != upsample_labels(labels, image, "nearest")).astype(np.float32)
        scale = Scale(0.0, 1.0, "inferno", "label changed")
        return draw.scale_overlay(image, changed, scale, alpha=alpha, smooth=False), scale
    return draw.overlay(image, draw.labels_to_rgb(pixels), alpha=alpha), None


def on_display(geometry: PatchGeometry, drawn: Drawn, grid: bool = False) -> np.ndarray:
    """A drawn map at display size (`shown`), with its colour bar when it has a scale."""
    picture, scale = drawn
    return shown(geometry, picture, grid) if scale is None else shown_map(geometry, picture, scale, grid)


def scalar_picture(geometry: PatchGeometry, values: torch.Tensor | np.ndarray, scale: Scale, resolution: Resolution,
                   grid: bool = False, alpha: float = 0.75, marks: np.ndarray | None = None,
                   mark_colour: tuple[int, int, int] = MARK_BOX) -> np.ndarray:
    """`scalar_pixels` at display size with its colour bar."""
    return on_display(geometry, scalar_pixels(geometry.image, values, scale, resolution, alpha, marks,
                                              geometry.patch_size, mark_colour), grid)


def rgb_picture(geometry: PatchGeometry, rgb: torch.Tensor | np.ndarray, resolution: Resolution,
                grid: bool = False) -> np.ndarray:
    """`rgb_pixels` at display size (a difference with its colour bar)."""
    return on_display(geometry, rgb_pixels(geometry.image, rgb, resolution), grid)


def label_picture(geometry: PatchGeometry, labels: torch.Tensor | np.ndarray, resolution: Resolution,
                  grid: bool = False, alpha: float = 0.6) -> np.ndarray:
    """`label_pixels` at display size (a difference with its colour bar)."""
    return on_display(geometry, label_pixels(geometry.image, labels, resolution, alpha), grid)


__all__ = ["CHOICES", "PATCH_GRID", "Resolution", "Drawn", "scalar_pixels", "rgb_pixels", "label_pixels", "on_display",
           "scalar_picture", "rgb_picture", "label_picture"]
