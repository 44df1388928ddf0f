"""What each view computes for the UI: plain functions from an encoder and images to pictures and text.

No Gradio here (the UI module wires these to components), and no math beyond calling ``ssl_core``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ssl_core import render
from ssl_core.attention import class_attention_map
from ssl_core.encoder import Encoder, PatchFeatures
from ssl_core.pca import pca_rgb

DISPLAY_MIN_SIDE = 320


def display_factor(features: PatchFeatures) -> int:
    """Integer upscaling from the processed image to what the UI shows (patches stay square and crisp)."""
    h, w = features.image.shape[:2]
    return max(1, math.ceil(DISPLAY_MIN_SIDE / min(h, w)))


def to_display(features: PatchFeatures, picture: np.ndarray) -> np.ndarray:
    """A picture at the processed image's size, enlarged by the display factor."""
    factor = display_factor(features)
    if factor == 1:
        return picture
    h, w = picture.shape[:2]
    return np.asarray(Image.fromarray(picture).resize((w * factor, h * factor), Image.Resampling.NEAREST))


def patch_at(features: PatchFeatures, x: int, y: int) -> tuple[int, int]:
    """The (row, col) of the patch under a click at display pixel (x, y)."""
    step = features.patch_size * display_factor(features)
    h, w = features.grid_hw
    return min(max(int(y) // step, 0), h - 1), min(max(int(x) // step, 0), w - 1)


@dataclass
class InspectResult:
    image: np.ndarray  # the processed image, enlarged for display
    pca: np.ndarray  # PCA-to-RGB map over the image
    attention: np.ndarray  # class-token attention of the last layer, heads averaged
    info: str


def inspect_image(encoder: Encoder, image: Image.Image) -> InspectResult:
    [features] = encoder.extract([image], attention=True)
    [pca_map], fit = pca_rgb([features.patch_tokens])
    pca_picture = render.upsample(render.unit_rgb(pca_map), features.image.shape[:2])
    attention = class_attention_map(features.attention, features.num_prefix, features.grid_hw)
    attention_picture = render.heatmap_overlay(features.image, attention, cmap="inferno", alpha=0.7)
    h, w = features.grid_hw
    ratios = ", ".join(f"{r:.0%}" for r in fit.explained_ratio.tolist())
    source = "class-token attention" if features.num_prefix else "mean attention received (no class token)"
    info = (f"**{encoder.spec.display_name}** · grid {h}×{w} patches of {features.patch_size} px · image "
            f"{features.image.shape[1]}×{features.image.shape[0]} px · PCA variance explained (R, G, B): {ratios} · "
            f"attention map: {source}, last layer, heads averaged"
            + ("" if encoder.trained else "\n\n⚠️ **This model is untrained (random weights)**: its maps show no learned structure."))
    return InspectResult(to_display(features, features.image), to_display(features, pca_picture),
                         to_display(features, attention_picture), info)
