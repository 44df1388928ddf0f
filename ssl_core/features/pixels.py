"""Pixel normalisation: the one place RGB images become the normalised tensors a ViT takes, and back.

Every model PatchLens runs was trained on images normalised per channel as ``(x - mean) / std`` with x in
[0, 1]; the mean and std default to ImageNet's (timm's ``IMAGENET_DEFAULT_MEAN`` / ``IMAGENET_DEFAULT_STD``,
as the MAE and CAE releases and PatchLens's bundled models use). Encoders pass their own (a timm model's
``pretrained_cfg``: CLIP and some others differ).
"""
from __future__ import annotations

from typing import Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

IMAGENET_MEAN: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)  # (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)  # (0.229, 0.224, 0.225)

Channels = Sequence[float] | torch.Tensor  # 3 values, or a tensor of 3 values in any shape


def _per_channel(values: Channels, like: torch.Tensor) -> torch.Tensor:
    """3 channel values as a [3, 1, 1] tensor of ``like``'s dtype and device (broadcasts over [..., 3, H, W])."""
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(3, 1, 1)


def normalize_pixels(pixels: torch.Tensor, mean: Channels = IMAGENET_MEAN, std: Channels = IMAGENET_STD,
                     ) -> torch.Tensor:
    """RGB pixels -> the normalised input of a ViT: ``(x - mean) / std`` per channel.

    pixels: [..., 3, H, W], float in [0, 1], or uint8 in [0, 255] (divided by 255 first) -> same shape, float.
    """
    x = pixels if pixels.is_floating_point() else pixels.float() / 255.0
    return (x - _per_channel(mean, x)) / _per_channel(std, x)


def denormalize_pixels(imgs: torch.Tensor, mean: Channels = IMAGENET_MEAN, std: Channels = IMAGENET_STD,
                       ) -> torch.Tensor:
    """The inverse of `normalize_pixels` (not clipped). imgs: [..., 3, H, W] float -> RGB in about [0, 1]."""
    return imgs * _per_channel(std, imgs) + _per_channel(mean, imgs)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize_pixels", "denormalize_pixels"]
