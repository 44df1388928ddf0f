"""How much a patch's representation depends on its context (CAE's representation-space view), for any ViT.

The encoder sees an image twice: whole, and with some patches dropped (their tokens removed before the first
block, as an MAE encoder sees them; the remaining tokens keep their own position embeddings). For every visible
patch, `context_drift` returns the cosine between its last-layer representation in the two passes: 1 means the
hidden patches did not matter to it, lower values mean its representation leans on what was removed.
Works for timm ``VisionTransformer`` s (absolute position embeddings); models whose attention depends on the
full grid (BEiT's relative position bias) cannot drop tokens and are refused.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from ssl_core.data.images import ImageSource
from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder
from ssl_core.features.pixels import normalize_pixels
from ssl_core.features.vit_tokens import encode_visible

if TYPE_CHECKING:
    from ssl_core.mim.cae import CAEModel


def drift_unsupported(encoder: Encoder) -> str | None:
    """Why context drift cannot run on this encoder, or None when it can."""
    if isinstance(encoder.model, VisionTransformer):
        return None
    return (f"{encoder.name} ({type(encoder.model).__name__}) cannot drop tokens: context drift needs a timm "
            f"VisionTransformer with absolute position embeddings")


def context_drift(encoder: Encoder, image: ImageSource | Image.Image, mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per patch, cos(representation with the hidden patches removed, representation in the whole image).

    mask: [h, w] bool over the encoder's patch grid for this image (True = removed). -> [h, w] float32, NaN
    at removed patches.
    """
    processed = encoder.prepare(image)
    grid = (processed.size[1] // encoder.patch_size, processed.size[0] // encoder.patch_size)
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    if mask.shape != grid:
        raise BadRequest(f"mask is {mask.shape[0]}x{mask.shape[1]} patches; {encoder.name} sees this image as "
                         f"{grid[0]}x{grid[1]} patches")
    if mask.all():
        raise BadRequest("the mask hides every patch: no visible patch is left to compare")
    unsupported = drift_unsupported(encoder)
    if unsupported:
        raise BadRequest(unsupported)
    imgs = encoder.to_tensor(processed)[None].to(encoder.device)  # [1, 3, H, W]
    hidden = torch.from_numpy(mask.reshape(1, -1)).to(encoder.device)  # [1, L]
    with encoder.running(grid) as vit:
        whole = encode_visible(vit, imgs)[0]  # [L, D]
        alone = encode_visible(vit, imgs, hidden)[0]  # [K, D]
        cosine = F.cosine_similarity(alone.float(), whole[~hidden[0]].float(), dim=-1)  # [K]
    drift = np.full(grid[0] * grid[1], np.nan, dtype=np.float32)
    drift[~mask.reshape(-1)] = cosine.cpu().numpy()
    return drift.reshape(grid)


def predicted_alignment(cae: CAEModel, image: ImageSource | Image.Image, mask: np.ndarray) -> np.ndarray:
    """CAE's representation-space prediction, per hidden patch: the cosine between the latent the regressor
    predicts from the visible patches and the encoder's own latent of that patch. -> [h, w], NaN where visible.

    ``cae`` is a `ssl_core.mim.cae.CAEModel`; the image is prepared like an MAE's (short side resized, centre crop).
    """
    from ssl_core.mim.reconstruct import prepare_image

    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(cae.grid_hw):
        raise BadRequest(f"mask is {mask.shape[0]}x{mask.shape[1]} patches; this CAE's grid is {cae.grid_hw[0]}x{cae.grid_hw[1]}")
    if not mask.any():
        return np.full(mask.shape, np.nan)
    device = next(cae.parameters()).device
    picture = prepare_image(cae, image).astype(np.float32) / 255.0  # [S, S, 3]
    imgs = normalize_pixels(torch.from_numpy(picture).permute(2, 0, 1))[None].to(device)  # [1, 3, S, S]
    hidden = torch.from_numpy(mask.reshape(1, -1)).to(device)
    with torch.inference_mode():
        predicted, target = cae.predict_masked_latents(imgs, hidden)  # [1, M, D] each, hidden patches in patch order
    cosine = F.cosine_similarity(predicted[0].float(), target[0].float(), dim=-1).cpu().numpy()
    out = np.full(mask.shape, np.nan)
    out[mask] = cosine
    return out
