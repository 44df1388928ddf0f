"""The CKA paper's figure on held-out scenes: `ssl_core.analyses.cka.compare_encoders` between two encoders, layer by
layer, on the first ``cka_images`` test scenes (never more than ``n_test``)."""
from __future__ import annotations

from dataclasses import dataclass

from ssl_core.analyses.cka import CKAResult, compare_encoders
from ssl_core.features.encoder import Encoder
from ssl_core.lab.config import LabConfig
from ssl_core.lab.scenes import as_images, heldout_scenes, scene_size
from ssl_core.progress import ProgressFn


@dataclass
class CKAComparison:
    result: CKAResult  # the layer-by-layer map (images, samples, pooling inside)
    image_size: int  # side the scenes were drawn at
    seed: int

    @property
    def diagonal(self) -> list[float]:
        """CKA between the same block of both encoders (as deep as the shallower one)."""
        n = min(self.result.matrix.shape)
        return [float(self.result.matrix[i, i]) for i in range(n)]


def cka_probe(encoder_a: Encoder, encoder_b: Encoder, config: LabConfig, progress: ProgressFn | None = None,
              ) -> CKAComparison:
    """Layer-by-layer linear CKA between two encoders on the first ``config.cka_scenes`` test scenes, drawn at the
    larger of their scene sizes."""
    size = max(scene_size(encoder_a), scene_size(encoder_b))
    images = as_images(heldout_scenes(config, "test", size, config.cka_scenes))
    return CKAComparison(compare_encoders(encoder_a, encoder_b, images, progress=progress), size, config.seed)
