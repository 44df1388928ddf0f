"""BagSSL: how much of an image embedding is the average of its local parts.

Three measurements (Chen et al., "Bag of Image Patch Embedding Behind the Success of Self-Supervised
Learning", 2022):

* `embedding_vs_patch_mean`: per block, the cosine between the image embedding (the class token; at the
  end, the model's own pre-logits output) and the mean of the patch tokens.
* `bag_of_crops`: the image is tiled into square crops of a fixed size (in pixels of the image as the
  model sees it; the last row and column are aligned to the image edge so the tiles cover it); each crop
  is embedded on its own, resized to the model's input size; the crop embeddings are averaged and
  compared, by cosine, with the full-image embedding. A crop as large as the image is the image itself.
  `bag_embeddings` is the averaging itself, for many same-size images at once; it can also embed each crop
  at its own resolution (the Lab's k-NN from a bag of crops does, as DINO's local crops).
* `patch_to_embedding`: each final patch token's cosine to the image embedding — which patches the
  image embedding is made of.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder, PatchFeatures
from ssl_core.progress import ProgressFn


@dataclass
class LayerAgreement:
    layers: list[int]  # block indices; the last entry is the model's final output ("final")
    cosine: list[float]  # cos(image embedding, mean of patch tokens) per entry
    uses_class_token: bool  # False for pooled models, where the two agree by construction


def embedding_vs_patch_mean(features: PatchFeatures) -> LayerAgreement:
    """Needs features extracted with ``layers="all"``."""
    layers = sorted(features.layer_tokens)
    cosines = []
    for layer in layers:
        patch_mean = features.layer_tokens[layer].reshape(-1, features.layer_tokens[layer].shape[-1]).mean(0)
        prefix = features.layer_prefix_tokens[layer]
        image = prefix[0] if features.has_class_token and prefix.shape[0] else patch_mean
        cosines.append(float(F.cosine_similarity(image, patch_mean, dim=0)))
    final_mean = features.patch_tokens.reshape(-1, features.patch_tokens.shape[-1]).mean(0)
    embedding = features.image_embedding
    if embedding.shape == final_mean.shape:
        cosines.append(float(F.cosine_similarity(embedding, final_mean, dim=0)))
        layers = [*layers, -1]
    return LayerAgreement(layers, cosines, features.has_class_token)


def patch_to_embedding(features: PatchFeatures) -> torch.Tensor:
    """Cosine of each final patch token [h, w, D] with the image embedding [D]. Returns [h, w]."""
    tokens = features.patch_tokens
    if tokens.shape[-1] != features.image_embedding.shape[-1]:
        raise BadRequest("the image embedding and the patch tokens have different widths")
    return F.normalize(tokens, dim=-1) @ F.normalize(features.image_embedding, dim=0)


def tile_boxes(width: int, height: int, crop: int) -> list[tuple[int, int, int, int]]:
    """Square boxes (left, top, right, bottom) of side ``crop`` covering the image, edges aligned."""
    crop = min(crop, width, height)
    xs = list(range(0, width - crop + 1, crop))
    ys = list(range(0, height - crop + 1, crop))
    if xs[-1] + crop < width:
        xs.append(width - crop)
    if ys[-1] + crop < height:
        ys.append(height - crop)
    return [(x, y, x + crop, y + crop) for y in ys for x in xs]


def embed_crops(encoder: Encoder, crops: Sequence[Image.Image], resize: bool = True, batch_size: int = 16,
                progress: ProgressFn | None = None) -> torch.Tensor:
    """The image embedding of each crop [N, D], embedded on its own (see `bag_embeddings`); progress counts crops,
    once per batch."""
    embeddings = []
    for start in range(0, len(crops), batch_size):
        chunk = crops[start:start + batch_size]
        if resize:
            features = encoder.extract(chunk, batch_size=batch_size)
        else:
            features = encoder.forward_batch(torch.stack([encoder.to_tensor(c) for c in chunk]))  # [B, 3, c, c]
        embeddings += [f.image_embedding for f in features]
        if progress is not None:
            progress(start + len(chunk), len(crops))
    return torch.stack(embeddings)


def bag_embeddings(encoder: Encoder, images: Sequence[Image.Image], crop: int, resize: bool = True,
                   batch_size: int = 16, progress: ProgressFn | None = None) -> torch.Tensor:
    """Per image, the mean image embedding of its tiles of side ``crop`` (`tile_boxes`), each crop embedded on its
    own: resized to the model's input size as any image (``resize``: `Encoder.extract`, cached), or at its own
    resolution (the crop side must then be whole patches).

    images: n images of one size, as the model sees them. Returns [n, D]; progress counts whole images.
    """
    width, height = images[0].size
    if any(image.size != (width, height) for image in images):
        raise BadRequest("a bag of crops needs images of one size")
    boxes = tile_boxes(width, height, crop)
    crops = [image.crop(box) for image in images for box in boxes]
    counted = None if progress is None else (lambda done, _total: progress(done // len(boxes), len(images)))
    embeddings = embed_crops(encoder, crops, resize, batch_size, counted)
    return embeddings.reshape(len(images), len(boxes), -1).mean(1)  # [n, D]


def check_crop_sizes(crop_sizes: Sequence[int], width: int, height: int) -> list[int]:
    """The distinct crop sizes, smallest first, for an image of ``width`` x ``height`` pixels as the model sees it;
    `BadRequest` naming any size that is not a whole number of pixels from 1 to the image's short side."""
    side = min(width, height)
    sizes = [int(s) for s in crop_sizes]
    small = [s for s in sizes if s < 1]
    if small:
        raise BadRequest(f"A crop size must be at least 1 pixel, not {', '.join(map(str, small))}.")
    large = [s for s in sizes if s > side]
    if large:
        raise BadRequest(f"Crop size {', '.join(map(str, large))} is larger than the image as the model sees it "
                         f"({width}x{height} px): choose sizes from 1 to {side}.")
    return sorted(set(sizes))


def crop_count(crop_sizes: Sequence[int], width: int, height: int) -> int:
    """Forward passes `bag_of_crops` makes for these sizes on an image of ``width`` x ``height`` (model pixels):
    every crop of every size below the short side, the full image, and the whole image as its own crop."""
    side = min(width, height)
    return sum(len(tile_boxes(width, height, s)) for s in set(crop_sizes) if 0 < s < side) + 2


@dataclass
class BagOfCrops:
    crop_sizes: list[int]  # pixels; the last is the full image
    cosine: list[float]  # cos(mean of crop embeddings, full-image embedding) per crop size
    num_crops: list[int]
    full_image: bool  # the last size is the whole image


def bag_of_crops(encoder: Encoder, image: Image.Image, crop_sizes: Sequence[int] = (32, 64, 96, 128),
                 progress: ProgressFn | None = None) -> BagOfCrops:
    """Embed crops of each size on their own and compare their average with the full-image embedding.

    Sizes are in pixels of the image as the model sees it; a size from its short side up is the whole image (shown
    once, last). Progress counts crops, once per batch of them."""
    seen = encoder.prepare(image)  # the image as the model sees it; crop sizes are in its pixels
    [full] = encoder.extract([seen])
    target = full.image_embedding  # [D]
    width, height = seen.size
    sizes = sorted({int(s) for s in crop_sizes if 0 < s < min(width, height)})
    counts = [len(tile_boxes(width, height, s)) for s in sizes]
    cosines = []
    for i, size in enumerate(sizes):
        done = sum(counts[:i])
        counted = None if progress is None else (lambda n, _total, done=done: progress(done + n, sum(counts)))
        crops = [seen.crop(box) for box in tile_boxes(width, height, size)]
        bag = embed_crops(encoder, crops, progress=counted).mean(0)  # [D]
        cosines.append(float(F.cosine_similarity(bag, target, dim=0)))
    # the whole image as its own single crop: the bag equals the full image
    [again] = encoder.extract([seen.crop((0, 0, width, height))])
    cosines.append(float(F.cosine_similarity(again.image_embedding, target, dim=0)))
    return BagOfCrops([*sizes, int(min(width, height))], cosines, [*counts, 1], True)


def bag_tables(result: BagOfCrops) -> np.ndarray:
    """[sizes, 3] rows of (crop size, crops, cosine) for export."""
    return np.array([[s, n, c] for s, n, c in zip(result.crop_sizes, result.num_crops, result.cosine)], dtype=np.float64)
