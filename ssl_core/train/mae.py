"""MAE (He et al. 2022): reconstruct the normalised pixels of 75% hidden patches from the visible 25%.

The model is `ssl_core.mim.mae.build_mae` (tiny decoder: 128 wide, 2 blocks, 4 heads; fixed sin-cos position
embeddings). Augmentation: a random resized crop (20-100% of the area, as MAE) with mirroring. The file keeps
the official layout (`ssl_core.mim.mae.official_state_dict`: encoder keys at top level, then the decoder's) and the
``patchlens_mae`` metadata, so it loads both as an encoder (`load_encoder`) and with its decoder (`load_mae`).
"""
from __future__ import annotations

import json
from dataclasses import asdict

import torch

from ssl_core.mim.mae import METADATA_KEY, build_mae, mae_config, official_state_dict
from ssl_core.train.common import Batch, Objective, StepOutput, TrainConfig, normalize, random_resized_crop, to_unit


class MAEObjective(Objective):
    """masked autoencoding of normalised pixels, 75% of patches hidden"""

    method = "mae"
    default_lr = 1e-3

    def __init__(self, config: TrainConfig, mask_ratio: float = 0.75):
        super().__init__()
        self.image_size = config.image_size
        self.mask_ratio = mask_ratio
        self.mae = build_mae(config.arch, decoder_dim=128, decoder_depth=2, decoder_heads=4, norm_pix_loss=True,
                             img_size=config.image_size)

    def forward(self, batch: Batch, step: int, total: int) -> StepOutput:
        x = normalize(random_resized_crop(to_unit(batch.images), self.image_size, scale=(0.2, 1.0)))
        loss, _, _ = self.mae.forward_loss(x, mask_ratio=self.mask_ratio)
        return StepOutput(loss)

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return official_state_dict(self.mae), {METADATA_KEY: json.dumps(asdict(mae_config(self.mae)))}
