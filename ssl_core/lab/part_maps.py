"""Do k-means part maps of patch tokens follow the ground-truth parts, or the grid position?

`part_map_agreement`: one spherical k-means over the patch tokens of several scenes
(`ssl_core.analyses.parts.part_maps`, k = the number of ground-truth part labels present) against the ground-truth
patch part labels: adjusted Rand index per scene (mean) and over all patches pooled (which also asks a cluster to
mean the same part in every scene), with a chance baseline (each scene's cluster labels shuffled over its patches);
and the same index against the patches' grid position (4 x 4 blocks of the grid), which tells clusters that follow
parts from clusters that follow location (tokens that carry their position strongly, as MIM models' often do), and
the ARI against parts of a k-means after each grid position's mean token is removed
(`ssl_core.analyses.parts.remove_position_mean`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ssl_core.analyses.parts import agreement_with_truth, part_maps, remove_position_mean
from ssl_core.errors import BadRequest
from ssl_core.lab.config import PICTURE, LabConfig
from ssl_core.lab.scenes import EncodedScenes, scene_part_labels


@dataclass
class PartMapResult:
    """k-means part maps of patch tokens against the ground-truth patch part labels."""

    ari_per_image: float  # mean over scenes of the adjusted Rand index
    ari_pooled: float  # over all patches of all scenes (clusters must mean the same part everywhere)
    chance_per_image: float  # the same with each scene's cluster labels shuffled over its patches
    chance_pooled: float
    position_ari_per_image: float  # the same clusters against the patches' grid position (4 x 4 blocks)
    centred_ari_per_image: float  # ARI per scene of a k-means after `remove_position_mean` (location taken out)
    k: int  # clusters = ground-truth labels present
    images: int
    patches: int
    seed: int
    example_ari: float  # the first scene's ARI
    example_image: np.ndarray | None = field(default=None, metadata=PICTURE)  # [H, W, 3] the first scene
    example_clusters: np.ndarray | None = field(default=None, metadata=PICTURE)  # [h, w] its k-means labels
    example_truth: np.ndarray | None = field(default=None, metadata=PICTURE)  # [h, w] its part labels


def _checked_truth(grids: Sequence[torch.Tensor], truth: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The label maps as int64 [h, w] arrays, one per grid [h, w, D] and of its shape."""
    if len(grids) != len(truth) or not grids:
        raise BadRequest(f"part_map_agreement needs one label map per grid, got {len(grids)} grids and {len(truth)} "
                         "maps")
    truth = [np.asarray(t, np.int64) for t in truth]
    for grid, labels in zip(grids, truth):
        if tuple(grid.shape[:2]) != labels.shape:
            raise BadRequest(f"a label map of shape {labels.shape} does not match its {tuple(grid.shape[:2])} grid")
    return truth


def part_map_agreement(grids: Sequence[torch.Tensor], truth: Sequence[np.ndarray], k: int | None = None, seed: int = 0,
                       images: Sequence[np.ndarray] | None = None) -> PartMapResult:
    """k-means (`ssl_core.analyses.parts.part_maps`) of patch grids [h, w, D] against label maps [h, w] of the same
    grids.

    ``k`` defaults to the number of distinct labels in ``truth``; ``images`` (optional, [H, W, 3] each) keeps the
    first for display.
    """
    truth = _checked_truth(grids, truth)
    k = int(k or len(np.unique(np.concatenate([t.ravel() for t in truth]))))
    clusters = [c.numpy() for c in part_maps(list(grids), k, seed).labels]  # [h, w] each
    per_image = [agreement_with_truth(c, t, seed + i) for i, (c, t) in enumerate(zip(clusters, truth))]
    position = [agreement_with_truth(c, grid_blocks(c.shape), seed).ari for c in clusters]
    pooled = agreement_with_truth(np.concatenate([c.ravel() for c in clusters]),
                                  np.concatenate([t.ravel() for t in truth]), seed)
    centred = part_maps(remove_position_mean(list(grids))[0], k, seed).labels
    centred_ari = np.mean([agreement_with_truth(c, t, seed).ari for c, t in zip(centred, truth)])
    return PartMapResult(
        float(np.mean([a.ari for a in per_image])), pooled.ari, float(np.mean([a.shuffled for a in per_image])),
        pooled.shuffled, float(np.mean(position)), float(centred_ari), k, len(grids), sum(t.size for t in truth),
        seed, per_image[0].ari, None if images is None else np.asarray(images[0]), clusters[0], truth[0])


def grid_blocks(grid_hw: tuple[int, int], blocks: int = 4) -> np.ndarray:
    """Each patch's block of a ``blocks`` x ``blocks`` split of the grid: [h, w] int64 labels."""
    h, w = grid_hw
    return (np.arange(h)[:, None] * blocks // h) * blocks + np.arange(w)[None, :] * blocks // w


def part_map_probe(scenes: EncodedScenes, config: LabConfig) -> PartMapResult:
    """`part_map_agreement` on the first ``part_map_images`` test scenes' final patch tokens."""
    chosen = scenes.test[:config.part_map_scenes]
    return part_map_agreement([f.patch_tokens for f in scenes.test_features[:len(chosen)]],
                              list(scene_part_labels(chosen, scenes.patch_size)), seed=config.seed,
                              images=[s.image for s in chosen])
