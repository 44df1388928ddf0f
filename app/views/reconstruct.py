"""What the Reconstruct view computes: MAE reconstructions and context drift from a chosen mask, as pictures.

No Gradio here. Pictures are uint8 RGB arrays enlarged for display with `app.views.inspect.to_display`, so a click
at display pixel (x, y) maps back to a patch with `app.views.inspect.patch_at` (`toggle_patch`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from app.views.inspect import patch_at, to_display
from ssl_core.analyses.context import context_drift, predicted_alignment
from ssl_core.data.images import ImageSource
from ssl_core.features.encoder import Encoder
from ssl_core.mim.mae import MaskedAutoencoder
from ssl_core.mim.masks import Cell, MaskSpec, toggle_cells
from ssl_core.mim.reconstruct import MASK_FILL, ReconstructionResult, fill_patches, prepare_image, reconstruct
from ssl_core.render import draw


@dataclass(frozen=True)
class DisplayGrid:
    """A `app.views.inspect.PatchGeometry` for pictures that are not `PatchFeatures`: processed image, grid, patch size."""

    image: np.ndarray  # [H, W, ...]: only its shape is read
    grid_hw: tuple[int, int]
    patch_size: int


def mae_display_grid(mae: MaskedAutoencoder) -> DisplayGrid:
    return DisplayGrid(np.empty((mae.img_size, mae.img_size, 0), np.uint8), mae.grid_hw, mae.patch_size)


def encoder_display_grid(encoder: Encoder, image: ImageSource | Image.Image) -> DisplayGrid:
    processed = np.asarray(encoder.prepare(image))
    p = encoder.patch_size
    return DisplayGrid(processed, (processed.shape[0] // p, processed.shape[1] // p), p)


def toggle_patch(hidden: set[Cell] | frozenset[Cell] | None, x: int, y: int, grid: DisplayGrid) -> frozenset[Cell]:
    """Click-to-toggle: the hidden set with the patch under display pixel (x, y) flipped."""
    return toggle_cells(hidden or frozenset(), patch_at(grid, x, y))


def error_picture(result: ReconstructionResult, cmap: str = "inferno") -> np.ndarray:
    """The per-patch error as a heatmap on the hidden patches; visible patches show the image, dimmed."""
    values = np.where(result.mask, result.error_map, np.nan)
    lo, hi = (float(np.nanmin(values)), float(np.nanmax(values))) if result.mask.any() else (0.0, 1.0)
    heat = draw.upsample(draw.apply_colormap(values, lo, hi, cmap), result.image.shape[:2])
    return fill_patches((result.image * 0.35).astype(np.uint8), result.mask, result.patch_size, heat)


class ReconstructView(NamedTuple):
    masked: np.ndarray
    reconstruction: np.ndarray
    pasted: np.ndarray
    error: np.ndarray
    info: str


def reconstruct_view(mae: MaskedAutoencoder, image: ImageSource | Image.Image, kind: str = "random",
                     ratio: float = 0.75, seed: int = 0,
                     custom_hidden: set[Cell] | frozenset[Cell] = frozenset()) -> ReconstructView:
    """Hide patches as the controls say, reconstruct, and return the four pictures (enlarged) and a summary."""
    spec = MaskSpec(kind, float(ratio), frozenset(custom_hidden))
    result = reconstruct(mae, image, spec.build(mae.grid_hw, int(seed)))
    grid = DisplayGrid(result.image, result.grid_hw, result.patch_size)
    h, w = result.grid_hw
    seeded = f", seed {int(seed)}" if kind in ("random", "block") else ""
    if result.num_hidden:
        target = "per-patch normalised pixels" if result.norm_pix else "pixels (ImageNet-normalised)"
        loss = (f"loss over the {result.num_hidden} hidden patches: **{result.loss:.4f}** (mean squared error "
                f"against {target}; the error map shows it per hidden patch, range "
                f"{np.nanmin(result.error_map[result.mask]):.3g}–{np.nanmax(result.error_map[result.mask]):.3g})")
    else:
        loss = "no patch is hidden" + (": click patches on the masked image to hide them" if kind == "custom" else "")
    info = (f"**MAE** {mae.source} · grid {h}×{w} patches of {mae.patch_size} px · mask {spec.describe()}{seeded} · "
            f"{result.num_hidden}/{h * w} patches hidden · {loss}\n\n{result.display_note}"
            + ("\n\n⚠️ **This MAE is untrained (random weights)**: its reconstructions are noise." if not mae.trained else ""))
    return ReconstructView(to_display(grid, result.masked), to_display(grid, result.reconstruction),
                           to_display(grid, result.pasted), to_display(grid, error_picture(result)), info)


class DriftView(NamedTuple):
    drift: np.ndarray
    info: str


def context_drift_view(encoder: Encoder, image: ImageSource | Image.Image, kind: str = "random", ratio: float = 0.75,
                       seed: int = 0, custom_hidden: set[Cell] | frozenset[Cell] = frozenset()) -> DriftView:
    """Per visible patch, how much its representation changes when the hidden patches are removed (any ViT)."""
    grid = encoder_display_grid(encoder, image)
    spec = MaskSpec(kind, float(ratio), frozenset(custom_hidden))
    mask = spec.build(grid.grid_hw, int(seed))
    drift = context_drift(encoder, image, mask)
    lo = float(np.nanmin(drift))
    picture = draw.heatmap_overlay(grid.image, np.nan_to_num(drift, nan=lo), vmin=lo, vmax=1.0, cmap="viridis",
                                     alpha=0.75, smooth=False)
    picture = fill_patches(picture, mask, grid.patch_size, MASK_FILL)
    h, w = grid.grid_hw
    info = (f"**{encoder.display_name}** · {int(mask.sum())}/{h * w} patches removed ({spec.describe()}) · "
            f"per visible patch: cosine between its last-layer representation with the grey patches removed and in "
            f"the whole image (yellow = unchanged, 1.0; darker = leans on the removed context) · mean "
            f"{float(np.nanmean(drift)):.4f}, lowest {lo:.4f}"
            + ("" if encoder.trained else "\n\n⚠️ **This model is untrained (random weights)**."))
    return DriftView(to_display(grid, picture), info)



def cae_alignment_view(cae, image: ImageSource | Image.Image, kind: str = "random", ratio: float = 0.75, seed: int = 0,
                       custom_hidden: set[Cell] | frozenset[Cell] = frozenset()) -> DriftView:
    """Per hidden patch, the cosine between the CAE regressor's predicted latent and the encoder's own latent."""
    spec = MaskSpec(kind, float(ratio), frozenset(custom_hidden))
    mask = spec.build(tuple(cae.grid_hw), int(seed))
    alignment = predicted_alignment(cae, image, mask)
    picture = prepare_image(cae, image)
    grid = DisplayGrid(picture, tuple(cae.grid_hw), cae.patch_size)
    if mask.any():
        heat = draw.upsample(draw.apply_colormap(np.nan_to_num(alignment, nan=0.0), -1.0, 1.0, "viridis"),
                               picture.shape[:2])
        picture = fill_patches((picture * 0.35).astype(np.uint8), mask, cae.patch_size, heat)
        summary = (f"mean cosine over the {int(mask.sum())} hidden patches: **{float(np.nanmean(alignment)):.3f}** "
                   f"(1 = the prediction points where the encoder's own latent does; colour scale −1 to 1)")
    else:
        summary = "no patch is hidden"
    info = ("**CAE predictor** (bundled patchlens-cae) · the latent regressor predicts each hidden patch's "
            f"representation from the visible ones; here against the encoder's own · mask {spec.describe()} · {summary}")
    return DriftView(to_display(grid, picture), info)
