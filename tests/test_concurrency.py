"""Two views on one shared encoder at once: every forward pass holds the encoder (`Encoder.running`)."""
from __future__ import annotations

import threading

import numpy as np
import torch

from ssl_core import load_encoder
from ssl_core.analyses.context import context_drift
from ssl_core.features.facets import facet_tokens
from ssl_core.models.registry import ASSETS_DIR

ROUNDS = 50


def test_attention_capture_context_drift_and_facets_in_parallel_never_mix() -> None:
    encoder = load_encoder("patchlens-sup", device="cpu", cache=None)
    photo, scene = ASSETS_DIR / "examples" / "chelsea.jpg", ASSETS_DIR / "examples" / "partsworld_1.png"
    mask = np.zeros((12, 12), bool)
    mask[4:8, 4:8] = True
    [attention_reference] = encoder.extract([photo], attention=True)
    drift_reference = context_drift(encoder, scene, mask)
    [key_reference] = facet_tokens(encoder, [scene], "key", 2)
    errors: list[BaseException] = []

    def hammer(work) -> None:
        try:
            for _ in range(ROUNDS):
                work()
        except BaseException as err:  # noqa: BLE001  (reported by the main thread)
            errors.append(err)

    def attention() -> None:
        [f] = encoder.extract([photo], attention=True)
        assert f.attention.shape == attention_reference.attention.shape
        torch.testing.assert_close(f.attention, attention_reference.attention)

    def drift() -> None:
        np.testing.assert_allclose(context_drift(encoder, scene, mask), drift_reference, atol=1e-5)

    def facets() -> None:
        [k] = facet_tokens(encoder, [scene], "key", 2)
        torch.testing.assert_close(k.patch_tokens, key_reference.patch_tokens)

    threads = [threading.Thread(target=hammer, args=(work,)) for work in (attention, drift, facets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
