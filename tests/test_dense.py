"""Dense-feature tools: guided upsampling, best-buddy correspondences, token norms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from scipy import ndimage

from ssl_core import load_encoder
from ssl_core.analyses.correspondence import best_buddies
from ssl_core.analyses.token_norm import outlier_cutoff, token_norms
from ssl_core.analyses.upsample import change_from_grid, upsample_difference, upsample_labels, upsample_map
from ssl_core.errors import BadRequest
from ssl_core.models.registry import ASSETS_DIR
from ssl_core.render.lines import correspondence_picture

PATCH = 16


def sharp_scene(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """An image of three flat-coloured regions with curved and slanted edges off the patch grid, and its labels."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), int)
    labels[(yy - 120) ** 2 + (xx - 135) ** 2 < 70 ** 2] = 1
    labels[(yy + 0.6 * xx > 250) & (labels == 0)] = 2
    colours = np.array([[0.9, 0.85, 0.2], [0.8, 0.1, 0.1], [0.1, 0.3, 0.8]])
    return (colours[labels] * 255).astype(np.uint8), labels


def boundary_error(mode: str) -> float:
    """Mean |upsampled - truth| within half a patch of a region edge, for features constant per region that
    were averaged over each patch (as a ViT's tokens mix the regions a patch covers)."""
    image, labels = sharp_scene()
    truth = np.eye(3, dtype=np.float32)[labels]  # [H, W, 3]
    s = image.shape[0] // PATCH
    grid = truth.reshape(s, PATCH, s, PATCH, 3).mean((1, 3))  # [s, s, 3]
    near_edge = ndimage.binary_dilation(ndimage.morphological_gradient(labels, size=2) > 0, iterations=PATCH // 2)
    return float(np.abs(upsample_map(grid, image, mode) - truth).sum(-1)[near_edge].mean())


def test_guided_upsampling_follows_edges() -> None:
    bilinear, guided = boundary_error("bilinear"), boundary_error("guided")
    assert guided * 3 <= bilinear, (guided, bilinear)


def test_upsampling_modes_agree_on_flat_maps_and_keep_shapes() -> None:
    image, _ = sharp_scene(64)
    flat = np.full((4, 4), 0.7, np.float32)
    for mode in ("nearest", "bilinear", "guided"):
        out = upsample_map(flat, image, mode)
        assert out.shape == (64, 64)
        np.testing.assert_allclose(out, 0.7, atol=1e-5)
    nearest = upsample_map(np.arange(16, dtype=np.float32).reshape(4, 4), image, "nearest")
    assert nearest[0, 0] == 0 and nearest[63, 63] == 15 and nearest[0, 16] == 1  # the raw grid, cell by cell
    assert upsample_map(np.zeros((4, 4, 5), np.float32), image, "guided").shape == (64, 64, 5)
    assert upsample_difference(flat, image).max() < 1e-5
    with pytest.raises(BadRequest, match="upsampling"):
        upsample_map(flat, image, "bicubic")


def test_best_buddies_of_mirrored_tokens_are_mirrors() -> None:
    tokens = torch.randn(6, 9, 32, generator=torch.Generator().manual_seed(0))
    pairs = best_buddies(tokens, tokens.flip(1))
    assert pairs.count == 54 and pairs.total == 54
    np.testing.assert_array_equal(pairs.patches_b[:, 0], pairs.patches_a[:, 0])
    np.testing.assert_array_equal(pairs.patches_b[:, 1], 8 - pairs.patches_a[:, 1])
    np.testing.assert_allclose(pairs.similarity, 1.0, atol=1e-5)
    top = best_buddies(tokens, tokens.flip(1), top=5)
    assert top.count == 5 and top.total == 54


def test_best_buddies_are_mutual_and_sorted() -> None:
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 7, 16, generator=generator), torch.randn(4, 6, 16, generator=generator)
    pairs = best_buddies(a, b)
    sim = torch.nn.functional.normalize(a.reshape(35, -1), dim=-1) @ torch.nn.functional.normalize(
        b.reshape(24, -1), dim=-1).T
    for (ra, ca), (rb, cb) in zip(pairs.patches_a, pairs.patches_b):
        i, j = ra * 7 + ca, rb * 6 + cb
        assert sim[i].argmax() == j and sim[:, j].argmax() == i
    assert np.all(np.diff(pairs.similarity) <= 0)
    expected = int(sum(int(sim[:, int(sim[i].argmax())].argmax()) == i for i in range(35)))
    assert pairs.total == expected


def test_best_buddies_on_a_photo_and_its_mirror() -> None:
    encoder = load_encoder("patchlens-sup", device="cpu", cache=None)
    photo = Image.open(ASSETS_DIR / "examples" / "chelsea.jpg")
    a, b = encoder.extract([photo, ImageOps.mirror(photo)])
    pairs = best_buddies(a.patch_tokens, b.patch_tokens)
    w = a.grid_hw[1]
    mirrored = (pairs.patches_b[:, 0] == pairs.patches_a[:, 0]) & (pairs.patches_b[:, 1] == w - 1 - pairs.patches_a[:, 1])
    assert mirrored.mean() > 0.3  # chance: 1 / 216
    print(pairs.describe(), f"; {mirrored.mean():.0%} map to their mirror")
    picture = correspondence_picture(a.image, b.image, pairs.patches_a[:10], pairs.patches_b[:10], a.patch_size)
    assert picture.shape[0] == 384 and picture.dtype == np.uint8


def test_token_norms_flag_planted_outliers() -> None:
    encoder = load_encoder("random-tiny", device="cpu", cache=None)
    [features] = encoder.extract([Image.open(ASSETS_DIR / "examples" / "partsworld_2.png")], layers=[2, 5])
    result = token_norms(features)
    assert result.blocks == [2, 5] and result.patch_norms.shape == (2, 12, 12)
    np.testing.assert_allclose(result.patch_norms[1], features.layer_tokens[5].norm(dim=-1).numpy(), rtol=1e-6)
    assert result.class_norms.shape == (2,) and result.register_norms.shape == (2, 0)
    norms = np.random.default_rng(0).normal(10.0, 1.0, 400)
    cutoff = outlier_cutoff(norms, 5.0)
    assert 14.0 < cutoff < 16.0  # median 10 + 5 sd
    planted = features.layer_tokens[5].clone()
    planted[3, 4] *= 20  # one artifact token
    features.layer_tokens[5] = planted
    flagged = token_norms(features, [5]).outliers[0]
    assert flagged[3, 4] and flagged.sum() == 1
    with pytest.raises(BadRequest):
        token_norms(features, threshold=0)


def test_change_from_grid_is_upsampled_minus_nearest_and_labels_follow_edges() -> None:
    image, labels = sharp_scene(64)
    grid = np.random.default_rng(0).random((4, 4)).astype(np.float32)
    change = change_from_grid(grid, image, "bilinear")
    np.testing.assert_allclose(change, upsample_map(grid, image, "bilinear") - upsample_map(grid, image, "nearest"))
    assert np.abs(change).max() > 0.05
    assert np.abs(change_from_grid(np.full((4, 4, 3), 0.3, np.float32), image, "guided")).max() < 1e-5
    image, labels = sharp_scene()
    s = image.shape[0] // PATCH
    majority = np.stack([(labels == k).reshape(s, PATCH, s, PATCH).mean((1, 3)) for k in range(3)]).argmax(0) - 1
    assert (upsample_labels(majority, image, "nearest") == np.kron(majority, np.ones((PATCH, PATCH)))).all()
    guided = upsample_labels(majority, image, "guided")  # labels -1, 0, 1 come back as themselves
    assert set(np.unique(guided)) == {-1, 0, 1} and guided.shape == labels.shape
    truth = labels - 1
    assert (guided == truth).mean() > (upsample_labels(majority, image, "nearest") == truth).mean()
