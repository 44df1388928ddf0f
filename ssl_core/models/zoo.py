"""PatchLens's own small encoders: one timm ViT architecture, trained on the parts world with five objectives.

The architecture is registered with timm by name (``patchlens_vit_tiny_p8``), so everything that takes a
timm model (``timm.create_model``, feature extraction, CKA, the Lab) takes it too.
"""
from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, _create_vision_transformer

TINY_P8 = dict(img_size=96, patch_size=8, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0)

default_cfgs = generate_default_cfgs({  # timm reads `default_cfgs` of the module that registers a model
    "patchlens_vit_tiny_p8": dict(input_size=(3, 96, 96), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                                  num_classes=0, license="apache-2.0"),
})


@register_model
def patchlens_vit_tiny_p8(pretrained: bool = False, **kwargs: object) -> VisionTransformer:
    """ViT-Tiny width, 6 blocks, patch 8 at 96 px (a 12x12 patch grid): PatchLens's bundled encoder size."""
    return _create_vision_transformer("patchlens_vit_tiny_p8", pretrained=False, **dict(TINY_P8, **kwargs))
