"""The layer sweep: per-block part probe, part-map ARI, BagSSL cosine, CKA to the last block and attention range."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_core import load_encoder
from ssl_core.analyses.attention_range import attention_range
from ssl_core.analyses.cka import pool_tokens
from ssl_core.lab import LabConfig
from ssl_core.lab.layers import block_view, encode_all_blocks, layer_sweep
from ssl_core.lab.scenes import as_images, heldout_scenes
from ssl_core.render.figures import layer_sweep_figure

CONFIG = LabConfig(n_train=16, n_test=8, patch_train_images=16, patch_test_images=8, part_map_images=8)


def numpy_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s linear CKA, written out in numpy: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("patchlens-sup", device="cpu", cache=None)


def test_sweep_against_independent_references(encoder) -> None:
    seen = []
    sweep = layer_sweep(encoder, CONFIG, progress=lambda *step: seen.append(step))
    assert sweep.blocks == list(range(encoder.depth)) and sweep.test_scenes == 8 and sweep.train_scenes == 16
    # one count over both extractions: 16 + 8 scenes with every block's tokens, then 8 with attention
    assert seen[-1] == (32, 32) and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:])) and (24, 32) in seen
    assert sweep.cka_to_last[-1] == pytest.approx(1.0)
    scenes = encode_all_blocks(encoder, CONFIG)
    for block in (0, 3):
        rows = [torch.cat([pool_tokens(f.layer_tokens[b]) for f in scenes.test_features]).double().numpy()
                for b in (block, encoder.depth - 1)]
        assert sweep.cka_to_last[block] == pytest.approx(numpy_linear_cka(*rows), abs=1e-5)
        cosines = [float(F.cosine_similarity(f.layer_prefix_tokens[block][0],
                                             f.layer_tokens[block].reshape(-1, encoder.embed_dim).mean(0), dim=0))
                   for f in scenes.test_features]
        assert sweep.bag_cosine[block] == pytest.approx(np.mean(cosines), abs=1e-5)
    assert all(0 <= v <= 1 for v in sweep.part_probe + sweep.cka_to_last)
    assert max(sweep.part_probe) > sweep.part_probe_chance + 0.1  # trained tokens know parts
    assert len(set(np.round(sweep.part_probe, 6))) > 1  # each block's own tokens were probed
    assert len(layer_sweep_figure(sweep).data) == 6
    features = encoder.extract(as_images(heldout_scenes(CONFIG, "test", 96, 8)), attention=True)
    by_head = attention_range(features)  # [L, heads]
    np.testing.assert_allclose(sweep.attention_distance, by_head.relative_distance.mean(1), rtol=1e-6)
    np.testing.assert_allclose(sweep.attention_nmi, by_head.nmi.mean(1), rtol=1e-6)
    assert sweep.rows()[0][-2:] == [f"{sweep.attention_distance[0]:.3f}", f"{sweep.attention_nmi[0]:.3f}"]


def test_block_view_swaps_in_the_block_tokens(encoder) -> None:
    scenes = encode_all_blocks(encoder, CONFIG)
    view = block_view(scenes, 2)
    assert torch.equal(view.test_features[0].patch_tokens, scenes.test_features[0].layer_tokens[2])
    assert not torch.equal(scenes.test_features[0].patch_tokens, view.test_features[0].patch_tokens)
