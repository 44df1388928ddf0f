"""What the Inspect view computes for the UI: plain functions from an encoder and images to pictures and text.

No Gradio here (the UI module wires these to components), and no math beyond calling ``ssl_core``.
Every view returns its pictures (uint8 RGB, enlarged for display) and the numbers behind them, which the
UI offers as an ``.npz`` download.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from ssl_core.analyses.attention import class_attention_map, mass_mask, rollout_map
from ssl_core.analyses.bagssl import bag_of_crops, bag_tables, embedding_vs_patch_mean, patch_to_embedding
from ssl_core.analyses.parts import agreement_with_truth, part_maps, remove_position_mean
from ssl_core.analyses.pca import foreground_mask, pca_rgb
from ssl_core.analyses.similarity import patch_similarity
from ssl_core.data import partsworld
from ssl_core.features.encoder import Encoder, PatchFeatures
from ssl_core.render import draw
from ssl_core.render.figures import bag_of_crops_figure, layer_agreement_figure

DISPLAY_MIN_SIDE = 320
FINAL_LAYER = "final (normed)"


class PatchGeometry(Protocol):
    """What display scaling reads of a picture's patches (`PatchFeatures` is one)."""

    image: np.ndarray  # [H, W, ...] the processed image (only its shape is read)
    grid_hw: tuple[int, int]
    patch_size: int


def display_factor(features: PatchGeometry) -> int:
    """Integer upscaling from the processed image to what the UI shows (patches stay square and crisp)."""
    h, w = features.image.shape[:2]
    return max(1, math.ceil(DISPLAY_MIN_SIDE / min(h, w)))


def to_display(features: PatchGeometry, picture: np.ndarray) -> np.ndarray:
    """A picture at the processed image's size, enlarged by the display factor."""
    factor = display_factor(features)
    if factor == 1:
        return picture
    h, w = picture.shape[:2]
    return np.asarray(Image.fromarray(picture).resize((w * factor, h * factor), Image.Resampling.NEAREST))


def patch_at(features: PatchGeometry, x: int, y: int) -> tuple[int, int]:
    """The (row, col) of the patch under a click at display pixel (x, y)."""
    step = features.patch_size * display_factor(features)
    h, w = features.grid_hw
    return min(max(int(y) // step, 0), h - 1), min(max(int(x) // step, 0), w - 1)


def layer_choices(encoder: Encoder) -> list[str]:
    return [FINAL_LAYER, *(f"block {i}" for i in range(encoder.depth))]


def parse_layer(choice: str | None) -> int | None:
    """None for the final normed output, else a block index."""
    if not choice or choice == FINAL_LAYER:
        return None
    return int(str(choice).split()[-1])


def extract(encoder: Encoder, images: Sequence[Image.Image], layer: int | None = None, attention: bool = False,
            all_layers: bool = False) -> list[PatchFeatures]:
    layers = "all" if all_layers else ([] if layer is None else [layer])
    return encoder.extract(list(images), layers=layers, attention=attention)


Gallery = list[tuple[np.ndarray, str]]


@dataclass
class ViewResult:
    """Pictures for the UI, a caption, and the numbers behind them for export."""

    gallery: Gallery = field(default_factory=list)
    info: str = ""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    pictures: dict[str, np.ndarray] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)
    table: list[list] = field(default_factory=list)


def untrained_note(encoder: Encoder) -> str:
    return "" if encoder.trained else "\n\n⚠️ **This model is untrained (random weights)**: its maps show no learned structure."


# --------------------------------------------------------------------------------------------- overview
def overview(encoder: Encoder, image: Image.Image) -> ViewResult:
    """The image, its PCA map and its class-token attention (last layer, heads averaged), side by side."""
    [features] = encoder.extract([image], attention=True)
    [pca_map], fit = pca_rgb([features.patch_tokens])
    pca_picture = draw.upsample(draw.unit_rgb(pca_map), features.image.shape[:2])
    attention = class_attention_map(features.attention, features.num_prefix, features.grid_hw)
    attention_picture = draw.heatmap_overlay(features.image, attention, cmap="inferno", alpha=0.7)
    h, w = features.grid_hw
    ratios = ", ".join(f"{r:.0%}" for r in fit.explained_ratio.tolist())
    source = "class-token attention" if features.num_prefix else "mean attention received (no class token)"
    info = (f"**{encoder.display_name}** · grid {h}×{w} patches of {features.patch_size} px · image "
            f"{features.image.shape[1]}×{features.image.shape[0]} px · PCA variance explained (R, G, B): {ratios} · "
            f"attention map: {source}, last layer, heads averaged" + untrained_note(encoder))
    return ViewResult(info=info, pictures={
        "image": to_display(features, features.image), "pca": to_display(features, pca_picture),
        "attention": to_display(features, attention_picture)},
        arrays={"patch_tokens": features.patch_tokens.numpy(), "pca_rgb": pca_map.numpy(),
                "class_attention": attention.numpy(), "grid_hw": np.array(features.grid_hw)})


# --------------------------------------------------------------------------------------------- PCA
def pca_view(encoder: Encoder, images: Sequence[Image.Image], names: Sequence[str], layer: int | None,
             joint: bool = True, use_foreground: bool = False, threshold: float = 0.5, invert: bool = False) -> ViewResult:
    features = extract(encoder, images, layer)
    grids = [f.tokens(layer) for f in features]
    groups = [list(range(len(grids)))] if joint else [[i] for i in range(len(grids))]
    gallery, arrays = [], {}
    for group in groups:
        group_grids = [grids[i] for i in group]
        masks = foreground_mask(group_grids, threshold, invert) if use_foreground else None
        maps, fit = pca_rgb(group_grids, masks)
        for i, rgb in zip(group, maps):
            picture = draw.upsample(draw.unit_rgb(rgb), features[i].image.shape[:2])
            gallery.append((to_display(features[i], picture), f"{names[i]} · PC1-3 {fit.explained_ratio.sum():.0%}"))
            arrays[f"pca_rgb_{i}"] = rgb.numpy()
            if masks is not None:
                arrays[f"foreground_{i}"] = masks[group.index(i)].numpy()
    info = ("One PCA fitted on all images: a colour means the same direction in token space everywhere."
            if joint and len(grids) > 1 else "PCA fitted on each image on its own.")
    if use_foreground:
        info += f" Foreground: first component above {threshold:.2f}{' (inverted)' if invert else ''}; background black."
    return ViewResult(gallery=gallery, info=info + untrained_note(encoder), arrays=arrays)


# --------------------------------------------------------------------------------------------- similarity
def similarity_view(encoder: Encoder, images: Sequence[Image.Image], names: Sequence[str], source: int,
                    row: int, col: int, layer: int | None) -> ViewResult:
    """Cosine of patch (row, col) of image ``source`` with every patch of every image, on one colour scale."""
    features = extract(encoder, images, layer)
    maps = patch_similarity([f.tokens(layer) for f in features], source, row, col)
    low = min(float(m.min()) for m in maps)
    gallery = []
    for i, (f, sim) in enumerate(zip(features, maps)):
        picture = draw.heatmap_overlay(f.image, sim, vmin=low, vmax=1.0, cmap="inferno", alpha=0.65, smooth=False)
        if i == source:
            picture = draw.mark_patch(picture, row, col, f.patch_size, color=(0, 255, 255), width=1)
        best = float(sim.max()) if i != source else 1.0
        gallery.append((to_display(f, picture), f"{names[i]} · max cos {best:.2f}"))
    info = (f"Patch (row {row}, col {col}) of **{names[source]}**, {FINAL_LAYER if layer is None else f'block {layer}'}; "
            f"cosine scale {low:.2f} (dark) to 1 (bright)." + untrained_note(encoder))
    arrays = {f"similarity_{i}": m.numpy() for i, m in enumerate(maps)}
    arrays["query"] = np.array([source, row, col])
    return ViewResult(gallery=gallery, info=info, arrays=arrays)


# --------------------------------------------------------------------------------------------- parts
def parts_view(encoder: Encoder, images: Sequence[Image.Image], names: Sequence[str], layer: int | None, k: int,
               seed: int = 0, use_foreground: bool = False, threshold: float = 0.5, invert: bool = False,
               separate: bool = False, remove_position: bool = False) -> ViewResult:
    """k-means over the patch tokens of all images at once (one colour is one part in every image), or of each
    image on its own (``separate``); ``remove_position`` first subtracts each grid position's mean token over the
    images that share the grid."""
    features = extract(encoder, images, layer)
    grids = [f.tokens(layer) for f in features]
    if remove_position:
        grids, centred = remove_position_mean(grids)
        if not centred:
            raise ValueError("removing each position's mean token needs at least two images with the same patch grid "
                             "(same aspect ratio); add more images")
    masks = foreground_mask(grids, threshold, invert) if use_foreground else None
    selected = [int(m.sum()) for m in masks] if masks is not None else [g.shape[0] * g.shape[1] for g in grids]
    total = sum(selected)
    if total < k:
        raise ValueError(f"{total} patches are selected, fewer than k = {k} parts")
    if separate and min(selected) < k:
        name = names[selected.index(min(selected))]
        raise ValueError(f"{name}: {min(selected)} patches are selected, fewer than k = {k} parts for the image on its "
                         f"own (lower k or the foreground threshold)")
    parts = part_maps(grids, k, seed, masks, separate=separate)
    gallery = []
    for f, name, labels in zip(features, names, parts.labels):
        picture = draw.overlay(f.image, draw.labels_to_rgb(labels), alpha=0.6)
        gallery.append((to_display(f, picture), name))
    table = [[name, *map(int, row)] for name, row in zip(names, parts.counts_per_image.tolist())]
    if not separate:
        table.append(["all images", *map(int, parts.counts.tolist())])
    info = ((f"k = {k} parts in each image, from one k-means per image (colours match only within an image)"
             if separate else f"k = {k} parts from one k-means over {total} patch tokens of {len(grids)} image(s)")
            + (", foreground only (black: background)" if use_foreground else "")
            + (f"; each grid position's mean token removed first ({centred} of {len(grids)} images share a grid)"
               if remove_position else "") + untrained_note(encoder))
    arrays = {f"labels_{i}": l.numpy() for i, l in enumerate(parts.labels)}
    scores = []
    known = [partsworld.example_part_map(image) for image in images] if masks is None else []  # (foreground: -1s)
    for i, (part_map, name, labels) in enumerate(zip(known, names, parts.labels)):
        if part_map is not None:
            arrays[f"ground_truth_{i}"] = truth = partsworld.grid_part_labels(part_map, tuple(labels.shape))
            agreement = agreement_with_truth(labels, truth, seed)
            scores.append(f"{name} {agreement.ari:.2f} (shuffled {agreement.shuffled:.2f})")
    if scores:
        info += ("\n\nParts-world examples have known parts: adjusted Rand index of the part map against the "
                 "ground truth — " + "; ".join(scores) + ". 1 is perfect agreement, 0 is chance.")
    arrays.update(centroids=parts.centroids.numpy(), counts_per_image=parts.counts_per_image.numpy())
    return ViewResult(gallery=gallery, info=info, arrays=arrays, table=table)


def parts_table_headers(k: int) -> list[str]:
    return ["image", *(f"part {i}" for i in range(k))]


# --------------------------------------------------------------------------------------------- attention
def attention_view(encoder: Encoder, image: Image.Image, layer: int, head: int | None, rollout: bool,
                   keep_mass: float) -> ViewResult:
    """Class-token attention of one layer (per head and averaged) or the rollout, with a mass-threshold mask."""
    [f] = encoder.extract([image], attention=True)
    layer = layer if layer >= 0 else encoder.depth + layer
    if rollout:
        chosen = rollout_map(f.attention[: layer + 1], f.num_prefix, f.grid_hw)
        title = f"rollout over blocks 0–{layer}"
    else:
        chosen = class_attention_map(f.attention, f.num_prefix, f.grid_hw, layer=layer, head=head)
        title = f"block {layer}, " + ("heads averaged" if head is None else f"head {head}")
    heads = [class_attention_map(f.attention, f.num_prefix, f.grid_hw, layer=layer, head=h) for h in range(encoder.num_heads)]
    head_pictures = [to_display(f, draw.heatmap_overlay(f.image, m, cmap="inferno", alpha=0.75)) for m in heads]
    mask = mass_mask(chosen, keep_mass)
    register_share = ""
    if f.num_registers:
        start = 1 if f.has_class_token else 0
        row = f.attention[layer, :, 0].mean(0) if f.num_prefix else None
        if row is not None:
            register_share = f" · {float(row[start:start + f.num_registers].sum()):.0%} of the class token's attention goes to the {f.num_registers} registers"
    info = (f"Class-token attention, {title}. Mask: the patches holding {keep_mass:.0%} of the attention mass "
            f"({int(mask.sum())} of {mask.numel()} patches){register_share}." + untrained_note(encoder))
    return ViewResult(
        gallery=[(p, f"head {h}") for h, p in enumerate(head_pictures)], info=info,
        pictures={"map": to_display(f, draw.heatmap_overlay(f.image, chosen, cmap="inferno", alpha=0.75)),
                  "mask": to_display(f, draw.mask_overlay(f.image, mask))},
        arrays={"attention_map": chosen.numpy(), "mask": mask.numpy(), "per_head": torch.stack(heads).numpy(),
                "attention": f.attention.numpy()})


# --------------------------------------------------------------------------------------------- BagSSL
def bagssl_view(encoder: Encoder, image: Image.Image, crop_sizes: Sequence[int], progress=None) -> ViewResult:
    [f] = encoder.extract([image], layers="all")
    agreement = embedding_vs_patch_mean(f)
    crops = bag_of_crops(encoder, image, crop_sizes, progress=progress)
    contribution = patch_to_embedding(f)
    picture = draw.heatmap_overlay(f.image, contribution, cmap="viridis", alpha=0.7, smooth=False)
    info = (f"Final cosine between the image embedding and the mean of its patch tokens: **{agreement.cosine[-1]:.3f}**; "
            f"bag of {crops.num_crops[0]} crops of {crops.crop_sizes[0]} px vs the full image: **{crops.cosine[0]:.3f}**."
            + ("" if agreement.uses_class_token else " (This model pools its patches: the image embedding *is* their mean.)")
            + untrained_note(encoder))
    return ViewResult(info=info, pictures={"patch_to_embedding": to_display(f, picture)},
                      figures={"crops": bag_of_crops_figure({encoder.name: crops}),
                               "layers": layer_agreement_figure({encoder.name: agreement})},
                      arrays={"layers": np.array(agreement.layers), "layer_cosine": np.array(agreement.cosine),
                              "bag_of_crops": bag_tables(crops), "patch_to_embedding": contribution.numpy()})
