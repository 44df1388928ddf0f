"""Patch analyses: PCA, similarity, k-means parts, BagSSL, attention rollout and masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ssl_core.analyses.attention import mass_mask, rollout, rollout_map
from ssl_core.analyses.bagssl import bag_of_crops, embedding_vs_patch_mean, patch_to_embedding, tile_boxes
from ssl_core.analyses.parts import kmeans, part_maps
from ssl_core.analyses.pca import fit_pca, foreground_mask, pca_rgb
from ssl_core.analyses.similarity import patch_similarity


def test_pca_components_are_orthonormal_and_explain_decreasing_variance():
    x = torch.randn(500, 32) @ torch.randn(32, 32)
    fit = fit_pca(x, k=5)
    gram = fit.components @ fit.components.T
    assert torch.allclose(gram, torch.eye(5), atol=1e-5)
    assert (fit.explained_variance[:-1] >= fit.explained_variance[1:]).all()
    # the variance of the projections is the explained variance
    assert torch.allclose(fit.project(x).var(0), fit.explained_variance, rtol=1e-3)


def test_joint_pca_gives_one_colour_meaning_across_images():
    a, b = torch.randn(6, 7, 16), torch.randn(5, 4, 16)
    (map_a, map_b, map_a_again), _ = pca_rgb([a, b, a])
    assert map_a.shape == (6, 7, 3) and 0 <= map_a.min() and map_a.max() <= 1
    assert torch.equal(map_a, map_a_again)


def test_foreground_mask_from_first_component_finds_the_object():
    grid = torch.randn(10, 10, 8) * 0.05
    grid[3:7, 3:7] += torch.tensor([3.0] + [0.0] * 7)  # an "object" in the middle
    [mask] = foreground_mask([grid], threshold=0.5)
    assert mask[3:7, 3:7].all() and mask.sum() == 16
    [inverted] = foreground_mask([grid], threshold=0.5, invert=True)
    assert not inverted[3:7, 3:7].any()


def test_similarity_map_is_one_at_the_clicked_patch_and_matches_direct_cosine():
    grids = [torch.randn(4, 5, 12), torch.randn(3, 3, 12)]
    maps = patch_similarity(grids, source=0, row=2, col=3)
    assert maps[0][2, 3] == pytest.approx(1.0, abs=1e-6)
    direct = F.cosine_similarity(grids[1], grids[0][2, 3].expand_as(grids[1]), dim=-1)
    assert torch.allclose(maps[1], direct, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        patch_similarity(grids, 1, 5, 0)


def test_kmeans_labels_are_consistent_across_a_repeated_image_and_reproducible():
    centres = torch.randn(3, 16) * 5
    grid = (centres[torch.randint(0, 3, (6, 6))] + torch.randn(6, 6, 16) * 0.1)
    parts = part_maps([grid, grid.clone()], k=3, seed=0)
    assert torch.equal(parts.labels[0], parts.labels[1])
    assert int(parts.counts.sum()) == 72 and parts.counts_per_image.shape == (2, 3)
    again = part_maps([grid, grid.clone()], k=3, seed=0)
    assert torch.equal(parts.labels[0], again.labels[0])
    # clusters found = the planted centres (one label per centre)
    truth = torch.cdist(grid.reshape(-1, 16), centres).argmin(1)
    pairs = {(int(t), int(l)) for t, l in zip(truth, parts.labels[0].reshape(-1))}
    assert len(pairs) == 3


def test_separate_part_maps_cluster_each_image_as_if_it_were_alone():
    torch.manual_seed(0)
    centres = torch.randn(6, 16) * 5
    first = centres[torch.randint(0, 3, (6, 6))] + torch.randn(6, 6, 16) * 0.1  # parts 0-2
    second = centres[torch.randint(3, 6, (5, 7))] + torch.randn(5, 7, 16) * 0.1  # parts 3-5, another grid
    joint = part_maps([first, second], k=3, seed=0)
    separate = part_maps([first, second], k=3, seed=0, separate=True)
    assert joint.labels[0].unique().numel() < 3  # one k-means over both: each image gets fewer than its 3 parts
    for grid, labels in zip([first, second], separate.labels):
        assert torch.equal(labels, part_maps([grid], k=3, seed=0).labels[0])
        assert labels.unique().numel() == 3
    assert separate.centroids.shape == (2, 3, 16) and separate.counts_per_image.sum() == 71


def test_removing_the_position_mean_lets_parts_win_over_location():
    from ssl_core.analyses.parts import agreement_with_truth, remove_position_mean

    gen = torch.Generator().manual_seed(0)
    parts = torch.randn(3, 32, generator=gen)  # content: one direction per part
    place = torch.randn(6, 6, 32, generator=gen) * 4  # location: a strong vector per grid position
    truth = [torch.randint(0, 3, (6, 6), generator=gen) for _ in range(8)]
    grids = [parts[t] + place + 0.05 * torch.randn(6, 6, 32, generator=gen) for t in truth]
    odd = torch.randn(4, 5, 32, generator=gen)  # alone with its grid size: left as it is

    def mean_ari(gs):
        return np.mean([agreement_with_truth(l, t).ari for l, t in zip(part_maps(gs, 3, seed=0).labels, truth)])

    centred, count = remove_position_mean(grids + [odd])
    assert count == 8 and torch.equal(centred[-1], odd)
    torch.testing.assert_close(torch.stack(centred[:8]).mean(0), torch.zeros(6, 6, 32), atol=1e-5, rtol=0)
    assert mean_ari(grids) < 0.2 < 0.9 < mean_ari(centred[:8])


def test_kmeans_foreground_only_marks_background_minus_one():
    grid = torch.randn(4, 4, 8)
    fg = torch.zeros(4, 4, dtype=torch.bool)
    fg[1:3, 1:3] = True
    parts = part_maps([grid], k=2, foreground=[fg])
    assert (parts.labels[0][~fg] == -1).all() and (parts.labels[0][fg] >= 0).all()
    assert kmeans(torch.randn(10, 3), 10).labels.unique().numel() == 10


def test_embedding_vs_patch_mean_matches_a_hand_computation(tiny_encoder, image_333x517):
    [f] = tiny_encoder.extract([image_333x517], layers="all")
    agreement = embedding_vs_patch_mean(f)
    assert agreement.layers == [0, 1, 2, 3, 4, 5, -1]
    layer = 3
    cls = f.layer_prefix_tokens[layer][0]
    mean = f.layer_tokens[layer].reshape(-1, 192).mean(0)
    by_hand = float((cls @ mean) / (cls.norm() * mean.norm()))
    assert agreement.cosine[3] == pytest.approx(by_hand, abs=1e-5)
    final = float(F.cosine_similarity(f.image_embedding, f.patch_tokens.reshape(-1, 192).mean(0), dim=0))
    assert agreement.cosine[-1] == pytest.approx(final, abs=1e-5)
    pmap = patch_to_embedding(f)
    assert pmap.shape == f.grid_hw and pmap.max() <= 1 + 1e-6


def test_bag_of_crops_equals_the_full_image_when_the_crop_is_the_whole_image(tiny_encoder, image_333x517):
    result = bag_of_crops(tiny_encoder, Image.fromarray(image_333x517), crop_sizes=(32, 48))
    assert result.crop_sizes == [32, 48, 96]
    assert result.cosine[-1] == pytest.approx(1.0, abs=1e-5)
    assert result.num_crops[0] == len(tile_boxes(144, 96, 32)) == 5 * 3
    assert all(-1 <= c <= 1 for c in result.cosine)


def test_tiles_cover_the_image():
    boxes = tile_boxes(100, 70, 32)
    covered = np.zeros((70, 100), bool)
    for l, t, r, b in boxes:
        covered[t:b, l:r] = True
        assert r - l == b - t == 32
    assert covered.all()


def test_rollout_equals_a_hand_multiplied_product_for_two_layers():
    T = 5
    attention = torch.softmax(torch.randn(2, 3, T, T), dim=-1)  # [L=2, heads=3, T, T]
    eye = torch.eye(T)
    a1 = 0.5 * eye + 0.5 * attention[0].mean(0)
    a2 = 0.5 * eye + 0.5 * attention[1].mean(0)
    expected = (a2 / a2.sum(-1, keepdim=True)) @ (a1 / a1.sum(-1, keepdim=True))
    assert torch.allclose(rollout(attention), expected, atol=1e-6)
    grid_map = rollout_map(attention, num_prefix=1, grid_hw=(2, 2))
    assert torch.allclose(grid_map.reshape(-1), expected[0, 1:], atol=1e-6)


def test_mass_mask_keeps_the_requested_fraction():
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1])
    assert mass_mask(weights, 0.6).tolist() == [True, True, False, False]
    assert mass_mask(weights, 0.7).tolist() == [True, True, False, False]
    assert mass_mask(weights, 0.71).tolist() == [True, True, True, False]
    w = torch.rand(8, 9)
    mask = mass_mask(w, 0.5)
    kept = w[mask].sum() / w.sum()
    assert kept >= 0.5 and kept - w[mask].min() / w.sum() < 0.5  # the smallest set reaching the mass


def _attention_with_query_row(rows_per_head: list[list[float]], layers: int = 2, seed: int = 0) -> torch.Tensor:
    """A row-stochastic attention tensor [L, heads, T, T] whose last layer's first row per head is given; every
    other row (and every other layer) is random, so reading the wrong row or layer changes the answer."""
    heads, tokens = len(rows_per_head), len(rows_per_head[0])
    attention = torch.rand(layers, heads, tokens, tokens, generator=torch.Generator().manual_seed(seed))
    attention = attention / attention.sum(-1, keepdim=True)
    attention[-1, :, 0] = torch.tensor(rows_per_head)
    return attention


def test_attention_shares_split_the_class_tokens_row_as_computed_by_hand():
    from ssl_core.analyses.attention import attention_shares

    # tokens: [class, 3 registers, 2x3 patches] (T = 10); the class token's row in the last layer, per head:
    head_0 = [0.10, 0.05, 0.10, 0.15, 0.10, 0.10, 0.10, 0.10, 0.10, 0.10]  # class .10, registers .30, patches .60
    head_1 = [0.20, 0.25, 0.10, 0.05, 0.05, 0.05, 0.05, 0.05, 0.10, 0.10]  # class .20, registers .40, patches .40
    attention = _attention_with_query_row([head_0, head_1])
    shares = attention_shares(attention, has_class_token=True, num_registers=3)
    assert shares.class_token == pytest.approx(0.15)  # heads averaged
    assert shares.registers == pytest.approx(0.35)  # a slice one column early gives .40, one late .275
    assert shares.patches == pytest.approx(0.50)
    assert shares.class_token + shares.registers + shares.patches == pytest.approx(1.0)
    assert attention_shares(attention, True, 3, layer=1) == shares  # layer -1 is the last of two
    earlier = attention_shares(attention, True, 3, layer=0)
    assert earlier.registers == pytest.approx(float(attention[0, :, 0, 1:4].sum(-1).mean()))

    # no class token: the registers come first
    pooled = _attention_with_query_row([[0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1]])
    shares = attention_shares(pooled, has_class_token=False, num_registers=2)
    assert (shares.class_token, shares.registers, shares.patches) == pytest.approx((0.0, 0.5, 0.5))


def test_part_count_check_and_required_centring_refuse_what_kmeans_cannot_do():
    from ssl_core.analyses.parts import check_part_count, remove_position_mean
    from ssl_core.errors import BadRequest

    square, wide = torch.randn(3, 3, 8), torch.randn(2, 6, 8)
    assert check_part_count([square, wide], 21) == 21
    with pytest.raises(BadRequest, match="21 patches are selected, fewer than k = 22"):
        check_part_count([square, wide], 22)
    with pytest.raises(BadRequest, match="square: 9 patches .* fewer than k = 10 parts for the image on its own"):
        check_part_count([square, wide], 10, separate=True, names=["square", "wide"])
    masks = [torch.zeros(3, 3, dtype=torch.bool), torch.ones(2, 6, dtype=torch.bool)]
    with pytest.raises(BadRequest, match="12 patches are selected"):
        check_part_count([square, wide], 13, foreground=masks)
    assert remove_position_mean([square, wide])[1] == 0
    with pytest.raises(BadRequest, match="at least two images with the same patch grid"):
        remove_position_mean([square, wide], require=True)


def test_pca_of_each_image_fits_jointly_or_alone():
    from ssl_core.analyses.pca import pca_rgb_each

    a, b = torch.randn(6, 7, 16), torch.randn(5, 4, 16) * 3 + 1
    joint = pca_rgb_each([a, b], joint=True)
    together, fit = pca_rgb([a, b])
    assert all(torch.equal(j.rgb, t) for j, t in zip(joint, together))
    assert joint[0].explained == joint[1].explained == pytest.approx(float(fit.explained_ratio.sum()))
    alone = pca_rgb_each([a, b], joint=False, foreground_threshold=0.5)
    [single], _ = pca_rgb([b], foreground_mask([b], 0.5))
    assert torch.equal(alone[1].rgb, single) and alone[1].foreground.shape == (5, 4)
