"""PatchLens core: encoders, patch features and the analyses over them (no UI code here)."""
from ssl_core.data.images import ResizePolicy, load_image
from ssl_core.errors import CheckpointError, ImageLoadError, ModelUnavailable
from ssl_core.features.encoder import Encoder, PatchFeatures, load_encoder
from ssl_core.models.registry import ModelSpec, all_specs, default_model_name, resolve_spec

__all__ = [
    "Encoder", "PatchFeatures", "load_encoder", "ImageLoadError", "ResizePolicy", "load_image", "ModelSpec",
    "all_specs", "default_model_name", "resolve_spec", "CheckpointError", "ModelUnavailable",
]
