"""The Reconstruct views: MAE reconstructions, context drift, the CAE predictor and wrong positions from a chosen
mask.

All four work on the MAE's centre crop of the image. The first three use the MAE's mask (carried onto another grid
patch by patch when a model's grid differs: `shared_mask`), so the maps side by side show the same patches hidden;
the wrong-positions map swaps a random share of the patches, or the same masked ones.

No Gradio and no math here. Pictures are enlarged for display with `app.views.result.to_display`, so a click on
the masked picture maps back to a patch with `app.views.result.patch_at` (`toggle_patch`).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from app.views.result import (
    SWAP_BOX,
    SWAP_PROBABILITY,
    Click,
    DisplayGrid,
    ViewResult,
    encoder_display_grid,
    file_stem,
    patch_at,
    shown,
    shown_map,
    untrained_warning,
)
from ssl_core.analyses.context import context_drift, drift_unsupported, predicted_alignment
from ssl_core.analyses.positions import position_check, position_probe, positions_unsupported
from ssl_core.data.images import ImageSource
from ssl_core.features.encoder import Encoder
from ssl_core.mim.cae import CAEModel
from ssl_core.mim.mae import MaskedAutoencoder
from ssl_core.mim.masks import Cell, MaskSpec, random_mask, resample_mask, toggle_cells
from ssl_core.mim.reconstruct import (
    MASK_FILL,
    ReconstructionResult,
    centre_square,
    fill_patches,
    prepare_image,
    reconstruct,
)
from ssl_core.progress import ProgressFn
from ssl_core.render import draw
from ssl_core.render.draw import Scale
from ssl_core.render.figures import readout_figure

NO_CAE = ("The bundled CAE model (`patchlens-cae`) is not installed, so its predictor cannot be shown; "
          "train it with `patchlens train --method cae`.")
DRIFT_SCALE = Scale(0.0, 1.0, "viridis", "cosine")  # fixed: 1 = unchanged; values below 0 are shown as 0
ALIGNMENT_SCALE = Scale(-1.0, 1.0, "viridis", "cosine")
FIT_IMAGES = 4  # the wrong-positions probe is fitted on the image shown and the first other loaded images: a ViT-B/16
# fit takes about 6 s on 2 CPU cores; 8 images took twice as long for about the same ROC AUC (0.765 vs 0.748, DILEMMA)
SWAP_SOURCES = ("a random share", "the masked patches")  # which patches the wrong-positions map swaps
Hidden = set[Cell] | frozenset[Cell]


def mae_display_grid(mae: MaskedAutoencoder) -> DisplayGrid:
    return DisplayGrid(np.empty((mae.img_size, mae.img_size, 0), np.uint8), mae.grid_hw, mae.patch_size)


def toggle_patch(hidden: Hidden | None, click: Click, grid_hw: tuple[int, int]) -> frozenset[Cell]:
    """Click-to-toggle: the hidden set with the patch under the click flipped."""
    return toggle_cells(hidden or frozenset(), patch_at(click, grid_hw))


def error_scale(result: ReconstructionResult) -> Scale:
    """The error map's scale: the range of the hidden patches' errors."""
    return Scale.of(np.where(result.mask, result.error_map, np.nan), "inferno", "squared error")


def error_picture(result: ReconstructionResult, scale: Scale | None = None) -> np.ndarray:
    """The per-patch error as a heatmap on the hidden patches; visible patches show the image, dimmed."""
    scale = scale or error_scale(result)
    values = np.where(result.mask, result.error_map, np.nan)
    return draw.heat_on_patches(result.image, values, result.mask, scale.vmin, scale.vmax, scale.cmap)


def _mask(kind: str, ratio: float, custom_hidden: Hidden) -> MaskSpec:
    return MaskSpec(kind, float(ratio), frozenset(custom_hidden))


def mask_note(spec: MaskSpec, seed: int) -> str:
    """The mask as the notes name it: kind, ratio or cells, seed; the grid mask says it ignores the ratio."""
    seeded = f", seed {int(seed)}" if spec.kind in ("random", "block") else ""
    fixed = " — the ratio slider does not apply to the grid mask" if spec.kind == "grid" else ""
    return f"{spec.describe()}{seeded}{fixed}"


def stale_mask_note(kind: str, custom_hidden: Hidden, grid_hw: tuple[int, int], who: str) -> str | None:
    """Why a custom mask (patches clicked on the grid it was drawn for) cannot be used on ``grid_hw``; None when it
    can."""
    h, w = grid_hw
    outside = [cell for cell in custom_hidden if not (0 <= cell[0] < h and 0 <= cell[1] < w)]
    if kind != "custom" or not outside:
        return None
    return (f"The custom mask was clicked on another grid; {len(outside)} of its patches lie outside {who}'s "
            f"{h}×{w} grid, so it is not shown here. Choose another mask, or clear the custom one.")


def shared_mask(spec: MaskSpec, seed: int, grid_hw: tuple[int, int],
                reference_grid: tuple[int, int] | None) -> tuple[np.ndarray, str]:
    """The mask on a model's grid of the MAE's centre crop, and how it relates to the MAE's mask: the same mask when
    the grids agree, the MAE's mask carried over patch by patch when they do not, or drawn on the model's own grid
    when there is no MAE (``reference_grid`` None)."""
    h, w = grid_hw
    if reference_grid is None:
        return spec.build(grid_hw, int(seed)), f"drawn on this model's own {h}×{w} grid (no MAE loaded)"
    if tuple(reference_grid) == tuple(grid_hw):
        return spec.build(grid_hw, int(seed)), "the MAE's mask"
    rh, rw = reference_grid
    return (resample_mask(spec.build(tuple(reference_grid), int(seed)), grid_hw),
            f"the MAE's {rh}×{rw} mask carried onto this model's {h}×{w} grid")


def reconstruct_view(mae: MaskedAutoencoder, image: ImageSource | Image.Image, kind: str = "random",
                     ratio: float = 0.75,
                     seed: int = 0, custom_hidden: Hidden = frozenset(), grid: bool = False) -> ViewResult:
    """Hide patches as the controls say, reconstruct, and return the four pictures (enlarged) and a summary."""
    spec = _mask(kind, ratio, custom_hidden)
    result = reconstruct(mae, image, spec.build(mae.grid_hw, int(seed)))
    geometry = DisplayGrid(result.image, result.grid_hw, result.patch_size)
    h, w = result.grid_hw
    scale = error_scale(result)
    if result.num_hidden:
        target = "per-patch normalised pixels" if result.norm_pix else "pixels (ImageNet-normalised)"
        loss = (f"loss over the {result.num_hidden} hidden patches: **{result.loss:.4f}** (mean squared error "
                f"against {target}; the error map shows it per hidden patch on the scale of its colour bar, "
                f"{draw.tick_label(scale.vmin)}–{draw.tick_label(scale.vmax)})")
    else:
        loss = "no patch is hidden" + (": click patches on the masked image to hide them" if kind == "custom" else "")
    notes = (f"**MAE** {mae.source} · centre crop of the image at {mae.img_size}×{mae.img_size} px · grid {h}×{w} "
             f"patches of {mae.patch_size} px · mask {mask_note(spec, seed)} · {result.num_hidden}/{h * w} patches "
             f"hidden · {loss}\n\n{result.display_note}")
    pictures = {name: shown(geometry, getattr(result, name), grid) for name in ("masked", "reconstruction", "pasted")}
    pictures["error"] = shown_map(geometry, error_picture(result, scale), scale, grid)
    errors = np.where(result.mask, result.error_map, np.nan)
    readout = readout_figure([("error", errors, scale)], cell=300)
    return ViewResult(pictures=pictures, figures={"error_readout": readout},
                      numbers={"image": result.image, "masked": result.masked, "reconstruction": result.reconstruction,
                               "pasted": result.pasted, "mask": result.mask, "error_map": result.error_map,
                               "loss": np.array(result.loss)},
                      notes=notes, warnings=untrained_warning(mae), name=file_stem("mae", "reconstruction"))


def context_drift_view(encoder: Encoder, image: ImageSource | Image.Image, kind: str = "random", ratio: float = 0.75,
                       seed: int = 0, custom_hidden: Hidden = frozenset(),
                       reference_grid: tuple[int, int] | None = None, grid: bool = False) -> ViewResult:
    """Per visible patch, how much its representation changes when the hidden patches are removed (any ViT), on
    the MAE's centre crop with the MAE's mask (``reference_grid``: the MAE's grid; see `shared_mask`). A model that
    cannot drop tokens gets a note saying so (this view also refreshes on a model switch made in another tab)."""
    unsupported = drift_unsupported(encoder)
    if unsupported:
        return ViewResult(notes=unsupported + ".")
    square = centre_square(image)
    geometry = encoder_display_grid(encoder, square)
    stale = stale_mask_note(kind, custom_hidden, reference_grid or geometry.grid_hw, encoder.display_name)
    if stale:
        return ViewResult(notes=stale)
    spec = _mask(kind, ratio, custom_hidden)
    mask, relation = shared_mask(spec, seed, geometry.grid_hw, reference_grid)
    h, w = geometry.grid_hw
    if mask.all():  # a coarse grid (a low resolution) can lose every visible patch: a state to say, not an error
        return ViewResult(notes=f"**{encoder.display_name}**: the mask ({mask_note(spec, seed)}; {relation}) hides all "
                                f"{h * w} patches of this model's {h}×{w} grid, so no visible patch is left to compare. "
                                f"Choose a lower ratio or another mask.")
    drift = context_drift(encoder, square, mask)
    picture = draw.scale_overlay(geometry.image, np.nan_to_num(drift, nan=0.0), DRIFT_SCALE, alpha=0.75, smooth=False)
    picture = fill_patches(picture, mask, geometry.patch_size, MASK_FILL)
    notes = (f"**{encoder.display_name}** · the MAE's centre crop ({square.width}×{square.height} px of the image, "
             f"seen at {geometry.image.shape[1]}×{geometry.image.shape[0]} px) · {int(mask.sum())}/{h * w} patches "
             f"removed ({mask_note(spec, seed)}; {relation}) · per visible patch: cosine between its last-layer "
             f"representation with the grey patches removed and in the whole crop · colour: fixed scale from 0 "
             f"(dark purple) to 1 (yellow, unchanged), viridis, values below 0 shown as 0 · mean "
             f"{float(np.nanmean(drift)):.4f}, lowest {float(np.nanmin(drift)):.4f}")
    return ViewResult(pictures={"drift": shown_map(geometry, picture, DRIFT_SCALE, grid)},
                      figures={"drift_readout": readout_figure([("context drift", drift, DRIFT_SCALE)], cell=300)},
                      numbers={"drift": drift, "mask": mask}, notes=notes, warnings=untrained_warning(encoder),
                      name=file_stem(encoder.name, "context-drift"))


def cae_alignment_view(cae: CAEModel | None, image: ImageSource | Image.Image, kind: str = "random",
                       ratio: float = 0.75,
                       seed: int = 0, custom_hidden: Hidden = frozenset(),
                       reference_grid: tuple[int, int] | None = None, grid: bool = False) -> ViewResult:
    """Per hidden patch, the cosine between the CAE regressor's predicted latent and the encoder's own latent
    (``cae`` None: a note that the bundled CAE is missing); the MAE's crop and mask as in `context_drift_view`."""
    if cae is None:
        return ViewResult(notes=NO_CAE)
    stale = stale_mask_note(kind, custom_hidden, reference_grid or tuple(cae.grid_hw), "the CAE")
    if stale:
        return ViewResult(notes=stale)
    spec = _mask(kind, ratio, custom_hidden)
    mask, relation = shared_mask(spec, seed, tuple(cae.grid_hw), reference_grid)
    alignment = predicted_alignment(cae, image, mask)
    picture = prepare_image(cae, image)
    geometry = DisplayGrid(picture, tuple(cae.grid_hw), cae.patch_size)
    if mask.any():
        picture = draw.heat_on_patches(picture, np.nan_to_num(alignment, nan=0.0), mask, -1.0, 1.0, "viridis")
        summary = (f"mean cosine over the {int(mask.sum())} hidden patches: **{float(np.nanmean(alignment)):.3f}** "
                   f"(1 = the prediction points where the encoder's own latent does; fixed colour scale −1 to 1)")
    else:
        summary = "no patch is hidden"
    notes = ("**CAE predictor** (bundled patchlens-cae) · the latent regressor predicts each hidden patch's "
             f"representation from the visible ones; here against the encoder's own · the MAE's centre crop · mask "
             f"{mask_note(spec, seed)} ({relation}) · {summary}")
    return ViewResult(pictures={"alignment": shown_map(geometry, picture, ALIGNMENT_SCALE, grid)},
                      figures={"alignment_readout": readout_figure([("CAE alignment", alignment, ALIGNMENT_SCALE)],
                                                                   cell=300)},
                      numbers={"alignment": alignment, "mask": mask}, notes=notes,
                      name=file_stem("patchlens-cae", "alignment"))


def position_view(encoder: Encoder, image: ImageSource | Image.Image, others: list[ImageSource | Image.Image],
                  share: float = 0.15, source: str = SWAP_SOURCES[0], kind: str = "random", ratio: float = 0.75,
                  seed: int = 0, custom_hidden: Hidden = frozenset(), reference_grid: tuple[int, int] | None = None,
                  grid: bool = False, progress: ProgressFn | None = None) -> ViewResult:
    """DILEMMA's question on the MAE's centre crop: a random ``share`` of its patches, or the masked ones (``source``),
    trade position embeddings (`ssl_core.analyses.positions.position_check`, the probe fitted on random swaps of
    the centre crops of the image and of the first ``others``); the probe's P(swapped) per token, swaps boxed. A
    model whose tokens cannot be given wrong positions gets a note saying so."""
    unsupported = positions_unsupported(encoder)
    if unsupported:
        return ViewResult(notes=unsupported + ".")
    square = centre_square(image)
    geometry = encoder_display_grid(encoder, square)
    h, w = geometry.grid_hw
    if source == SWAP_SOURCES[1]:
        stale = stale_mask_note(kind, custom_hidden, reference_grid or geometry.grid_hw, encoder.display_name)
        if stale:
            return ViewResult(notes=stale)
        spec = _mask(kind, ratio, custom_hidden)
        swapped, relation = shared_mask(spec, seed, geometry.grid_hw, reference_grid)
        chosen = f"the masked patches ({mask_note(spec, seed)}; {relation})"
    else:
        swapped = random_mask(geometry.grid_hw, float(share), int(seed))
        chosen = f"a random {float(share):.0%} of the patches, seed {int(seed)}"
    if swapped.sum() < 2 or swapped.all():
        return ViewResult(notes=f"Wrong positions: {int(swapped.sum())}/{h * w} patches chosen; choose at least two, "
                                "and leave some in place.")
    fits = [square, *(centre_square(other) for other in others[:FIT_IMAGES - 1])]
    check = position_check(encoder, square, swapped, position_probe(encoder, fits, progress=progress))
    heat = shown(geometry, draw.scale_overlay(geometry.image, check.probability, SWAP_PROBABILITY, alpha=0.7,
                                              smooth=False), grid)
    picture = draw.with_colorbar(draw.mark_patches(heat, check.swapped, heat.shape[0] // h, SWAP_BOX),
                                 SWAP_PROBABILITY)
    auc = "n/a" if check.auc is None else f"{check.auc:.2f}"
    moved, kept = check.mean_cosine
    probe = check.probe
    notes = (f"**{encoder.display_name}** · the MAE's centre crop · {int(swapped.sum())}/{h * w} patches (boxed) trade "
             f"position embeddings in a cycle: {chosen}; {int(check.visible.sum())} of them show other pixels than "
             f"the patch whose position they took · colour: a linear probe's P(swapped) per token, fitted on "
             f"{probe.tokens} tokens of {probe.images} loaded image(s), this one first, each with random swaps of "
             f"{', '.join(f'{s:.0%}' for s in probe.shares)} of its patches · ROC AUC **{auc}** (0.5: the tokens do "
             f"not tell; 1: every swapped token scores above every other) · cosine of each token to itself unswapped: "
             f"swapped {moved:.3f}, others {kept:.3f} (1: the wrong position changed nothing)")
    readout = readout_figure([("P(swapped)", check.probability, SWAP_PROBABILITY),
                              ("cosine to the unswapped token", check.cosine, DRIFT_SCALE)], cell=300)
    return ViewResult(pictures={"positions": picture},
                      figures={"positions_readout": readout},
                      numbers={"probability": check.probability, "swapped": check.swapped, "visible": check.visible,
                               "cosine": check.cosine, "auc": np.array(np.nan if check.auc is None else check.auc)},
                      notes=notes, warnings=untrained_warning(encoder), name=file_stem(encoder.name, "wrong-positions"))
