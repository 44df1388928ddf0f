"""PatchLens's own small encoders: one timm ViT architecture, trained on the parts world with five objectives.

The architecture is registered with timm by name (``patchlens_vit_tiny_p8``), so everything that takes a
timm model (``timm.create_model``, feature extraction, CKA, the Lab) takes it too.
"""
from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, _create_vision_transformer

from ssl_core.models.registry import ModelSpec, register_spec

TINY_P8 = dict(img_size=96, patch_size=8, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0)

default_cfgs = generate_default_cfgs({  # timm reads `default_cfgs` of the module that registers a model
    "patchlens_vit_tiny_p8": dict(input_size=(3, 96, 96), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                                  num_classes=0, license="apache-2.0"),
})


@register_model
def patchlens_vit_tiny_p8(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Tiny width, 6 blocks, patch 8 at 96 px (a 12x12 patch grid): PatchLens's bundled encoder size."""
    return _create_vision_transformer("patchlens_vit_tiny_p8", pretrained=False, **dict(TINY_P8, **kwargs))


BUNDLED_OBJECTIVES = {
    "patchlens-sup": ("supervised", "supervised classification of the object class"),
    "patchlens-dino": ("DINO", "self-distillation (joint-embedding, contrastive family)"),
    "patchlens-mae": ("MAE", "masked image modeling (pixels), with its decoder"),
    "patchlens-cae": ("CAE", "masked image modeling in representation space (latent regressor + decoder)"),
    "patchlens-dilemma": ("DILEMMA", "self-distillation + detecting tokens with wrong positional embeddings"),
}
# The app's default: the best all-round bundled model in docs/lab.md (highest object and part probes; its part maps
# follow the ground-truth parts, while the MAE's and CAE's last-block tokens cluster by grid position). The
# Reconstruct view defaults to patchlens-mae (`ssl_core.mim.mae.DEFAULT_MAE`).
DEFAULT_BUNDLED = "patchlens-sup"

for _name, (_family, _objective) in BUNDLED_OBJECTIVES.items():
    register_spec(ModelSpec(
        name=_name, arch="patchlens_vit_tiny_p8", source="bundled", family=f"PatchLens {_family}",
        objective=_objective, bundled_file=f"{_name}.safetensors", image_size=96,
    ))
