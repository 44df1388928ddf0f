"""Where each block's heads look, on held-out scenes: `ssl_core.analyses.attention_range` (mean attention distance
relative to uniform attention, and query-key NMI) per block, heads averaged, over the first ``attention_images``
test scenes (never more than ``n_test``).

Park et al. (2023) and Xie et al. (2022): masked image modelling keeps local, query-specific heads up to the last
block (part-to-part), while contrastive and supervised models' late attention turns global and much the same for
every query (part-to-whole, "attention collapse into homogeneity"): a lower relative distance and a higher NMI in
the last block for MIM models.
"""
from __future__ import annotations

from dataclasses import dataclass

from ssl_core.analyses.attention_range import encoder_attention_range
from ssl_core.features.encoder import Encoder
from ssl_core.lab.config import LabConfig
from ssl_core.lab.scenes import as_images, heldout_scenes, scene_size
from ssl_core.progress import ProgressFn


@dataclass
class AttentionResult:
    """Per block, heads averaged: how far (relative to uniform attention) and how query-specific the attention is."""

    relative_distance: list[float]  # per block: 1 is as spread as uniform attention, 0 each patch attends to itself
    nmi: list[float]  # per block: query-key normalised mutual information (0: every query attends alike)
    distance_px: list[float]  # per block: mean attention distance in pixels of the scene as the model saw it
    heads: int
    images: int
    image_size: int
    seed: int

    @property
    def last(self) -> tuple[float, float]:
        """(relative distance, NMI) of the last block."""
        return self.relative_distance[-1], self.nmi[-1]


CHUNK = 8  # scenes whose attention maps are held at once, fewer where they would pass the encoder's attention limit


def attention_probe(encoder: Encoder, config: LabConfig, progress: ProgressFn | None = None) -> AttentionResult:
    """Attention range of ``encoder`` on the first ``config.attention_scenes`` test scenes."""
    size = scene_size(encoder)
    images = as_images(heldout_scenes(config, "test", size, config.attention_scenes))
    chunk = encoder.attention_batch((size, size), CHUNK)  # ViT-B at 224 px: 22 MB a scene; SigLIP-so400m at 378: 0.9 GB
    result = encoder_attention_range(encoder, images, chunk, progress)  # [L, heads] each
    return AttentionResult(result.relative_distance.mean(1).tolist(), result.nmi.mean(1).tolist(),
                           result.distance_px.mean(1).tolist(), int(result.nmi.shape[1]), result.images, size,
                           config.seed)


__all__ = ["AttentionResult", "attention_probe"]
