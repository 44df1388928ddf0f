"""Model table (`registry`), weights (`weights`) and PatchLens's own architecture (`zoo`, registered with timm on import)."""
from ssl_core.models import zoo  # noqa: F401  (registers patchlens_vit_tiny_p8 with timm)
