"""The Reconstruct views: MAE reconstructions, context drift and the CAE predictor from a chosen mask.

No Gradio and no math here. Pictures are enlarged for display with `app.views.result.to_display`, so a click on
the masked picture maps back to a patch with `app.views.result.patch_at` (`toggle_patch`).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from app.views.result import (
    Click,
    DisplayGrid,
    ViewResult,
    encoder_display_grid,
    patch_at,
    to_display,
    untrained_warning,
)
from ssl_core.analyses.context import context_drift, predicted_alignment
from ssl_core.data.images import ImageSource
from ssl_core.features.encoder import Encoder
from ssl_core.mim.cae import CAEModel
from ssl_core.mim.mae import MaskedAutoencoder
from ssl_core.mim.masks import Cell, MaskSpec, toggle_cells
from ssl_core.mim.reconstruct import MASK_FILL, ReconstructionResult, fill_patches, prepare_image, reconstruct
from ssl_core.render import draw

NO_CAE = ("The bundled CAE model (`patchlens-cae`) is not installed, so its predictor cannot be shown; "
          "train it with `patchlens train --method cae`.")


def mae_display_grid(mae: MaskedAutoencoder) -> DisplayGrid:
    return DisplayGrid(np.empty((mae.img_size, mae.img_size, 0), np.uint8), mae.grid_hw, mae.patch_size)


def toggle_patch(hidden: set[Cell] | frozenset[Cell] | None, click: Click, grid_hw: tuple[int, int]) -> frozenset[Cell]:
    """Click-to-toggle: the hidden set with the patch under the click flipped."""
    return toggle_cells(hidden or frozenset(), patch_at(click, grid_hw))


def error_picture(result: ReconstructionResult, cmap: str = "inferno") -> np.ndarray:
    """The per-patch error as a heatmap on the hidden patches; visible patches show the image, dimmed."""
    values = np.where(result.mask, result.error_map, np.nan)
    lo, hi = (float(np.nanmin(values)), float(np.nanmax(values))) if result.mask.any() else (0.0, 1.0)
    return draw.heat_on_patches(result.image, values, result.mask, lo, hi, cmap)


def _mask(kind: str, ratio: float, custom_hidden: set[Cell] | frozenset[Cell]) -> MaskSpec:
    return MaskSpec(kind, float(ratio), frozenset(custom_hidden))


def _misfit(kind: str, custom_hidden: set[Cell] | frozenset[Cell], grid_hw: tuple[int, int], who: str) -> str | None:
    """Why a custom mask (patches clicked on the MAE's grid) cannot be used on ``grid_hw``; None when it can."""
    h, w = grid_hw
    outside = [cell for cell in custom_hidden if not (0 <= cell[0] < h and 0 <= cell[1] < w)]
    if kind != "custom" or not outside:
        return None
    return (f"The custom mask was clicked on the MAE's grid; {len(outside)} of its patches lie outside {who}'s "
            f"{h}×{w} grid, so it is not shown here. Choose another mask, or clear the custom one.")


def reconstruct_view(mae: MaskedAutoencoder, image: ImageSource | Image.Image, kind: str = "random",
                     ratio: float = 0.75, seed: int = 0,
                     custom_hidden: set[Cell] | frozenset[Cell] = frozenset()) -> ViewResult:
    """Hide patches as the controls say, reconstruct, and return the four pictures (enlarged) and a summary."""
    spec = _mask(kind, ratio, custom_hidden)
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
    notes = (f"**MAE** {mae.source} · grid {h}×{w} patches of {mae.patch_size} px · mask {spec.describe()}{seeded} · "
             f"{result.num_hidden}/{h * w} patches hidden · {loss}\n\n{result.display_note}")
    pictures = {"masked": result.masked, "reconstruction": result.reconstruction, "pasted": result.pasted,
                "error": error_picture(result)}
    return ViewResult(pictures={name: to_display(grid, p) for name, p in pictures.items()}, notes=notes,
                      warnings=untrained_warning(mae), name="reconstruction")


def context_drift_view(encoder: Encoder, image: ImageSource | Image.Image, kind: str = "random", ratio: float = 0.75,
                       seed: int = 0, custom_hidden: set[Cell] | frozenset[Cell] = frozenset()) -> ViewResult:
    """Per visible patch, how much its representation changes when the hidden patches are removed (any ViT)."""
    grid = encoder_display_grid(encoder, image)
    misfit = _misfit(kind, custom_hidden, grid.grid_hw, encoder.display_name)
    if misfit:
        return ViewResult(notes=misfit)
    spec = _mask(kind, ratio, custom_hidden)
    mask = spec.build(grid.grid_hw, int(seed))
    drift = context_drift(encoder, image, mask)
    lo = float(np.nanmin(drift))
    picture = draw.heatmap_overlay(grid.image, np.nan_to_num(drift, nan=lo), vmin=lo, vmax=1.0, cmap="viridis",
                                   alpha=0.75, smooth=False)
    picture = fill_patches(picture, mask, grid.patch_size, MASK_FILL)
    h, w = grid.grid_hw
    notes = (f"**{encoder.display_name}** · {int(mask.sum())}/{h * w} patches removed ({spec.describe()}) · "
             f"per visible patch: cosine between its last-layer representation with the grey patches removed and in "
             f"the whole image (yellow = unchanged, 1.0; darker = leans on the removed context) · mean "
             f"{float(np.nanmean(drift)):.4f}, lowest {lo:.4f}")
    return ViewResult(pictures={"drift": to_display(grid, picture)}, numbers={"drift": drift, "mask": mask},
                      notes=notes, warnings=untrained_warning(encoder), name="context_drift")


def cae_alignment_view(cae: CAEModel | None, image: ImageSource | Image.Image, kind: str = "random",
                       ratio: float = 0.75, seed: int = 0,
                       custom_hidden: set[Cell] | frozenset[Cell] = frozenset()) -> ViewResult:
    """Per hidden patch, the cosine between the CAE regressor's predicted latent and the encoder's own latent
    (``cae`` None: a note that the bundled CAE is missing)."""
    if cae is None:
        return ViewResult(notes=NO_CAE)
    misfit = _misfit(kind, custom_hidden, tuple(cae.grid_hw), "the CAE")
    if misfit:
        return ViewResult(notes=misfit)
    spec = _mask(kind, ratio, custom_hidden)
    mask = spec.build(tuple(cae.grid_hw), int(seed))
    alignment = predicted_alignment(cae, image, mask)
    picture = prepare_image(cae, image)
    grid = DisplayGrid(picture, tuple(cae.grid_hw), cae.patch_size)
    if mask.any():
        picture = draw.heat_on_patches(picture, np.nan_to_num(alignment, nan=0.0), mask, -1.0, 1.0, "viridis")
        summary = (f"mean cosine over the {int(mask.sum())} hidden patches: **{float(np.nanmean(alignment)):.3f}** "
                   f"(1 = the prediction points where the encoder's own latent does; colour scale −1 to 1)")
    else:
        summary = "no patch is hidden"
    notes = ("**CAE predictor** (bundled patchlens-cae) · the latent regressor predicts each hidden patch's "
             f"representation from the visible ones; here against the encoder's own · mask {spec.describe()} · {summary}")
    return ViewResult(pictures={"alignment": to_display(grid, picture)}, numbers={"alignment": alignment, "mask": mask},
                      notes=notes, name="cae_alignment")
