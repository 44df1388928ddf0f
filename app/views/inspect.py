"""The Inspect views: an encoder and images in, a `ViewResult` out (pictures at display size, numbers behind them).

No Gradio and no math here: every number comes from ``ssl_core``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from app.views.resolution import PATCH_GRID, Resolution, label_picture, rgb_picture, scalar_picture
from app.views.result import (
    Click,
    Table,
    ViewResult,
    encoder_display_grid,
    file_stem,
    patch_at,
    shown,
    untrained_warning,
)
from ssl_core.analyses.attention import attention_shares, class_attention_map, mass_mask, rollout_map
from ssl_core.analyses.attention_range import attention_range
from ssl_core.analyses.bagssl import (
    bag_of_crops,
    bag_tables,
    check_crop_sizes,
    crop_count,
    embedding_vs_patch_mean,
    patch_to_embedding,
)
from ssl_core.analyses.parts import agreement_with_truth, check_part_count, part_maps, remove_position_mean
from ssl_core.analyses.pca import foreground_mask, pca_rgb, pca_rgb_each
from ssl_core.analyses.similarity import patch_similarity
from ssl_core.analyses.token_norm import token_norms
from ssl_core.data import partsworld
from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder, PatchFeatures
from ssl_core.features.facets import facet_tokens
from ssl_core.progress import ProgressFn
from ssl_core.render import draw
from ssl_core.render.draw import Scale
from ssl_core.render.figures import attention_range_figure, bag_of_crops_figure, layer_agreement_figure, readout_figure
from ssl_core.work import WorkLimits

FINAL_LAYER = "final (normed)"
CLICK_BOX = (0, 255, 255)
BLOCK_OUTPUT = "block output"
FACETS = {BLOCK_OUTPUT: "token", "key": "key", "query": "query", "value": "value"}  # choice -> ssl_core facet


def layer_choices(encoder: Encoder) -> list[str]:
    return [FINAL_LAYER, *(f"block {i}" for i in range(encoder.depth))]


def parse_layer(choice: str | None) -> int | None:
    """None for the final normed output, else a block index."""
    if not choice or choice == FINAL_LAYER:
        return None
    return int(str(choice).split()[-1])


def parse_crop_sizes(text: str) -> list[int]:
    """Crop sizes from "16, 32,48"."""
    try:
        return [int(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError:
        raise BadRequest(f"Crop sizes must be whole numbers separated by commas, not {text!r}.") from None


def extract(encoder: Encoder, images: Sequence[Image.Image], layer: int | None = None) -> list[PatchFeatures]:
    return encoder.extract(list(images), layers=[] if layer is None else [layer])


def token_grids(encoder: Encoder, images: Sequence[Image.Image], layer: int | None, facet: str = BLOCK_OUTPUT,
                ) -> tuple[list[PatchFeatures], list[torch.Tensor]]:
    """Each image's features (for its picture and grid) and the tokens [h, w, D] the per-patch maps use: the
    output of block ``layer`` (None: the final normed tokens), or its attention's key, query or value (None: the
    last block's)."""
    if facet not in FACETS:
        raise BadRequest(f"unknown facet {facet!r} (choose from {', '.join(FACETS)})")
    features = extract(encoder, images, layer)
    if facet == BLOCK_OUTPUT:
        return features, [f.tokens(layer) for f in features]
    block = -1 if layer is None else layer
    return features, [t.patch_tokens for t in facet_tokens(encoder, images, FACETS[facet], block)]


def tokens_label(layer: int | None, facet: str = BLOCK_OUTPUT) -> str:
    where = FINAL_LAYER if layer is None else f"block {layer}"
    return where if facet == BLOCK_OUTPUT else f"{facet} of {'the last block' if layer is None else where}"


def model_status(encoder: Encoder) -> ViewResult:
    return ViewResult(notes=encoder.describe(), warnings=untrained_warning(encoder))


def patch_grid(encoder: Encoder, image: Image.Image) -> tuple[int, int]:
    """The (rows, cols) of patches ``encoder`` sees ``image`` as (no forward pass)."""
    return encoder_display_grid(encoder, image).grid_hw


def clicked_patch(encoder: Encoder, image: Image.Image, click: Click) -> tuple[int, int]:
    """The patch under a click on the image as the views show it (no forward pass: the resize gives the grid)."""
    return patch_at(click, encoder_display_grid(encoder, image).grid_hw)


def overview(encoder: Encoder, image: Image.Image, grid: bool = False, resolution: str = PATCH_GRID) -> ViewResult:
    """The image, its PCA map and its class-token attention (last layer, heads averaged), side by side; ``grid``
    draws the patch grid on them; the maps are drawn at ``resolution`` (one of `app.views.resolution.CHOICES`)."""
    drawn = Resolution.of(resolution)
    [f] = encoder.extract([image], attention=True)
    [pca_map], fit = pca_rgb([f.patch_tokens])
    attention = class_attention_map(f.attention, f.num_prefix, f.grid_hw)
    h, w = f.grid_hw
    ratios = ", ".join(f"{r:.0%}" for r in fit.explained_ratio.tolist())
    source = "class-token attention" if f.num_prefix else "mean attention received (no class token)"
    notes = (f"**{encoder.display_name}** · grid {h}×{w} patches of {f.patch_size} px · image "
             f"{f.image.shape[1]}×{f.image.shape[0]} px · PCA variance explained (R, G, B): {ratios} · "
             f"attention map: {source}, last layer, heads averaged · maps: {drawn.label}")
    scale = Scale.of(attention, "inferno", "attention")
    pictures = {"image": shown(f, f.image, grid),
                "pca": rgb_picture(f, pca_map, drawn, grid),
                "attention": scalar_picture(f, attention, scale, drawn, grid, alpha=0.7)}
    return ViewResult(
        pictures=pictures, figures={"attention_readout": readout_figure([(source, attention, scale)], cell=300)},
        numbers={"patch_tokens": f.patch_tokens.numpy(), "pca_rgb": pca_map.numpy(),
                 "class_attention": attention.numpy(), "grid_hw": np.array(f.grid_hw)},
        notes=notes, warnings=untrained_warning(encoder), name=file_stem(encoder.name, "overview"))


def pca_view(encoder: Encoder, images: Sequence[Image.Image], names: Sequence[str], layer: int | None,
             joint: bool = True, use_foreground: bool = False, threshold: float = 0.5, invert: bool = False,
             grid: bool = False, resolution: str = PATCH_GRID, facet: str = BLOCK_OUTPUT) -> ViewResult:
    drawn = Resolution.of(resolution)
    features, grids = token_grids(encoder, images, layer, facet)
    fits = pca_rgb_each(grids, joint, threshold if use_foreground else None, invert)
    gallery, numbers = [], {}
    for i, (f, fit) in enumerate(zip(features, fits)):
        gallery.append((rgb_picture(f, fit.rgb, drawn, grid), f"{names[i]} · PC1-3 {fit.explained:.0%}"))
        numbers[f"pca_rgb_{i}"] = fit.rgb.numpy()
        if fit.foreground is not None:
            numbers[f"foreground_{i}"] = fit.foreground.numpy()
    notes = ("One PCA fitted on all images: a colour means the same direction in token space everywhere."
             if joint and len(features) > 1 else "PCA fitted on each image on its own.")
    notes += f" Tokens: {tokens_label(layer, facet)}; maps: {drawn.label}."
    if use_foreground:
        notes += f" Foreground: first component above {threshold:.2f}{' (inverted)' if invert else ''}; background black."
    return ViewResult(galleries={"maps": gallery}, numbers=numbers, notes=notes, warnings=untrained_warning(encoder),
                      name=file_stem(encoder.name, "pca"), item_names={"maps": list(names)})


def similarity_view(encoder: Encoder, images: Sequence[Image.Image], names: Sequence[str], source: int,
                    row: int, col: int, layer: int | None, grid: bool = False, resolution: str = PATCH_GRID,
                    facet: str = BLOCK_OUTPUT) -> ViewResult:
    """Cosine of patch (row, col) of image ``source`` with every patch of every image, on one colour scale."""
    drawn = Resolution.of(resolution)
    features, grids = token_grids(encoder, images, layer, facet)
    maps = patch_similarity(grids, source, row, col)
    low = min(float(m.min()) for m in maps)  # one colour scale for every image
    scale = Scale(low, 1.0, "inferno", "cosine")
    gallery = []
    for i, (f, sim) in enumerate(zip(features, maps)):
        clicked = np.zeros(sim.shape, bool)  # the clicked patch is boxed on its own image (grids differ)
        if i == source:
            clicked[row, col] = True
        best = float(sim.max()) if i != source else 1.0
        gallery.append((scalar_picture(f, sim, scale, drawn, grid, alpha=0.65, marks=clicked,
                                       mark_colour=CLICK_BOX),
                        f"{names[i]} · max cos {best:.2f}"))
    notes = (f"Patch (row {row}, col {col}) of **{names[source]}**, {tokens_label(layer, facet)}; "
             f"cosine scale {low:.2f} (dark) to 1 (bright); maps: {drawn.label}.")
    numbers = {f"similarity_{i}": m.numpy() for i, m in enumerate(maps)}
    numbers["query"] = np.array([source, row, col])
    readout = readout_figure([(name, m, scale) for name, m in zip(names, maps)])
    return ViewResult(galleries={"maps": gallery}, figures={"readout": readout}, numbers=numbers, notes=notes,
                      warnings=untrained_warning(encoder), name=file_stem(encoder.name, "similarity"),
                      item_names={"maps": list(names)})


def parts_view(encoder: Encoder, images: Sequence[Image.Image], names: Sequence[str], layer: int | None, k: int,
               seed: int = 0, use_foreground: bool = False, threshold: float = 0.5, invert: bool = False,
               separate: bool = False, remove_position: bool = False, grid: bool = False,
               resolution: str = PATCH_GRID, facet: str = BLOCK_OUTPUT) -> ViewResult:
    """k-means over the patch tokens of all images at once (one colour is one part in every image), or of each
    image on its own (``separate``); ``remove_position`` first subtracts each grid position's mean token over the
    images that share the grid."""
    drawn = Resolution.of(resolution)
    features, grids = token_grids(encoder, images, layer, facet)
    if remove_position:
        grids, centred = remove_position_mean(grids, require=True)
    masks = foreground_mask(grids, threshold, invert) if use_foreground else None
    total = check_part_count(grids, k, masks, separate, list(names))
    parts = part_maps(grids, k, seed, masks, separate=separate)
    gallery = [(label_picture(f, labels, drawn, grid), name) for f, name, labels in zip(features, names, parts.labels)]
    rows = [[name, *map(int, row)] for name, row in zip(names, parts.counts_per_image.tolist())]
    if not separate:
        rows.append(["all images", *map(int, parts.counts.tolist())])
    notes = ((f"k = {k} parts in each image, from one k-means per image (colours match only within an image)"
              if separate else f"k = {k} parts from one k-means over {total} patch tokens of {len(grids)} image(s)")
             + (", foreground only (black: background)" if use_foreground else "")
             + (f"; each grid position's mean token removed first ({centred} of {len(grids)} images share a grid)"
                if remove_position else "") + f"; tokens: {tokens_label(layer, facet)}; maps: {drawn.label}")
    numbers = {f"labels_{i}": labels.numpy() for i, labels in enumerate(parts.labels)}
    scores = []
    known = [partsworld.example_part_map(image) for image in images] if masks is None else []  # (foreground: -1s)
    for i, (part_map, name, labels) in enumerate(zip(known, names, parts.labels)):
        if part_map is not None:
            numbers[f"ground_truth_{i}"] = truth = partsworld.grid_part_labels(part_map, tuple(labels.shape))
            agreement = agreement_with_truth(labels, truth, seed)
            scores.append(f"{name} {agreement.ari:.2f} (shuffled {agreement.shuffled:.2f})")
    if scores:
        notes += ("\n\nParts-world examples have known parts: adjusted Rand index of the part map against the "
                  "ground truth — " + "; ".join(scores) + ". 1 is perfect agreement, 0 is chance.")
    numbers.update(centroids=parts.centroids.numpy(), counts_per_image=parts.counts_per_image.numpy())
    return ViewResult(galleries={"maps": gallery}, tables={"counts": Table(parts_table_headers(k), rows)},
                      numbers=numbers, notes=notes, warnings=untrained_warning(encoder),
                      name=file_stem(encoder.name, "parts"), item_names={"maps": list(names)})


def parts_table_headers(k: int) -> list[str]:
    return ["image", *(f"part {i}" for i in range(k))]


def attention_view(encoder: Encoder, image: Image.Image, layer: int, head: int | None, rollout: bool,
                   keep_mass: float, grid: bool = False, resolution: str = PATCH_GRID) -> ViewResult:
    """Class-token attention of one layer (per head and averaged) or the rollout, with a mass-threshold mask, the
    norm of each patch token after that block (high-norm artifact tokens boxed), and where every block's heads look
    (attention distance and query-key NMI per head: the figure ``range``, and each head's caption)."""
    drawn = Resolution.of(resolution)
    [layer] = encoder.resolve_layers([layer])
    [f] = encoder.extract([image], layers=[layer], attention=True)
    if rollout:
        chosen = rollout_map(f.attention[: layer + 1], f.num_prefix, f.grid_hw)
        title = f"rollout over blocks 0–{layer}"
    else:
        chosen = class_attention_map(f.attention, f.num_prefix, f.grid_hw, layer=layer, head=head)
        title = f"block {layer}, " + ("heads averaged" if head is None else f"head {head}")
    heads = [class_attention_map(f.attention, f.num_prefix, f.grid_hw, layer=layer, head=h)
             for h in range(encoder.num_heads)]
    mask = mass_mask(chosen, keep_mass)
    norms = token_norms(f, [layer])
    reach = attention_range([f])  # [L, heads]
    scales = {"map": Scale.of(chosen, "inferno", "rollout" if rollout else "attention"),
              "norm": Scale.of(norms.patch_norms[0], "viridis", "norm")}
    head_scales = [Scale.of(m, "inferno", "attention") for m in heads]
    notes = (f"Class-token attention, {title}. Mask: the patches holding {keep_mass:.0%} of the attention mass "
             f"({int(mask.sum())} of {mask.numel()} patches). Token norms after block {layer}: "
             f"{norms.describe().split(': ', 1)[1]} (boxed); maps: {drawn.label}")
    if f.num_registers:
        shares = attention_shares(f.attention, f.has_class_token, f.num_registers, layer=layer)
        notes += (f" · {shares.registers:.0%} of the class token's attention goes to the {f.num_registers} registers")
    notes += (f" · block {layer}'s patches attend {reach.distance_px[layer].mean():.0f} px away on average "
              f"({reach.relative_distance[layer].mean():.2f} of uniform attention's), query-key NMI "
              f"{reach.nmi[layer].mean():.2f}")
    head_captions = [f"head {h} · {reach.distance_px[layer, h]:.0f} px, NMI {reach.nmi[layer, h]:.2f}"
                     for h in range(len(heads))]
    panels = [(title, chosen, scales["map"]), (f"token norm, block {layer}", norms.patch_norms[0], scales["norm"]),
              *((f"head {h}", m, s) for h, (m, s) in enumerate(zip(heads, head_scales)))]
    return ViewResult(
        pictures={"map": scalar_picture(f, chosen, scales["map"], drawn, grid),
                  "mask": shown(f, draw.mask_overlay(f.image, mask), grid),
                  "token_norm": scalar_picture(f, norms.patch_norms[0], scales["norm"], drawn, grid,
                                               marks=norms.outliers[0])},
        galleries={"heads": [(scalar_picture(f, m, s, drawn, grid), caption)
                             for m, s, caption in zip(heads, head_scales, head_captions)]},
        figures={"readout": readout_figure(panels), "range": attention_range_figure({encoder.display_name: reach})},
        item_names={"heads": [f"head{h}" for h in range(len(heads))]},
        numbers={"attention_map": chosen.numpy(), "mask": mask.numpy(), "per_head": torch.stack(heads).numpy(),
                 "attention": f.attention.numpy(), "token_norm": norms.patch_norms[0],
                 "token_norm_outliers": norms.outliers[0], "attention_distance_px": reach.distance_px,
                 "attention_relative_distance": reach.relative_distance, "attention_nmi": reach.nmi},
        notes=notes + ".", warnings=untrained_warning(encoder), name=file_stem(encoder.name, "attention"))


def check_bagssl(encoder: Encoder, image: Image.Image, crop_sizes: Sequence[int], limits: WorkLimits) -> list[int]:
    """The crop sizes, once each; `BadRequest` for a size out of range or for more crops than one job may embed."""
    width, height = encoder.prepare(image).size
    sizes = check_crop_sizes(crop_sizes, width, height)
    limits.check(f"BagSSL with crop sizes {', '.join(map(str, sizes))} on this {width}x{height} px image",
                 crop_count(sizes, width, height),
                 f"Choose larger crop sizes: a size s tiles the image into about ({width}/s) x ({height}/s) crops.")
    return sizes


def bagssl_view(encoder: Encoder, image: Image.Image, crop_sizes: Sequence[int],
                progress: ProgressFn | None = None, grid: bool = False, limits: WorkLimits | None = None,
                ) -> ViewResult:
    """BagSSL of one image; with ``limits``, sizes out of range and requests over the limits are refused first."""
    if limits is not None:
        crop_sizes = check_bagssl(encoder, image, crop_sizes, limits)
    [f] = encoder.extract([image], layers="all")
    agreement = embedding_vs_patch_mean(f)
    crops = bag_of_crops(encoder, image, crop_sizes, progress=progress)
    contribution = patch_to_embedding(f)
    scale = Scale.of(contribution, "viridis", "cosine")
    notes = (f"Final cosine between the image embedding and the mean of its patch tokens: **{agreement.cosine[-1]:.3f}**; "
             f"bag of {crops.num_crops[0]} crops of {crops.crop_sizes[0]} px vs the full image: **{crops.cosine[0]:.3f}**."
             + ("" if agreement.uses_class_token else " (This model pools its patches: the image embedding *is* their mean.)"))
    return ViewResult(pictures={"patch_to_embedding": scalar_picture(f, contribution, scale, Resolution(), grid)},
                      figures={"crops": bag_of_crops_figure({encoder.name: crops}),
                               "layers": layer_agreement_figure({encoder.name: agreement}),
                               "readout": readout_figure([("patch token · image embedding", contribution, scale)],
                                                         cell=300)},
                      numbers={"layers": np.array(agreement.layers), "layer_cosine": np.array(agreement.cosine),
                               "bag_of_crops": bag_tables(crops), "patch_to_embedding": contribution.numpy()},
                      notes=notes, warnings=untrained_warning(encoder), name=file_stem(encoder.name, "bagssl"))
