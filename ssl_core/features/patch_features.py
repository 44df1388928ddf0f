"""What one forward pass tells about one image: `PatchFeatures`, and the bounded cache that shares them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from ssl_core.errors import BadRequest
from ssl_core.features.cache import LRUCache


@dataclass
class PatchFeatures:
    """What one forward pass tells about one image. Shared through the cache: treat as read-only."""

    patch_tokens: torch.Tensor  # [h, w, D] last layer, after the model's final norm
    prefix_tokens: torch.Tensor  # [P, D] class and register tokens, last layer (P = 0 for pooled models)
    image_embedding: torch.Tensor  # [D] the model's image embedding (class token or pooled, pre-logits)
    grid_hw: tuple[int, int]
    patch_size: int
    has_class_token: bool
    num_registers: int
    image: np.ndarray  # [H, W, 3] uint8: the processed image the tokens were computed on
    layer_tokens: dict[int, torch.Tensor] = field(default_factory=dict)  # {block: [h, w, D]} not normed
    layer_prefix_tokens: dict[int, torch.Tensor] = field(default_factory=dict)  # {block: [P, D]}
    attention: torch.Tensor | None = None  # [L, heads, T, T], T = P + h*w
    model_key: str = ""

    @property
    def num_prefix(self) -> int:
        return int(self.prefix_tokens.shape[0])

    @property
    def cls_token(self) -> torch.Tensor | None:  # [D]
        return self.prefix_tokens[0] if self.has_class_token else None

    @property
    def register_tokens(self) -> torch.Tensor:  # [R, D]
        start = 1 if self.has_class_token else 0
        return self.prefix_tokens[start:start + self.num_registers]

    def tokens(self, layer: int | None = None) -> torch.Tensor:
        """Patch tokens [h, w, D] of a block (None: the final, normed output)."""
        if layer is None:
            return self.patch_tokens
        if layer not in self.layer_tokens:
            raise BadRequest(f"layer {layer} was not extracted (have {sorted(self.layer_tokens)})")
        return self.layer_tokens[layer]

    def covers(self, layers: Iterable[int], attention: bool) -> bool:
        return set(layers) <= set(self.layer_tokens) and (self.attention is not None or not attention)

    def nbytes(self) -> int:
        tensors = [self.patch_tokens, self.prefix_tokens, self.image_embedding, *self.layer_tokens.values(),
                   *self.layer_prefix_tokens.values()] + ([self.attention] if self.attention is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors) + self.image.nbytes


FEATURE_CACHE: LRUCache[PatchFeatures] = LRUCache(max_size=2 * 1024**3, size_of=PatchFeatures.nbytes)
