"""The Lab's held-out parts-world scenes and one encoder's final tokens of them.

Held-out set: scenes ``HELDOUT_OFFSET + seed * 2**32 + i`` (train) and ``HELDOUT_OFFSET + seed * 2**32 + 2**31 + i``
(test), never drawn by a training stream (`ssl_core.data.partsworld`). Patch-level probes use the first
``patch_train_images`` / ``patch_test_images`` of them, the part maps, CKA and MIM measures the first test scenes;
no measure draws beyond ``n_train`` / ``n_test`` (`heldout_seeds` caps its count).

Image policy: scenes are drawn at the exact square size the encoder's resize policy gives for its input size
(`scene_size`: the short side ``spec.image_size`` rounded to whole patches; 96 px for the bundled models, 224 for
the hub ViTs), so no image is resampled and the part labels line up with the patch grid. For a CKA between two
encoders the scenes are drawn at the larger of their sizes and the other encoder resizes them as it resizes any
image; an MAE / CAE gets them at its own native size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ssl_core.data import partsworld
from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder, PatchFeatures
from ssl_core.lab.config import LabConfig
from ssl_core.progress import ProgressFn

SPLIT_STRIDE = 1 << 32  # held-out scenes of Lab seed s start at HELDOUT_OFFSET + s * SPLIT_STRIDE
TEST_OFFSET = 1 << 31  # test scenes follow train scenes at this offset, so they do not depend on n_train


def heldout_seeds(config: LabConfig, split: str, count: int | None = None) -> list[int]:
    """Sample seeds of the held-out ``"train"`` or ``"test"`` scenes: the first ``count`` (default all), never more
    than the split holds (``n_train`` / ``n_test``)."""
    if split not in ("train", "test"):
        raise BadRequest(f"split must be 'train' or 'test', not {split!r}")
    first = partsworld.HELDOUT_OFFSET + config.seed * SPLIT_STRIDE + (TEST_OFFSET if split == "test" else 0)
    n = config.n_train if split == "train" else config.n_test
    return [first + i for i in range(n if count is None else min(count, n))]


def heldout_scenes(config: LabConfig, split: str, size: int, count: int | None = None) -> list[partsworld.PartsSample]:
    """The scenes of `heldout_seeds`, drawn at ``size`` px."""
    return [partsworld.sample(seed, size) for seed in heldout_seeds(config, split, count)]


def scene_size(encoder: Encoder) -> int:
    """The side scenes are drawn at for an encoder: its input size, rounded to whole patches (no resampling)."""
    side = int(encoder.spec.image_size)
    return encoder.policy.target_size(side, side)[0]


def as_images(scenes: Sequence[partsworld.PartsSample]) -> list[Image.Image]:
    return [Image.fromarray(s.image) for s in scenes]


@dataclass
class EncodedScenes:
    """One encoder's final-layer features of the held-out scenes: the shared input of most analyses."""

    encoder_name: str
    size: int  # scene side in pixels
    patch_size: int
    train: list[partsworld.PartsSample]
    test: list[partsworld.PartsSample]
    train_features: list[PatchFeatures]
    test_features: list[PatchFeatures]
    seed: int


def encode_scenes(encoder: Encoder, config: LabConfig, progress: ProgressFn | None = None) -> EncodedScenes:
    """Draw the held-out scenes at the encoder's size and extract their final tokens."""
    size = scene_size(encoder)
    train, test = heldout_scenes(config, "train", size), heldout_scenes(config, "test", size)
    total = len(train) + len(test)
    features = encoder.extract(as_images(train + test), batch_size=config.batch_size,
                               progress=None if progress is None else (lambda done, _n: progress(done, total)))
    return EncodedScenes(encoder.name, size, encoder.patch_size, train, test, features[:len(train)],
                         features[len(train):], config.seed)


def scene_part_labels(scenes: Sequence[partsworld.PartsSample], patch_size: int) -> np.ndarray:
    """Ground-truth part label of each patch: [n, h, w] int64 (`partsworld.patch_labels`; 0 = background)."""
    return partsworld.patch_labels(np.stack([s.part_map for s in scenes]), patch_size)


def patch_rows(features: Sequence[PatchFeatures]) -> np.ndarray:
    """Final patch tokens of several scenes as rows [n * h * w, D] (scene by scene, row-major)."""
    return torch.cat([f.patch_tokens.reshape(-1, f.patch_tokens.shape[-1]) for f in features]).numpy()
