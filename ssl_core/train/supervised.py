"""Supervised training: the object class of the main object, from a linear head on the class token.

Augmentation: a random resized crop (60-100% of the area, so the object stays in view) with mirroring and a
light colour jitter. Label smoothing 0.1. The head is dropped at save: the file holds the encoder only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.data.partsworld import CLASS_NAMES
from ssl_core.train.common import (
    Batch,
    Objective,
    StepOutput,
    TrainConfig,
    build_encoder,
    color_jitter,
    normalize,
    random_resized_crop,
    to_unit,
)


class SupervisedObjective(Objective):
    """cross-entropy on the object class, linear head on the class token"""

    method = "supervised"
    default_lr = 1e-3

    def __init__(self, config: TrainConfig, num_classes: int = len(CLASS_NAMES)):
        super().__init__()
        self.image_size = config.image_size
        self.encoder = build_encoder(config)
        self.head = nn.Linear(self.encoder.embed_dim, num_classes)

    def forward(self, batch: Batch, step: int, total: int) -> StepOutput:
        x = random_resized_crop(to_unit(batch.images), self.image_size, scale=(0.6, 1.0))
        x = normalize(color_jitter(x, brightness=0.2, contrast=0.2, saturation=0.2, p=0.5, p_gray=0.0))
        logits = self.head(self.encoder(x)).float()  # [B, classes]
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=0.1)
        accuracy = (logits.argmax(-1) == batch.labels).float().mean()
        return StepOutput(loss, {"accuracy": float(accuracy)})

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return self.encoder.state_dict(), {}
