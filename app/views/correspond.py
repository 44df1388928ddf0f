"""Best buddies between two images: mutual nearest patches (`ssl_core.analyses.correspondence`), drawn as lines.

No Gradio and no math here.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from app.views.inspect import BLOCK_OUTPUT, token_grids, tokens_label
from app.views.result import ViewResult, file_stem, untrained_warning
from ssl_core.analyses.correspondence import best_buddies
from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder
from ssl_core.render.lines import correspondence_picture


def best_buddies_view(encoder: Encoder, images: Sequence[Image.Image], names: Sequence[str], top: int,
                      layer: int | None = None, facet: str = BLOCK_OUTPUT) -> ViewResult:
    """The ``top`` most similar best buddies of two images (tokens of ``layer`` / ``facet`` as in Inspect), as lines
    between their patches, with how many there are and their mean cosine."""
    if len(images) != 2:
        raise BadRequest("Best buddies need two images: choose image A and image B.")
    features, grids = token_grids(encoder, images, layer, facet)
    found = best_buddies(grids[0], grids[1], top=int(top))
    picture = correspondence_picture(features[0].image, features[1].image, found.patches_a, found.patches_b,
                                     encoder.patch_size)
    notes = (f"**{found.count} best buddies shown** (of {found.total}) · mean cosine "
             f"**{found.mean_similarity:.3f}** · {names[0]} ↔ {names[1]} · tokens: {tokens_label(layer, facet)}. "
             f"{found.describe()}. Lines join mutual nearest patches, most similar first (palette order).")
    return ViewResult(pictures={"lines": picture}, notes=notes, warnings=untrained_warning(encoder),
                      numbers={"patches_a": found.patches_a, "patches_b": found.patches_b,
                               "similarity": found.similarity, "grid_a": np.array(found.grid_a),
                               "grid_b": np.array(found.grid_b), "total": np.array(found.total)},
                      name=file_stem(encoder.name, "best-buddies", *(str(n).rsplit(".", 1)[0] for n in names)))


__all__ = ["best_buddies_view"]
