"""The one way every per-patch map is drawn at a chosen resolution: the raw patch grid, bilinear, or guided by the
image (`ssl_core.analyses.upsample`), or the difference between an upsampling and the raw grid (what it invented).

Each helper takes the map over the patch grid and its geometry (`PatchFeatures` or `DisplayGrid`), and returns
the picture at display size: the same size for every resolution, so a click maps to the same patch
(`app.views.result.patch_at`). Scalar maps keep their colour bar (a difference gets its own, centred on 0). No
math here beyond calling ``ssl_core``.
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


def scalar_picture(geometry: PatchGeometry, values: torch.Tensor | np.ndarray, scale: Scale, resolution: Resolution,
                   grid: bool = False, alpha: float = 0.75, marks: np.ndarray | None = None,
                   mark_colour: tuple[int, int, int] = MARK_BOX) -> np.ndarray:
    """A scalar map [h, w] over the image at display size with its colour bar; ``marks`` [h, w] bool: patches to
    box (a clicked patch, outliers) in ``mark_colour``, at their place on the grid."""
    values = draw.as_numpy(values).astype(np.float32)
    if resolution.difference:
        change = change_from_grid(values, geometry.image, resolution.mode)  # [H, W]
        scale = _difference_scale(change, scale.label)
        picture = draw.scale_overlay(geometry.image, change, scale, alpha=alpha, smooth=False)
    else:
        pixels = values if resolution.mode == "nearest" else upsample_map(values, geometry.image, resolution.mode)
        picture = draw.scale_overlay(geometry.image, pixels, scale, alpha=alpha, smooth=False)
    for row, col in np.argwhere(marks) if marks is not None else []:
        picture = draw.mark_patch(picture, int(row), int(col), geometry.patch_size, color=mark_colour, width=1)
    return shown_map(geometry, picture, scale, grid)


def rgb_picture(geometry: PatchGeometry, rgb: torch.Tensor | np.ndarray, resolution: Resolution,
                grid: bool = False) -> np.ndarray:
    """An RGB map [h, w, 3] in [0, 1] (e.g. PCA) at display size; its difference is the length of the colour change
    per pixel, with a colour bar."""
    rgb = draw.as_numpy(rgb).astype(np.float32)
    if resolution.difference:
        change = change_from_grid(rgb, geometry.image, resolution.mode)  # [H, W] >= 0
        scale = Scale(0.0, max(float(change.max()), 1e-6), "viridis", "RGB change")
        return shown_map(geometry, draw.scale_overlay(geometry.image, change, scale, alpha=0.9, smooth=False),
                         scale, grid)
    pixels = upsample_map(rgb, geometry.image, resolution.mode)  # [H, W, 3]
    return shown(geometry, draw.unit_rgb(pixels), grid)


def label_picture(geometry: PatchGeometry, labels: torch.Tensor | np.ndarray, resolution: Resolution,
                  grid: bool = False, alpha: float = 0.6) -> np.ndarray:
    """A label map [h, w] (parts; -1 black) over the image at display size; its difference marks the pixels whose
    label the upsampling changed (1) against the raw grid (0)."""
    labels = draw.as_numpy(labels).astype(np.int64)
    pixels = upsample_labels(labels, geometry.image, resolution.mode)  # [H, W]
    if resolution.difference:
        changed = pixels != upsample_labels(labels, geometry.image, "nearest")
        scale = Scale(0.0, 1.0, "inferno", "label changed")
        return shown_map(geometry, draw.scale_overlay(geometry.image, changed.astype(np.float32), scale, alpha=alpha,
                                                      smooth=False), scale, grid)
    return shown(geometry, draw.overlay(geometry.image, draw.labels_to_rgb(pixels), alpha=alpha), grid)


__all__ = ["CHOICES", "PATCH_GRID", "Resolution", "scalar_picture", "rgb_picture", "label_picture"]
