"""Mean attention distance and query-key NMI: against numpy and sklearn, on their limiting cases, on a real forward."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smooth_image
from PIL import Image
from scipy.stats import entropy
from sklearn.metrics import mutual_info_score

from ssl_core.analyses.attention_range import (
    attention_range,
    mean_attention_distance,
    query_key_nmi,
    uniform_attention_distance,
)

GRID = (3, 4)
PREFIX = 2


def random_attention(layers: int = 2, heads: int = 3, seed: int = 0, sharpness: float = 3.0) -> torch.Tensor:
    """[L, heads, T, T] softmax rows over T = PREFIX + 12 tokens."""
    tokens = PREFIX + GRID[0] * GRID[1]
    logits = torch.randn(layers, heads, tokens, tokens, generator=torch.Generator().manual_seed(seed)) * sharpness
    return logits.softmax(-1)


def with_prefix(patch_rows: torch.Tensor, prefix_share: float = 0.5) -> torch.Tensor:
    """[n, n] patch-to-patch rows -> [1, 1, T, T] with ``prefix_share`` of every row on the prefix tokens."""
    n = patch_rows.shape[0]
    full = torch.full((PREFIX + n, PREFIX + n), 1.0 / (PREFIX + n))
    full[PREFIX:, :PREFIX] = prefix_share / PREFIX
    full[PREFIX:, PREFIX:] = (1 - prefix_share) * patch_rows
    return full[None, None]


def test_mean_distance_matches_a_numpy_loop_over_queries_and_keys():
    attention = random_attention()
    h, w = GRID
    expected = np.zeros(attention.shape[:2])
    for layer in range(attention.shape[0]):
        for head in range(attention.shape[1]):
            rows = attention[layer, head, PREFIX:, PREFIX:].double().numpy()
            rows = rows / rows.sum(1, keepdims=True)
            total = 0.0
            for q in range(h * w):
                for k in range(h * w):
                    total += rows[q, k] * np.hypot(q // w - k // w, q % w - k % w)
            expected[layer, head] = total / (h * w)
    np.testing.assert_allclose(mean_attention_distance(attention, PREFIX, GRID).numpy(), expected, rtol=1e-10)


def test_nmi_matches_sklearn_mutual_information_and_scipy_entropies():
    attention = random_attention(seed=1)
    got = query_key_nmi(attention, PREFIX).numpy()
    n = GRID[0] * GRID[1]
    for layer in range(attention.shape[0]):
        for head in range(attention.shape[1]):
            rows = attention[layer, head, PREFIX:, PREFIX:].double().numpy()
            joint = rows / rows.sum(1, keepdims=True) / n  # p(q, k) with q uniform
            counts = np.rint(joint * 1e8).astype(np.int64)  # sklearn takes a contingency table of counts
            mutual = mutual_info_score(None, None, contingency=counts)
            expected = mutual / np.sqrt(np.log(n) * entropy(joint.sum(0)))
            assert got[layer, head] == pytest.approx(expected, rel=1e-5)


def test_limiting_cases_self_uniform_and_collapsed_attention():
    n = GRID[0] * GRID[1]
    to_itself, uniform = with_prefix(torch.eye(n)), with_prefix(torch.full((n, n), 1.0 / n))
    collapsed = torch.zeros(n, n)
    collapsed[:, 5] = 1.0  # every query looks at the same patch
    assert mean_attention_distance(to_itself, PREFIX, GRID).item() == pytest.approx(0.0)
    assert query_key_nmi(to_itself, PREFIX).item() == pytest.approx(1.0)
    assert mean_attention_distance(uniform, PREFIX, GRID).item() == pytest.approx(uniform_attention_distance(GRID))
    assert query_key_nmi(uniform, PREFIX).item() == pytest.approx(0.0, abs=1e-12)
    assert query_key_nmi(with_prefix(collapsed), PREFIX).item() == pytest.approx(0.0, abs=1e-12)
    # the share parked on the prefix does not change where the rest goes
    rows = random_attention(1, 1, seed=2)[0, 0, PREFIX:, PREFIX:]
    rows = rows / rows.sum(-1, keepdim=True)
    for measure in (lambda a: mean_attention_distance(a, PREFIX, GRID), lambda a: query_key_nmi(a, PREFIX)):
        assert measure(with_prefix(rows, 0.1)).item() == pytest.approx(measure(with_prefix(rows, 0.9)).item())


def test_range_of_a_real_forward_is_per_block_and_head_and_averages_images(tiny_encoder):
    shapes = [(96, 96), (96, 96), (96, 144)]
    images = [Image.fromarray(smooth_image(h, w, seed=s)) for s, (h, w) in enumerate(shapes)]
    features = tiny_encoder.extract(images, attention=True)
    result = attention_range(features)
    shape = (tiny_encoder.depth, features[0].attention.shape[1])
    assert result.distance.shape == result.relative_distance.shape == result.nmi.shape == shape
    assert result.images == 3 and result.blocks == list(range(tiny_encoder.depth))
    assert np.all((result.nmi >= 0) & (result.nmi <= 1)) and np.all(result.relative_distance > 0)
    np.testing.assert_allclose(result.distance_px, result.distance * tiny_encoder.patch_size)
    one = [attention_range([f]) for f in features]
    np.testing.assert_allclose(result.nmi, np.mean([r.nmi for r in one], 0), rtol=1e-6)
    f = features[2]  # a wider grid: relative = distance / uniform's on its own grid
    uniform = uniform_attention_distance(f.grid_hw)
    np.testing.assert_allclose(one[2].relative_distance, one[2].distance / uniform, rtol=1e-6)
    np.testing.assert_allclose(attention_range(iter(features)).nmi, result.nmi)  # a generator is read once
    np.testing.assert_allclose(one[0].nmi, query_key_nmi(features[0].attention, features[0].num_prefix).numpy())


def test_two_patches_the_smallest_grid_with_an_answer(tiny_encoder):
    """On a 1 x 2 grid the uniform distance (0.5 patch) and the NMI's normaliser (log 2) are below 1: nothing may
    be floored at 1; a single patch has no query-key information: NaN, not an error that would fail the view."""
    from dataclasses import replace

    [f] = tiny_encoder.extract([Image.fromarray(smooth_image(64, 64, seed=0))], attention=True)
    prefix = f.num_prefix  # the class token

    def on_two_patches(rows: torch.Tensor):  # [2, 2] patch rows -> a 1 x 2 grid's features, half of each row on prefix
        attention = torch.zeros(1, 1, prefix + 2, prefix + 2)
        attention[..., :prefix] = 0.5 / prefix
        attention[..., prefix:, prefix:] = 0.5 * rows
        return replace(f, grid_hw=(1, 2), attention=attention)

    uniform, to_itself = on_two_patches(torch.full((2, 2), 0.5)), on_two_patches(torch.eye(2))
    assert uniform_attention_distance((1, 2)) == pytest.approx(0.5)
    assert attention_range([uniform]).relative_distance.item() == pytest.approx(1.0)
    assert attention_range([to_itself]).nmi.item() == pytest.approx(1.0)
    one_patch = replace(f, grid_hw=(1, 1), attention=torch.full((2, 3, prefix + 1, prefix + 1), 1 / (prefix + 1)))
    reach = attention_range([one_patch])  # a view of a one-patch image still shows, its NMI undefined
    assert np.isnan(reach.nmi).all() and reach.nmi.shape == (2, 3) and np.all(reach.distance == 0)


def test_images_without_attention_are_refused(tiny_encoder):
    from ssl_core.errors import BadRequest

    [features] = tiny_encoder.extract([Image.fromarray(smooth_image(64, 64, seed=0))])
    with pytest.raises(BadRequest, match="attention"):
        attention_range([features])
    with pytest.raises(BadRequest, match="at least one image"):
        attention_range([])


def test_models_without_prefix_tokens_use_every_column():
    """SigLIP-style pooled models have no class token or registers: nothing is dropped."""
    n = GRID[0] * GRID[1]
    rows = random_attention(1, 2, seed=3)[..., PREFIX:, PREFIX:]
    rows = rows / rows.sum(-1, keepdim=True)  # [1, 2, n, n]: a prefix-free model's attention
    for head in range(2):
        embedded = with_prefix(rows[0, head], 0.3)
        assert mean_attention_distance(rows, 0, GRID)[0, head].item() == pytest.approx(
            mean_attention_distance(embedded, PREFIX, GRID).item())
        assert query_key_nmi(rows, 0)[0, head].item() == pytest.approx(query_key_nmi(embedded, PREFIX).item())
    assert query_key_nmi(torch.eye(n)[None, None], 0).item() == pytest.approx(1.0)
