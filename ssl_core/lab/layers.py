"""Which layer? One encoder's blocks side by side on the held-out parts world.

For every block b (the residual stream after it, as ``PatchFeatures.layer_tokens[b]``):

* part probe: the Lab's linear probe of each patch's part label (`ssl_core.lab.probes.part_probe`) from block b's
  patch tokens (balanced accuracy);
* part-map ARI: the Lab's k-means part maps against the ground-truth parts (`ssl_core.lab.part_maps`), per scene;
* BagSSL cosine: cos(class token, mean of the patch tokens) at block b, averaged over the scenes
  (`ssl_core.analyses.bagssl.embedding_vs_patch_mean`; NaN for models without a class token);
* CKA to the last block: linear CKA between block b's and the last block's tokens, each scene's grid pooled to
  4 x 4 rows (`ssl_core.analyses.cka`);
* attention distance and query-key NMI: how far (relative to uniform attention) and how query-specific block b's
  attention is, heads averaged (`ssl_core.lab.attention`, on the first ``attention_images`` test scenes).

The probes use the Lab's patch-probe scenes (``patch_train_images`` / ``patch_test_images``), the part maps the
first ``part_map_images`` test scenes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from ssl_core.analyses.bagssl import embedding_vs_patch_mean
from ssl_core.analyses.cka import linear_cka, pool_tokens
from ssl_core.features.encoder import Encoder, PatchFeatures
from ssl_core.lab.attention import attention_probe
from ssl_core.lab.config import LabConfig
from ssl_core.lab.part_maps import part_map_probe
from ssl_core.lab.probes import part_probe
from ssl_core.lab.scenes import EncodedScenes, as_images, heldout_scenes, scene_size
from ssl_core.progress import ProgressFn, ProgressTracker

SWEEP_COLUMNS = ["block", "part probe (balanced)", "part-map ARI", "cos(class, mean patch)", "CKA to last",
                 "attention distance / uniform", "query-key NMI"]


@dataclass
class LayerSweep:
    """Per block of one encoder: how well its tokens know parts, and how they relate to the image embedding and
    to the last block."""

    model: str
    blocks: list[int]
    part_probe: list[float]  # balanced accuracy (chance: `part_probe_chance`)
    part_map_ari: list[float]  # mean per scene
    bag_cosine: list[float]  # cos(class token, mean patch token); NaN without a class token
    cka_to_last: list[float]
    attention_distance: list[float]  # mean attention distance relative to uniform attention's (1: as spread)
    attention_nmi: list[float]  # query-key normalised mutual information (0: every query attends alike)
    part_probe_chance: float
    train_scenes: int
    test_scenes: int
    seed: int

    def rows(self) -> list[list[str]]:
        return [[str(b), *("—" if np.isnan(v) else f"{v:.3f}" for v in values)]
                for b, *values in zip(self.blocks, *self.curves().values())]

    def curves(self) -> dict[str, list[float]]:
        """The six curves by name (the column names of `SWEEP_COLUMNS`), one value per block."""
        return dict(zip(SWEEP_COLUMNS[1:], (self.part_probe, self.part_map_ari, self.bag_cosine, self.cka_to_last,
                                            self.attention_distance, self.attention_nmi)))

    @property
    def best_part_block(self) -> int:
        return self.blocks[int(np.argmax(self.part_probe))]


def block_view(scenes: EncodedScenes, block: int) -> EncodedScenes:
    """The scenes with block ``block``'s patch tokens in place of the final ones (for the Lab's functions)."""
    def at(features: list[PatchFeatures]) -> list[PatchFeatures]:
        return [replace(f, patch_tokens=f.layer_tokens[block]) for f in features]
    return replace(scenes, train_features=at(scenes.train_features), test_features=at(scenes.test_features))


def encode_all_blocks(encoder: Encoder, config: LabConfig, progress: ProgressFn | None = None) -> EncodedScenes:
    """The patch-probe train scenes and the test scenes the probes and part maps use, with every block's tokens."""
    size = scene_size(encoder)
    train = heldout_scenes(config, "train", size, config.patch_train_scenes)
    test = heldout_scenes(config, "test", size, max(config.patch_test_scenes, config.part_map_scenes))
    features = encoder.extract(as_images(train + test), layers="all", batch_size=config.batch_size, progress=progress)
    return EncodedScenes(encoder.name, size, encoder.patch_size, train, test, features[:len(train)],
                         features[len(train):], config.seed)


def cka_to_last(features: Sequence[PatchFeatures], blocks: Sequence[int]) -> list[float]:
    """Linear CKA of each block's pooled tokens with the last block's: rows [n * 16, D] per block."""
    rows = {b: torch.cat([pool_tokens(f.layer_tokens[b]) for f in features]) for b in blocks}  # [n*16, D]
    return [linear_cka(rows[b], rows[blocks[-1]]) for b in blocks]


def layer_sweep(encoder: Encoder, config: LabConfig | None = None, progress: ProgressFn | None = None) -> LayerSweep:
    """The sweep of the module docstring over every block of ``encoder``."""
    config = config or LabConfig(n_train=80, n_test=40)
    encoded = config.patch_train_scenes + max(config.patch_test_scenes, config.part_map_scenes)
    tracker = ProgressTracker(encoded + config.attention_scenes, progress)
    scenes = encode_all_blocks(encoder, config, tracker.stage(encoded))
    blocks = list(range(encoder.depth))
    probes = [part_probe(block_view(scenes, b), config) for b in blocks]
    maps = [part_map_probe(block_view(scenes, b), config).ari_per_image for b in blocks]
    agreements = [embedding_vs_patch_mean(f) for f in scenes.test_features]
    bag = (np.mean([a.cosine[:len(blocks)] for a in agreements], axis=0).tolist() if encoder.has_class_token
           else [float("nan")] * len(blocks))
    attention = attention_probe(encoder, config, tracker.stage(config.attention_scenes))
    tracker.finish()
    return LayerSweep(encoder.name, blocks, [p.balanced_accuracy for p in probes], maps, bag,
                      cka_to_last(scenes.test_features, blocks), attention.relative_distance, attention.nmi,
                      probes[0].chance_balanced, len(scenes.train), len(scenes.test), config.seed)


__all__ = ["SWEEP_COLUMNS", "LayerSweep", "layer_sweep", "block_view", "encode_all_blocks", "cka_to_last"]
