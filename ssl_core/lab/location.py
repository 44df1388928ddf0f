"""DILEMMA's task as a probe: does a model's final token know that its position embedding is wrong?

`location_probe`: a random ``swap_ratio`` of each scene's patch tokens trade position embeddings in a cycle before
the blocks (`ssl_core.analyses.positions.misplaced_tokens`), and a linear probe on the final patch tokens says which
tokens were swapped. Accuracy against the majority rate, balanced accuracy and ROC AUC against 0.5, and the probe's
per-patch probability map on one scene. Needs a timm ``VisionTransformer`` with absolute position embeddings; others
are reported as skipped.

A swap can only be detected when it changes what the token shows (`ssl_core.analyses.positions.visible_swaps`): the
share of visible swaps and the ROC AUC on visible swaps against the unswapped tokens bound what any model can reach
on this data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ssl_core.analyses.linear_probe import fit_linear_probe, subsample
from ssl_core.analyses.positions import location_support, misplaced_tokens, roc_auc
from ssl_core.features.encoder import Encoder
from ssl_core.lab.config import PICTURE, LabConfig
from ssl_core.lab.probes import ProbeResult, score_probe
from ssl_core.lab.scenes import EncodedScenes, as_images
from ssl_core.progress import ProgressFn


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
    return LocationResult(result, roc_auc(probability, y_test), config.swap_ratio,
                          map_image=scenes.test[0].image, map_probability=probability[:L].reshape(grid),
                          map_swapped=y_test[:L].reshape(grid), visible_share=float(shown[y_test > 0].mean()),
                          auc_visible=roc_auc(probability[seen], y_test[seen]) if shown.any() else None)
