"""CAE (Chen et al. 2022): predict the encoder's own latents of hidden patches, then their pixels.

The model is `ssl_core.mim.cae.CAEModel` (regressor: 2 cross-attention blocks; decoder: 2 blocks; 50% of patches
hidden; alignment weight 2). Augmentation: a random resized crop (20-100% of the area) with mirroring. The file
holds the encoder's timm keys at top level plus ``mask_token``, ``regressor.*``, ``decoder.*`` and the
``patchlens_cae`` metadata (`ssl_core.mim.cae.load_cae` reads it back whole).
"""
from __future__ import annotations

import torch

from ssl_core.mim.cae import CAEConfig, CAEModel, cae_metadata, cae_state_dict
from ssl_core.train.common import Batch, Objective, StepOutput, TrainConfig, normalize, random_resized_crop, to_unit


class CAEObjective(Objective):
    """context autoencoder: latent regression with an alignment constraint, plus pixel decoding"""

    method = "cae"
    default_lr = 1e-3

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.image_size = config.image_size
        self.cae = CAEModel(CAEConfig(arch=config.arch, img_size=config.image_size))

    def forward(self, batch: Batch, step: int, total: int) -> StepOutput:
        x = normalize(random_resized_crop(to_unit(batch.images), self.image_size, scale=(0.2, 1.0)))
        out = self.cae.forward_loss(x)
        return StepOutput(out.loss, {"reconstruction": float(out.reconstruction.detach()),
                                       "alignment": float(out.alignment.detach())})

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return cae_state_dict(self.cae), cae_metadata(self.cae)
