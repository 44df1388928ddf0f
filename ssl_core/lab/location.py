"""DILEMMA's task as a probe: does a model's final token know that its position embedding is wrong?

`location_probe`: a random ``swap_ratio`` of each scene's patch tokens trade position embeddings in a cycle before
the blocks (`forward_with_positions`: timm's patch embedding, the permuted position table, then the blocks; with no
swap it is ``model.forward_features``), and a linear probe on the final patch tokens says which tokens were swapped.
Accuracy against the majority rate, balanced accuracy and ROC AUC against 0.5, and the probe's per-patch probability
map on one scene. Needs a timm ``VisionTransformer`` with absolute position embeddings; others are reported as
skipped.

A swap can only be detected when it changes what the token shows: a patch that trades positions with one that looks
the same (two patches of a flat or periodic background) gives the model the input of an unswapped image. So the
swaps are also split by their pixels: *visible* when the two patches differ by more than `VISIBLE_DIFFERENCE` (mean
absolute difference, pixels in [0, 1]); the share of visible swaps and the ROC AUC on visible swaps against the
unswapped tokens bound what any model can reach on this data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ssl_core.features.encoder import Encoder
from ssl_core.features.vit_tokens import forward_with_positions, swap_positions
from ssl_core.lab.config import PICTURE, LabConfig
from ssl_core.lab.probes import ProbeResult, fit_linear_probe, score_probe, subsample
from ssl_core.lab.scenes import EncodedScenes, as_images
from ssl_core.progress import ProgressFn

VISIBLE_DIFFERENCE = 0.02  # mean absolute pixel difference (in [0, 1]) above which a swap changes what a token shows


def location_support(encoder: Encoder) -> str | None:
    """None when the location probe runs on this encoder, else why not."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(encoder.model, VisionTransformer):
        return f"{type(encoder.model).__name__} is not a timm VisionTransformer"
    if encoder.model.pos_embed is None:
        return "the model has no absolute position embedding to swap"
    return None


def visible_swaps(pixels: torch.Tensor, position_ids: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Which tokens show other pixels than the patch whose position they were given.

    pixels: [B, 3, H, W] in [0, 1]; position_ids: [B, L] (token i gets position ``position_ids[i]``) -> [B, L] bool,
    False for every unswapped token.
    """
    patches = F.unfold(pixels, patch_size, stride=patch_size).transpose(1, 2)  # [B, L, 3 * p * p]
    claimed = torch.gather(patches, 1, position_ids.unsqueeze(-1).expand_as(patches))  # [B, L, 3 * p * p]
    return (patches - claimed).abs().mean(-1) > VISIBLE_DIFFERENCE


def misplaced_tokens(encoder: Encoder, images: Sequence[Image.Image], ratio: float, generator: torch.Generator,
                     batch_size: int = 32, progress: ProgressFn | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final patch tokens [n, L, D] of same-size images with a ``ratio`` of tokens swapped, swapped [n, L] bool, and
    visible [n, L] bool (`visible_swaps`: the swapped tokens whose pixels differ from their claimed position's).

    The swaps are drawn image by image from ``generator``, so they do not depend on ``batch_size``.
    """
    out_tokens, out_swapped, out_visible = [], [], []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([encoder.to_tensor(image) for image in images[start:start + batch_size]])  # [B, 3, H, W]
        grid = (batch.shape[-2] // encoder.patch_size, batch.shape[-1] // encoder.patch_size)
        swaps = [swap_positions(grid[0] * grid[1], ratio, generator) for _ in range(batch.shape[0])]
        position_ids = torch.stack([ids for ids, _ in swaps])  # [B, L]
        with encoder.running(grid) as vit:
            tokens = forward_with_positions(vit, batch.to(encoder.device), position_ids)  # [B, P + L, D]
        out_tokens.append(tokens[:, encoder.num_prefix_tokens:].float().cpu())
        out_swapped.append(torch.stack([swapped for _, swapped in swaps]))
        pixels = batch * encoder.std + encoder.mean  # [B, 3, H, W] back in [0, 1]
        out_visible.append(visible_swaps(pixels, position_ids, encoder.patch_size))
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    return torch.cat(out_tokens), torch.cat(out_swapped), torch.cat(out_visible)


@dataclass
class LocationResult:
    """How well a linear probe finds tokens that carry another token's position embedding (DILEMMA's task)."""

    probe: ProbeResult | None  # None when skipped
    auc: float | None  # ROC AUC of the probe's probabilities (chance 0.5)
    swap_ratio: float
    skipped: str | None = None  # why the probe could not run on this encoder
    visible_share: float | None = None  # share of the swapped test tokens whose pixels differ from their position's
    auc_visible: float | None = None  # ROC AUC on those swaps against the unswapped tokens
    map_image: np.ndarray | None = field(default=None, metadata=PICTURE)  # [H, W, 3] the scene of the map
    map_probability: np.ndarray | None = field(default=None, metadata=PICTURE)  # [h, w] P(swapped) per patch
    map_swapped: np.ndarray | None = field(default=None, metadata=PICTURE)  # [h, w] bool, the true swaps


def location_probe(encoder: Encoder, scenes: EncodedScenes, config: LabConfig, progress: ProgressFn | None = None,
                   ) -> LocationResult:
    """Swap a ``swap_ratio`` of position embeddings in each scene, probe the final tokens for the swapped ones,
    and map the probe's probabilities on the first test scene."""
    from sklearn.metrics import roc_auc_score

    reason = location_support(encoder)
    if reason is not None:
        return LocationResult(None, None, config.swap_ratio, skipped=reason)
    train, test = scenes.train[:config.patch_train_scenes], scenes.test[:config.patch_test_scenes]
    n_train, n_test = len(train), len(test)
    images = as_images(train + test)
    generator = torch.Generator().manual_seed(config.seed)
    tokens, swapped, visible = misplaced_tokens(encoder, images, config.swap_ratio, generator, config.batch_size,
                                                progress)
    x, y = tokens.flatten(0, 1).numpy(), swapped.flatten().numpy()  # [(n + m) * L, D], [(n + m) * L]
    split = n_train * tokens.shape[1]
    keep = subsample(split, config.max_probe_patches, config.seed)
    probe = fit_linear_probe(x[keep], y[keep], config.seed, config.max_iter)
    x_test, y_test = x[split:], y[split:]
    result = score_probe(probe, x_test, y_test, "location probe",
                         "swapped position embedding of each patch from its token", len(keep), (n_train, n_test),
                         config.seed)
    probability = probe.predict_proba(np.asarray(x_test, np.float64))[:, 1]  # [m * L]
    shown = visible.flatten().numpy()[split:]  # [m * L]
    seen = ~y_test.astype(bool) | shown  # unswapped tokens and the visible swaps
    grid = scenes.test_features[0].grid_hw
    L = grid[0] * grid[1]
    return LocationResult(result, float(roc_auc_score(y_test, probability)), config.swap_ratio,
                          map_image=scenes.test[0].image, map_probability=probability[:L].reshape(grid),
                          map_swapped=y_test[:L].reshape(grid), visible_share=float(shown[y_test > 0].mean()),
                          auc_visible=float(roc_auc_score(y_test[seen], probability[seen])) if shown.any() else None)
