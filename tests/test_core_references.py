"""The core's numbers checked against independent references (numpy, scikit-learn, hand computation), written to
kill the mutants that `scripts/mutation.sh` found surviving: wrong slices, inverted comparisons, dropped
normalisations, off-by-one grids and changed defaults. See docs/development.md."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smooth_image
from PIL import Image

from ssl_core.analyses.attention import class_attention_map, mass_mask, query_attention_to_patches, rollout, rollout_map
from ssl_core.analyses.cka import CKAResult
from ssl_core.analyses.correspondence import best_buddies
from ssl_core.analyses.pca import _border, fit_pca, foreground_mask, pca_rgb
from ssl_core.analyses.similarity import patch_similarity
from ssl_core.analyses.token_norm import token_norms
from ssl_core.errors import AttentionUnavailableError, BadRequest
from ssl_core.features.attention_hooks import check_attention
from ssl_core.features.cache import LRUCache
from ssl_core.features.encoder import Encoder, PatchFeatures, build_model, split_on_oom
from ssl_core.features.patch_table import PatchTable, grid_positions, normalize_rows
from ssl_core.features.pixels import denormalize_pixels, normalize_pixels
from ssl_core.lab import (
    CKAComparison,
    EncoderLab,
    KNNResult,
    LabConfig,
    LabReport,
    LocationResult,
    MIMResult,
    PartMapResult,
    ProbeResult,
)
from ssl_core.lab.findings import (
    MARGIN,
    _verdict,
    bagssl_finding,
    cka_finding,
    dilemma_finding,
    findings,
    mim_findings,
    part_aware_finding,
    part_map_finding,
    untrained_findings,
)
from ssl_core.models.registry import resolve_spec, with_image_size
from ssl_core.search.patch_index import PatchIndex
from ssl_core.search.vectors import (
    AUTO_EXACT_LIMIT,
    exact_search_torch,
    ivf_list_count,
    make_vector_index,
    recall_at_k,
    resolve_kind,
)


# ------------------------------------------------------------------------------------------ lab: verdicts and claims
def test_verdict_reads_the_sign_of_the_difference_and_calls_only_smaller_differences_ties():
    assert _verdict(0.3) == "holds" and _verdict(-0.3) == "does not hold"
    assert _verdict(MARGIN / 2) == _verdict(-MARGIN / 2) == _verdict(0.0) == "a tie here"
    assert _verdict(MARGIN) == "holds" and _verdict(-MARGIN) == "does not hold"  # "smaller than the margin" only
    assert _verdict(0.5, "above", "below") == "above" and _verdict(-0.5, "above", "below") == "below"


def _probe(balanced: float) -> ProbeResult:
    return ProbeResult("probe", "", 0.5, balanced, 0.4, 0.25, 4, 30, 20, 30, 20, 0, True)


def _lab(name: str, class_token: float | None = 0.5, bag: float = 0.5, trained: bool = True,
         part_map: tuple[float, float, float, float] = (0.4, 0.0, 0.05, 0.4), paradigm: str = "joint-embedding",
         obj: float = 0.5, part: float = 0.3, auc: float | None = 0.5, mim: MIMResult | None = None) -> EncoderLab:
    """part_map: (ARI per scene, its chance, ARI against grid position, ARI with the position mean removed)."""
    knn = KNNResult(class_token, 0.4, bag, 0.25, 20, 0.07, 48, 4, 30, 20, 0)
    ari, chance, position, centred = part_map
    part_map = PartMapResult(ari, 0.05, chance, 0.0, position, centred, 16, 20, 20 * 144, 0, ari)
    return EncoderLab(name, name, f"{name}@test", trained, paradigm, 96, _probe(obj), _probe(part), knn,
                      LocationResult(_probe(0.5), auc, 0.15), part_map, mim, 0.1)


def test_bagssl_finding_counts_the_trained_class_token_models_whose_bag_is_within_005():
    models = [_lab("close", 0.60, 0.62), _lab("far", 0.60, 0.40), _lab("pooled", None, 0.5),
              _lab("untrained", 0.30, 0.30, trained=False)]
    text = bagssl_finding(LabReport(LabConfig(n_train=30, n_test=20), models, [], 1.0))
    assert "close 0.600 / 0.400 / 0.620; far 0.600 / 0.400 / 0.400." in text  # class token / patch mean / bag
    assert text.endswith("Bag within 0.05 of the class token for 1 of 2 models (close).")
    assert "pooled" not in text and "untrained" not in text
    report = LabReport(LabConfig(n_train=30, n_test=20), models, [], 1.0)
    assert text in findings(report)
    assert bagssl_finding(LabReport(LabConfig(n_train=30, n_test=20), models[2:], [], 1.0)) is None
    two = bagssl_finding(_report(_lab("a", 0.5, 0.53), _lab("b", 0.5, 0.47)))
    assert "a 0.500 / 0.400 / 0.530; b 0.500 / 0.400 / 0.470." in two and two.endswith("for 2 of 2 models (a, b).")
    assert bagssl_finding(_report(_lab("far", 0.2, 0.9))).endswith("for 0 of 1 models.")


def _report(*encoders: EncoderLab) -> LabReport:
    return LabReport(LabConfig(n_train=30, n_test=20), list(encoders), [], 1.0)


def test_part_map_finding_counts_models_above_chance_and_names_those_that_follow_position():
    text = part_map_finding(_report(
        _lab("parts", part_map=(0.50, 0.00, 0.20, 0.45)),  # well above chance, parts over position
        _lab("grid", part_map=(0.15, 0.10, 0.60, 0.30)),  # 0.05 over its chance: not counted; follows position
        _lab("random", part_map=(0.90, 0.00, 0.00, 0.90), trained=False)))  # untrained: left out
    assert "0.1 over shuffled labels) for 1 of 2 trained models; best parts at 0.500." in text
    assert text.endswith("(ARI against 4 x 4 grid blocks vs against parts): grid (0.600 vs 0.150; 0.300 against "
                         "parts once each position's mean is removed).")
    plain = part_map_finding(_report(_lab("parts", part_map=(0.50, 0.00, 0.20, 0.45)),
                                     _lab("tied", part_map=(0.30, 0.25, 0.30, 0.30))))
    assert "for 1 of 2 trained models; best parts at 0.500." in plain and plain.endswith("0.500.")
    assert part_map_finding(_report(_lab("random", trained=False))) is None


def _cka(a: str, b: str, diagonal: list[float]) -> CKAComparison:
    labels = [f"block {i}" for i in range(len(diagonal))]
    return CKAComparison(CKAResult(np.diag(diagonal), a, b, labels, labels, 320, 20, "grid", 4, False), 96, 0)


@pytest.mark.parametrize(("diagonal", "expected"), [
    ([0.5, 0.9, 0.9, 0.2], "0.50, 0.90, 0.90, 0.20 — holds (first block above the last)"),  # first vs last only
    ([0.3, 0.1, 0.5, 0.2], "0.30, 0.10, 0.50, 0.20 — holds (first block above the last)"),
    ([0.2, 0.9, 0.1, 0.6], "0.20, 0.90, 0.10, 0.60 — does not hold (first block not above the last)")])
def test_cka_finding_compares_the_first_block_with_the_last(diagonal, expected):
    report = _report(_lab("sup", paradigm="supervised"), _lab("ssl"))
    report.cka.append(_cka("ssl", "sup", diagonal))
    assert f"sup vs ssl (20 scenes), block 0 to 3: {expected}." in cka_finding(report)


def test_part_aware_counts_only_self_supervised_models_beyond_the_margin():
    text = part_aware_finding(_report(_lab("sup", paradigm="supervised", obj=0.9, part=0.40),
                                      _lab("a", paradigm="mim", obj=0.5, part=0.60),
                                      _lab("b", paradigm="location", obj=0.5, part=0.41),  # within the margin
                                      _lab("c", part=0.30)))
    assert "(1 of 3 self-supervised models beat supervised by more than 0.02)" in text
    missing = part_aware_finding(_report(_lab("sup", paradigm="supervised")))
    assert "of the joint-embedding, mim or location paradigm)." in missing


def test_dilemma_finding_leaves_untrained_models_out():
    text = dilemma_finding(_report(_lab("loc", paradigm="location", auc=0.8), _lab("other", auc=0.6),
                                   _lab("random", auc=0.95, trained=False)))
    assert "loc 0.800 vs best other 0.600 (other) — holds; other 0.600 (chance 0.5)." in text


def _mim(kind: str, mse: float, zero: float, alignment: float | None = None) -> MIMResult:
    return MIMResult(kind, 0.5, mse, zero, False, alignment, None if alignment is None else 0.1,
                     None if alignment is None else 0.3, 12, 72, 0)


def test_mim_findings_compare_each_model_with_its_zero_baseline():
    texts = mim_findings(_report(_lab("no-result", paradigm="mim"),
                                 _lab("mae", paradigm="mim", mim=_mim("MAE", 1.2, 1.0)),
                                 _lab("cae", paradigm="mim", mim=_mim("CAE", 0.5, 1.0, alignment=0.7))))
    assert texts == [
        "**MAE** (mae, 12 scenes): reconstruction MSE 1.200 against 1.000 for predicting 0 — not below the baseline.",
        "**CAE** (cae, 12 scenes): reconstruction MSE 0.500 against 1.000 for predicting 0 — below the baseline; "
        "predicted latents' cosine to the encoder's own 0.700 against 0.100 for other scenes' latents."]


def test_untrained_findings_print_each_untrained_models_own_numbers():
    [text] = untrained_findings(_report(_lab("random", trained=False, obj=0.41, part=0.22, auc=0.53), _lab("trained")))
    assert text.startswith("**Random weights** (random): object probe 0.410 (chance 0.250), part probe 0.220 (chance "
                           "0.250), location AUC 0.530, part-map ARI 0.400")


@pytest.mark.parametrize("changes", [dict(n_train=1), dict(n_test=1), dict(batch_size=0), dict(knn_k=0),
                                     dict(seed=-1), dict(seed=1 << 29), dict(crop_fraction=0.0),
                                     dict(crop_fraction=1.01), dict(swap_ratio=0.0), dict(swap_ratio=1.0),
                                     dict(mask_ratio=0.0), dict(mask_ratio=1.0)])
def test_lab_config_refuses_sizes_outside_their_documented_ranges(changes):
    with pytest.raises(BadRequest):
        LabConfig(**changes)


def test_lab_config_accepts_the_edges_of_its_ranges():
    edge = LabConfig(n_train=2, n_test=2, batch_size=1, patch_train_images=1, patch_test_images=1,
                     max_probe_patches=1, max_iter=1, knn_k=1, part_map_images=1, cka_images=1, mim_images=1,
                     seed=(1 << 29) - 1, crop_fraction=1.0, swap_ratio=0.5, mask_ratio=0.5)
    assert (edge.patch_train_scenes, edge.patch_test_scenes, edge.cka_scenes) == (1, 1, 1)
    assert LabConfig(seed=0).seed == 0


# ------------------------------------------------------------------------------------------ features: prefix tokens
def _features(has_class_token: bool, num_registers: int, dim: int = 4) -> PatchFeatures:
    prefix = int(has_class_token) + num_registers
    prefix_tokens = torch.arange(prefix * dim, dtype=torch.float32).reshape(prefix, dim) + 1
    return PatchFeatures(patch_tokens=torch.ones(2, 3, dim), prefix_tokens=prefix_tokens,
                         image_embedding=torch.zeros(dim), grid_hw=(2, 3), patch_size=16,
                         has_class_token=has_class_token, num_registers=num_registers,
                         image=np.zeros((32, 48, 3), np.uint8))


@pytest.mark.parametrize(("has_class_token", "num_registers"), [(True, 4), (True, 0), (False, 2), (False, 0)])
def test_register_tokens_are_the_rows_after_the_class_token(has_class_token, num_registers):
    f = _features(has_class_token, num_registers)
    first = 1 if has_class_token else 0  # [class | registers], the order timm keeps them in
    assert f.num_prefix == first + num_registers
    assert torch.equal(f.register_tokens, f.prefix_tokens[first:first + num_registers])
    assert f.register_tokens.shape == (num_registers, 4)
    assert (f.cls_token is None) != has_class_token
    if has_class_token:
        assert torch.equal(f.cls_token, f.prefix_tokens[0])


def test_token_norms_report_class_and_register_norms_from_their_own_rows():
    f = _features(True, 3)
    norms = token_norms(f)
    by_hand = np.linalg.norm(f.prefix_tokens.numpy(), axis=1)  # [class, r1, r2, r3]
    np.testing.assert_allclose(norms.class_norms, by_hand[:1], rtol=1e-6)
    np.testing.assert_allclose(norms.register_norms, by_hand[None, 1:], rtol=1e-6)
    pooled = _features(False, 2)
    assert token_norms(pooled).class_norms is None
    by_hand = np.linalg.norm(pooled.prefix_tokens.numpy(), axis=1)
    np.testing.assert_allclose(token_norms(pooled).register_norms[0], by_hand, rtol=1e-6)


# ------------------------------------------------------------------------------------------ analyses: attention
def _attention(layers: int = 2, heads: int = 3, tokens: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(layers, heads, tokens, tokens, generator=generator) * 2, dim=-1).double()


def _rollout_by_hand(attention: np.ndarray, fuse, weight: float = 0.5) -> np.ndarray:
    """Abnar & Zuidema's rollout in numpy: fuse heads, mix with the identity, renormalise rows, multiply."""
    result = np.eye(attention.shape[-1])
    for layer in attention:
        mixed = weight * np.eye(attention.shape[-1]) + (1 - weight) * fuse(layer, axis=0)
        result = (mixed / mixed.sum(-1, keepdims=True)) @ result
    return result


@pytest.mark.parametrize(("fusion", "fuse"), [("mean", np.mean), ("max", np.max), ("min", np.min)])
def test_rollout_matches_numpy_for_every_head_fusion(fusion, fuse):
    attention = _attention()
    expected = _rollout_by_hand(attention.numpy(), fuse, weight=0.3)
    np.testing.assert_allclose(rollout(attention, 0.3, fusion).numpy(), expected, atol=1e-12)
    assert not np.allclose(expected.sum(-1), 0) and np.allclose(expected.sum(-1), 1)  # rows renormalised
    with_prefix = rollout_map(attention, num_prefix=1, grid_hw=(2, 2), residual_weight=0.3, head_fusion=fusion)
    np.testing.assert_allclose(with_prefix.numpy(), expected[0, 1:].reshape(2, 2), atol=1e-12)


def test_rollout_map_of_a_pooled_model_is_the_mean_row_over_all_tokens():
    attention = _attention(tokens=6)
    expected = _rollout_by_hand(attention.numpy(), np.mean)
    pooled = rollout_map(attention, num_prefix=0, grid_hw=(2, 3))
    np.testing.assert_allclose(pooled.numpy(), expected.mean(0).reshape(2, 3), atol=1e-12)


def test_class_attention_map_reads_one_row_or_the_mean_row():
    attention = _attention(tokens=5)  # [L=2, heads=3, 5, 5]: class + 4 patches
    a = attention.numpy()
    np.testing.assert_allclose(class_attention_map(attention, 1, (2, 2)).numpy(), a[-1, :, 0, 1:].mean(0).reshape(2, 2))
    np.testing.assert_allclose(class_attention_map(attention, 1, (2, 2), layer=0, head=2, query=3).numpy(),
                               a[0, 2, 3, 1:].reshape(2, 2))
    np.testing.assert_allclose(class_attention_map(attention[..., 1:, 1:], 0, (2, 2)).numpy(),
                               a[-1, :, 1:, 1:].mean((0, 1)).reshape(2, 2))


def test_query_rows_of_several_heads_become_one_grid_per_head():
    rows = torch.arange(3 * 7, dtype=torch.float32).reshape(3, 7)  # [heads, T] with T = 1 prefix + 2x3 patches
    grids = query_attention_to_patches(rows, num_prefix=1, grid_hw=(2, 3))
    assert grids.shape == (3, 2, 3)
    np.testing.assert_array_equal(grids.numpy(), rows.numpy()[:, 1:].reshape(3, 2, 3))


def test_mass_mask_does_not_depend_on_the_scale_of_the_weights_and_keeps_nothing_for_zero_mass():
    weights = torch.tensor([0.04, 0.03, 0.02, 0.01])  # sums to 0.1
    assert mass_mask(weights, 0.6).tolist() == [True, True, False, False]
    assert mass_mask(weights * 100, 0.9).tolist() == [True, True, True, False]
    assert not mass_mask(weights, 0.0).any()
    assert mass_mask(weights, 1.0).all()
    for bad in (-0.1, 1.5):
        with pytest.raises(BadRequest):
            mass_mask(weights, bad)


# ------------------------------------------------------------------------------------------ analyses: PCA, similarity
def _numpy_pca(x: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mean, components (sign: largest |loading| positive), 1st and 99th percentiles of the projections."""
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(1)])[:, None]
    projections = (x - mean) @ components.T
    return mean, components, np.percentile(projections, 1, axis=0), np.percentile(projections, 99, axis=0)


def test_pca_colours_are_projections_scaled_by_their_robust_range():
    grid = torch.randn(6, 7, 10, generator=torch.Generator().manual_seed(3)) * torch.linspace(3, 0.5, 10)
    mean, components, low, high = _numpy_pca(grid.reshape(-1, 10).double().numpy())
    [colours], fit = pca_rgb([grid])
    expected = np.clip(((grid.double().numpy() - mean) @ components.T - low) / (high - low), 0, 1)
    np.testing.assert_allclose(colours.numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(fit.low.numpy(), low, rtol=1e-4)
    np.testing.assert_allclose(fit.high.numpy(), high, rtol=1e-4)


def test_pca_explained_variance_and_ratio_match_numpy_and_small_ranges_are_not_clamped():
    scales = torch.tensor([5, 3, 2, 1, 0.5, 0.1])
    x = (torch.randn(40, 6, generator=torch.Generator().manual_seed(11)) * scales).double()
    fit = fit_pca(x, k=3)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(x.numpy(), rowvar=False)))[::-1]  # ddof 1
    np.testing.assert_allclose(fit.explained_variance.numpy(), eigenvalues[:3], rtol=1e-5)
    np.testing.assert_allclose(fit.explained_ratio.numpy(), eigenvalues[:3] / eigenvalues.sum(), rtol=1e-5)
    two = fit_pca(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), k=1)  # two samples: variance 2 (ddof 1), all of it
    assert float(two.explained_variance[0]) == pytest.approx(2.0) and float(two.explained_ratio[0]) == pytest.approx(1)
    tiny = (x * 1e-3).float()  # a robust range far below 1: colours still span [0, 1]
    np.testing.assert_allclose(fit_pca(tiny).explained_ratio.numpy(), fit.explained_ratio.numpy(), rtol=1e-4)
    colours = fit_pca(tiny).to_unit(tiny)
    assert float(colours.min()) == 0.0 and float(colours.max()) == 1.0
    assert 0.2 < float(colours.mean()) < 0.8


def test_pca_on_the_foreground_is_fitted_on_foreground_patches_only_and_blacks_out_the_rest():
    gen = torch.Generator().manual_seed(4)
    grids = [torch.randn(5, 6, 8, generator=gen), torch.randn(4, 4, 8, generator=gen) * 3]
    masks = [torch.rand(5, 6, generator=gen) > 0.4, torch.rand(4, 4, generator=gen) > 0.4]
    selected = np.concatenate([g[m].double().numpy() for g, m in zip(grids, masks)])
    mean, components, low, high = _numpy_pca(selected)
    maps, fit = pca_rgb(grids, foreground=masks)
    np.testing.assert_allclose(fit.mean.numpy(), mean, atol=1e-5)
    np.testing.assert_allclose(fit.components.numpy(), components, atol=1e-4)
    for grid, mask, colours in zip(grids, masks, maps):
        expected = np.clip(((grid.double().numpy() - mean) @ components.T - low) / (high - low), 0, 1)
        expected[~mask.numpy()] = 0
        assert colours.shape == (*mask.shape, 3)
        np.testing.assert_allclose(colours.numpy(), expected, atol=1e-4)
    # fewer than 3 foreground patches: the fit falls back to all patches (and the background stays black)
    few = [torch.zeros(5, 6, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)]
    few[0][0, 0] = few[0][0, 1] = True
    maps, fit = pca_rgb(grids, foreground=few)
    everything = np.concatenate([g.reshape(-1, 8).double().numpy() for g in grids])
    np.testing.assert_allclose(fit.mean.numpy(), everything.mean(0), atol=1e-5)
    assert maps[1].abs().sum() == 0 and maps[0][1:].abs().sum() == 0
    three = [torch.zeros(5, 6, dtype=torch.bool), few[1]]
    three[0][0, :3] = True
    np.testing.assert_allclose(pca_rgb(grids, foreground=three)[1].mean.numpy(), grids[0][0, :3].mean(0), atol=1e-5)


def test_border_is_every_edge_cell_once():
    grid = torch.arange(20).reshape(4, 5)
    edge = np.ones((4, 5), bool)
    edge[1:-1, 1:-1] = False
    assert sorted(_border(grid).tolist()) == sorted(grid.numpy()[edge].tolist())


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_foreground_mask_finds_the_object_whichever_sign_the_component_takes(sign):
    grid = torch.randn(10, 12, 8, generator=torch.Generator().manual_seed(5)) * 0.05
    grid[3:7, 4:9] += torch.tensor([3.0 * sign] + [0.0] * 7)
    [mask] = foreground_mask([grid])  # default threshold 0.5
    truth = torch.zeros(10, 12, dtype=torch.bool)
    truth[3:7, 4:9] = True
    assert torch.equal(mask, truth)
    assert torch.equal(foreground_mask([grid], invert=True)[0], ~truth)


def test_similarity_accepts_every_patch_of_the_grid_and_refuses_the_next_one():
    grids = [torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(6))]
    for row, col in [(0, 0), (0, 3), (2, 0), (2, 3)]:
        [sim] = patch_similarity(grids, 0, row, col)
        a = grids[0].reshape(-1, 6).numpy()
        q = grids[0][row, col].numpy()
        expected = a @ q / (np.linalg.norm(a, axis=1) * np.linalg.norm(q))
        np.testing.assert_allclose(sim.reshape(-1).numpy(), expected, atol=1e-6)
    for row, col in [(3, 0), (0, 4), (-1, 0), (0, -1)]:
        with pytest.raises(BadRequest):
            patch_similarity(grids, 0, row, col)


# ------------------------------------------------------------------------------------------ analyses: dense tools
def test_best_buddies_refuses_mismatched_dimensions_and_keeps_top_one():
    tokens = torch.randn(3, 3, 8, generator=torch.Generator().manual_seed(7))
    assert best_buddies(tokens, tokens, top=1).count == 1
    with pytest.raises(BadRequest):
        best_buddies(tokens, tokens, top=0)
    with pytest.raises(BadRequest):
        best_buddies(tokens, tokens[..., :4])


def test_token_norms_default_threshold_cutoffs_and_final_block():
    norms = np.random.default_rng(8).normal(10.0, 1.0, 20)
    norms[7] = 100.0  # the largest: its exact value moves neither the median nor the MAD

    def cutoff(threshold: float) -> float:  # median + threshold robust sd, by hand
        median = np.median(norms)
        return median + threshold * 1.4826 * np.median(np.abs(norms - median))

    norms[7] = (cutoff(5.0) + cutoff(6.0)) / 2  # an outlier at threshold 5, not at 6
    direction = torch.nn.functional.normalize(torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(9)), dim=-1)
    f = _features(True, 0)
    f.patch_tokens = direction * torch.from_numpy(norms).float().reshape(4, 5, 1)
    result = token_norms(f)  # no blocks extracted: the final output, as block -1, threshold 5
    assert result.blocks == [-1] and result.threshold == 5.0
    np.testing.assert_allclose(result.patch_norms[0], norms.reshape(4, 5), rtol=1e-5)
    np.testing.assert_allclose(result.cutoffs, [cutoff(5.0)], rtol=1e-5)
    assert result.outliers[0, 1, 2] and result.outliers.sum() == 1
    assert not token_norms(f, threshold=6.0).outliers.any()
    assert token_norms(f, threshold=0.5).outliers.sum() > 1
    assert result.describe() == (f"block -1: patch-token norms median {np.median(norms):.1f}, max {norms.max():.1f}; "
                                 f"1 of 20 patches above {cutoff(5.0):.1f} (median + 5 robust sd)")
    f.num_registers = 2
    f.prefix_tokens = torch.tensor([[1.0, 0, 0], [0, 3.0, 4.0], [0, 0, 2.0]])
    assert token_norms(f).describe().endswith("; register norms 5.0, 2.0")


# ------------------------------------------------------------------------------------------ search
def test_exact_search_finds_the_first_row_and_merges_chunks_like_numpy():
    database = np.random.default_rng(10).standard_normal((23, 6)).astype(np.float32)
    queries = np.concatenate([database[:1], database[22:], database[5:9]])  # row 0 and the last row among them
    expected = np.argsort(-(queries.astype(np.float64) @ database.T.astype(np.float64)), axis=1, kind="stable")[:, :4]
    for chunk_rows in (5, 23, 65_536):
        scores, ids = exact_search_torch(torch.from_numpy(database), torch.from_numpy(queries), 4, chunk_rows)
        np.testing.assert_array_equal(ids.numpy(), expected)
        np.testing.assert_allclose(scores.numpy(), np.take_along_axis(queries @ database.T, expected, 1), rtol=1e-5)
    assert ids[0, 0] == 0 and ids[1, 0] == 22
    scores, ids = exact_search_torch(torch.from_numpy(database[:3]), torch.from_numpy(queries), 10)
    assert ids.shape == (6, 3)  # k' = min(k, N)


def test_recall_at_k_by_hand():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 1, -1, 9], [7, 8, 9, 4]])  # -1: no result
    assert recall_at_k(found, truth) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert recall_at_k(np.array([[5, -1]]), np.array([[5]])) == 1.0
    assert recall_at_k(np.array([[-1, 2]]), np.array([[5]])) == 0.0
    assert recall_at_k(np.zeros((0, 3), int), np.zeros((0, 3), int)) == 1.0


@pytest.mark.parametrize(("count", "lists"), [(10, 1), (100, 2), (1000, 25), (3900, 100), (10_000, 200),
                                              (1_000_000, 2000)])
def test_ivf_list_count_is_twice_the_square_root_with_39_vectors_a_list(count, lists):
    assert ivf_list_count(count) == lists


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_stored_vectors_read_back_in_chunks_are_the_fp16_rows(kind):
    vectors = np.random.default_rng(15).standard_normal((400, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    built = make_vector_index(vectors, kind)
    expected = vectors.astype(np.float16)
    for chunk_rows in (7, 400, 65_536):
        np.testing.assert_array_equal(built.vectors(chunk_rows), expected)
    np.testing.assert_array_equal(built.vector(123), expected[123])
    np.testing.assert_array_equal(built.vector_range(395, 5), expected[395:])


def test_resolve_kind_switches_to_ivf_above_the_exact_limit():
    assert resolve_kind("auto", AUTO_EXACT_LIMIT) == "exact" and resolve_kind("auto", AUTO_EXACT_LIMIT + 1) == "ivf"
    assert resolve_kind("hnsw", 10) == "hnsw"
    with pytest.raises(BadRequest):
        resolve_kind("flat", 10)


@pytest.fixture(scope="module")
def small_index(tiny_encoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    for i, (h, w) in enumerate([(64, 96), (80, 80), (72, 64)]):
        Image.fromarray(smooth_image(h, w, seed=20 + i)).save(folder / f"img{i}.png")
    index, _ = PatchIndex.build([folder], tiny_encoder)
    return index


def test_image_search_votes_and_best_pairs_match_a_brute_force_count(tiny_encoder, small_index):
    index = small_index
    query = index.embed_query(tiny_encoder, smooth_image(70, 90, seed=29))
    assert query.image_index is None
    database = index.vectors().astype(np.float64)
    image_ids, rows, cols = index.patch_positions()
    h, w = query.grid_hw
    flat = query.vectors.reshape(h * w, -1).astype(np.float64)
    scores = flat @ database.T  # [queries, N]
    per_patch = 4
    nearest = np.argsort(-scores, axis=1)[:, :per_patch]
    votes, best = {}, {}
    for q, ids in enumerate(nearest):
        for image in set(image_ids[ids].tolist()):
            votes[image] = votes.get(image, 0) + 1
        for vid in ids:
            image = int(image_ids[vid])
            if image not in best or scores[q, vid] > best[image][0]:
                best[image] = (scores[q, vid], q, int(vid))
    ranked = sorted(votes, key=lambda i: (votes[i], best[i][0]), reverse=True)[:2]
    hits = index.search_image(query, k=2, per_patch=per_patch)
    assert [hit.image_index for hit in hits] == ranked and len(ranked) == 2
    for hit, image in zip(hits, ranked):
        score, q, vid = best[image]
        assert hit.image == index.images[image].path and hit.votes == votes[image]
        assert hit.score == pytest.approx(score, abs=2e-3)
        assert (hit.query_row, hit.query_col) == (q // w, q % w) and (hit.row, hit.col) == (rows[vid], cols[vid])
    assert len(index.search_vectors(flat[:1].astype(np.float32))[0]) == 10  # k defaults to 10


def test_image_search_ranks_equal_votes_by_the_best_patch_score(tiny_encoder, small_index):
    index = small_index
    query = index.embed_query(tiny_encoder, smooth_image(70, 90, seed=30))
    hits = index.search_image(query, per_patch=len(index))  # every query patch votes for every image
    h, w = query.grid_hw
    assert [hit.votes for hit in hits] == [h * w] * 3
    best = (query.vectors.reshape(h * w, -1) @ index.vectors().astype(np.float32).T).max(0)  # per stored patch
    image_ids = index.patch_positions()[0]
    by_score = sorted(range(3), key=lambda i: -best[image_ids == i].max())
    assert [hit.image_index for hit in hits] == by_score
    assert [hit.score for hit in hits] == pytest.approx([best[image_ids == i].max() for i in by_score], abs=2e-3)


def test_image_search_defaults_are_ten_images_from_twenty_patches_each(tiny_encoder, small_index):
    query = small_index.embed_query(tiny_encoder, smooth_image(70, 90, seed=33))
    assert small_index.search_image(query) == small_index.search_image(query, k=10, per_patch=20)
    assert small_index.search_image(query) != small_index.search_image(query, k=10, per_patch=21)


def test_patch_search_accepts_every_patch_and_refuses_the_next_one(tiny_encoder, small_index):
    query = small_index.embed_query(tiny_encoder, small_index.images[0].path)
    h, w = query.grid_hw
    assert len(small_index.search_patch(query, h - 1, w - 1)) == 10  # k defaults to 10
    assert small_index.search_patch(query, 0, 0, k=1)[0].vector_id == small_index.images[0].first
    for row, col in [(h, 0), (0, w), (-1, 0)]:
        with pytest.raises(BadRequest):
            small_index.search_patch(query, row, col)


def test_region_search_leaves_the_query_image_out_on_request(tiny_encoder, small_index):
    query = small_index.embed_query(tiny_encoder, small_index.images[1].path)
    assert query.image_index == 1
    mask = np.zeros(query.grid_hw, bool)
    mask[1:3, 2:4] = True
    assert small_index.search_region(query, mask, k=3)[0].image_index == 1
    others = small_index.search_region(query, mask, k=5, exclude_query_image=True)
    assert len(others) == 5 and all(hit.image_index != 1 for hit in others)
    assert len(small_index.search_region(query, [(0, 0)])) == 10  # k defaults to 10


def test_attention_shares_split_a_row_into_class_registers_and_patches():
    from ssl_core.analyses import attention as attention_module

    shares = getattr(attention_module, "attention_shares", None)
    if shares is None:
        pytest.skip("ssl_core.analyses.attention.attention_shares is not in this tree yet")
    attention = _attention(layers=2, heads=3, tokens=1 + 4 + 6)  # [class | 4 registers | 2x3 patches]
    a = attention.numpy()
    row = a[-1, :, 0].mean(0)  # the class token's row in the last layer, heads averaged
    result = shares(attention, True, 4)
    assert (result.class_token, result.registers, result.patches) == pytest.approx((row[0], row[1:5].sum(),
                                                                                     row[5:].sum()))
    row = a[0, :, 7].mean(0)
    result = shares(attention, False, 2, layer=0, query=7)  # no class token: [2 registers | 9 patches]
    assert (result.class_token, result.registers, result.patches) == pytest.approx((0.0, row[:2].sum(), row[2:].sum()))


# ------------------------------------------------------------------------------------------ features
def test_pixels_are_normalised_with_imagenets_mean_and_std_by_default():
    rgb = np.random.default_rng(12).integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)  # [B, 3, H, W]
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]  # timm's IMAGENET_DEFAULT_MEAN / _STD, written out
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    expected = (rgb / 255.0 - mean) / std
    np.testing.assert_allclose(normalize_pixels(torch.from_numpy(rgb)).numpy(), expected, atol=1e-5)
    as_float = torch.from_numpy(rgb / 255.0).float()  # float input is taken as [0, 1] already
    np.testing.assert_allclose(normalize_pixels(as_float).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(denormalize_pixels(torch.from_numpy(expected).float()).numpy(), rgb / 255.0, atol=1e-5)
    own_mean, own_std = (0.5, 0.25, 0.0), torch.tensor([0.5, 0.5, 2.0])
    expected = (rgb / 255.0 - np.array(own_mean)[:, None, None]) / own_std.numpy()[:, None, None]
    normalised = normalize_pixels(torch.from_numpy(rgb), own_mean, own_std)
    np.testing.assert_allclose(normalised.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(denormalize_pixels(normalised, own_mean, own_std).numpy(), rgb / 255.0, atol=1e-5)


def test_lru_cache_evicts_the_least_recently_used_by_total_size():
    cache = LRUCache(max_size=10, size_of=len)
    cache.put("a", "xxxx")
    cache.put("b", "xxx")
    assert cache.get("a") == "xxxx" and cache.total_size == 7  # "a" is now the most recently used
    cache.put("c", "xxxx")  # 11 > 10: "b", the least recently used, goes
    assert cache.keys() == ["a", "c"] and cache.total_size == 8 and cache.get("b") is None
    cache.put("a", "x")  # replacing an entry replaces its size
    assert cache.total_size == 5 and len(cache) == 2
    cache.put("huge", "x" * 11)  # larger than the whole cache: not kept, nothing evicted
    assert cache.keys() == ["c", "a"] and cache.total_size == 5
    cache.put("d", "xxxxxx")  # 11: "c" goes, then 7 fits
    assert cache.keys() == ["a", "d"] and cache.total_size == 7
    assert cache.pop("a") == "x" and cache.pop("a") is None and cache.total_size == 6
    assert (cache.hits, cache.misses) == (1, 1)
    cache.clear()
    assert len(cache) == 0 and cache.total_size == 0
    sizes = LRUCache(max_size=10, size_of=len)
    sizes.put("a", "xx")
    sizes.put("b", "xxx")
    sizes.put("a", "x")  # 5 - 2 + 1
    assert sizes.total_size == 4
    sizes.put("full", "x" * 10)  # exactly the whole cache: kept, everything else evicted
    assert sizes.keys() == ["full"] and sizes.total_size == 10
    assert sizes.get("full") and sizes.get("full") and sizes.get("a") is None and sizes.get("b") is None
    assert (sizes.hits, sizes.misses) == (2, 2)
    counted = LRUCache(max_size=2)  # one per entry by default
    for key in "xyz":
        counted.put(key, key)
    assert counted.keys() == ["y", "z"]


def test_patch_table_rows_are_each_images_patches_row_major_as_unit_vectors():
    first, second = _features(True, 0, dim=3), _features(True, 0, dim=3)
    first.patch_tokens = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(13)) * 5
    second.patch_tokens = torch.randn(4, 1, 3, generator=torch.Generator().manual_seed(14))
    second.grid_hw = (4, 1)
    table = PatchTable.from_features(["a", "b"], [first, second], layer=None)
    assert len(table) == 10 and table.grids == [(2, 3), (4, 1)]
    np.testing.assert_array_equal(table.image_ids, [0] * 6 + [1] * 4)
    np.testing.assert_array_equal(table.rows, [0, 0, 0, 1, 1, 1, 0, 1, 2, 3])
    np.testing.assert_array_equal(table.cols, [0, 1, 2, 0, 1, 2, 0, 0, 0, 0])
    tokens = np.concatenate([first.patch_tokens.reshape(-1, 3).numpy(), second.patch_tokens.reshape(-1, 3).numpy()])
    np.testing.assert_allclose(table.vectors, tokens / np.linalg.norm(tokens, axis=1, keepdims=True), rtol=1e-5)
    heights, widths = table.heights_widths()
    np.testing.assert_array_equal(heights, [2] * 6 + [4] * 4)
    np.testing.assert_array_equal(widths, [3] * 6 + [1] * 4)
    part = table.subset(np.array([7, 2]))
    assert part.rows.tolist() == [1, 0] and part.cols.tolist() == [0, 2] and part.image_ids.tolist() == [1, 0]
    assert part.names == ["a", "b"] and part.grids == [(2, 3), (4, 1)]
    np.testing.assert_array_equal(part.vectors, table.vectors[[7, 2]])
    rows, cols = grid_positions((3, 4))
    expected_rows, expected_cols = np.unravel_index(np.arange(12), (3, 4))
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(cols, expected_cols)
    empty = PatchTable.from_features([], [], layer=None)
    assert len(empty) == 0 and empty.image_ids.shape == empty.rows.shape == empty.cols.shape == (0,)
    assert empty.vectors.shape == (0, 0) and empty.heights_widths()[0].shape == (0,)
    assert np.all(normalize_rows(np.zeros((2, 3))) == 0)


def test_patch_table_embed_reads_the_requested_block_and_attention(tiny_encoder):
    images = [smooth_image(64, 96, seed=31), smooth_image(80, 64, seed=32)]
    table, features = PatchTable.embed(tiny_encoder, ["a", "b"], images, layer=-2, attention=True)
    assert all(f.attention is not None and 4 in f.layer_tokens for f in features)  # block -2 of 6 is block 4
    tokens = np.concatenate([f.layer_tokens[4].reshape(-1, 192).numpy() for f in features])
    np.testing.assert_allclose(table.vectors, tokens / np.linalg.norm(tokens, axis=1, keepdims=True), atol=1e-5)
    assert table.names == ["a", "b"] and table.grids == [tuple(f.grid_hw) for f in features]
    seen = []
    final, plain = PatchTable.embed(tiny_encoder, ["a", "b"], images, progress=lambda done, total: seen.append(total))
    assert all(f.attention is None and 4 not in f.layer_tokens for f in plain)  # no attention unless asked
    assert seen and seen[-1] == 2
    tokens = np.concatenate([f.patch_tokens.reshape(-1, 192).numpy() for f in plain])
    np.testing.assert_allclose(final.vectors, tokens / np.linalg.norm(tokens, axis=1, keepdims=True), atol=1e-5)


def test_captured_maps_are_checked_to_be_attention_weights():
    good = [torch.softmax(torch.randn(1, 2, 5, 5), -1) for _ in range(3)]
    assert check_attention(good, 3, 5).shape == (1, 3, 2, 5, 5)
    for maps, blocks, tokens in [(good[:2], 3, 5), (good, 3, 6), ([g * 1.05 for g in good], 3, 5),
                                 ([g * 0.95 for g in good], 3, 5)]:
        with pytest.raises(AttentionUnavailableError):
            check_attention(maps, blocks, tokens)
    wide = [torch.softmax(torch.randn(1, 2, 5, 6), -1) for _ in range(3)]  # rows sum to 1, but 6 columns
    with pytest.raises(AttentionUnavailableError):
        check_attention(wide, 3, 5)
    nearly = [g * (1 + 5e-3) for g in good]  # within the 1e-2 tolerance (bf16 on a GPU)
    assert check_attention(nearly, 3, 5).shape == (1, 3, 2, 5, 5)


def test_split_on_oom_halves_until_batches_fit_and_joins_in_order():
    calls = []

    def fn(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.tolist())
        if batch.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated")
        return batch * 10

    assert split_on_oom(fn, torch.arange(5), lambda a, b: torch.cat([a, b])).tolist() == [0, 10, 20, 30, 40]
    assert calls == [[0, 1, 2, 3, 4], [0, 1], [2, 3, 4], [2], [3, 4]]
    assert split_on_oom(fn, torch.arange(8), lambda a, b: torch.cat([a, b])).tolist() == list(range(0, 80, 10))

    def never(batch: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(torch.OutOfMemoryError):
        split_on_oom(never, torch.arange(3), lambda a, b: torch.cat([a, b]))


def test_split_on_oom_frees_the_failed_attempt_before_the_halves_run():
    """A failed forward's tensors (held by the frames of its traceback) are gone before the retry allocates: on a
    GPU they would otherwise fill the memory the halves need, and every split would run out again."""
    import weakref

    attempts: list[weakref.ref] = []
    alive_at_retry = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        alive_at_retry.append(sum(ref() is not None for ref in attempts))
        activations = torch.empty(batch.shape[0], 1000)  # what a real forward holds when it runs out of memory
        attempts.append(weakref.ref(activations))
        if batch.shape[0] > 1:
            raise torch.OutOfMemoryError("simulated")
        return batch * 10

    assert split_on_oom(forward, torch.arange(4), lambda a, b: torch.cat([a, b])).tolist() == [0, 10, 20, 30]
    assert alive_at_retry == [0] * 7  # 4 -> 2 + 2 -> 1 + 1 + 1 + 1: no failed attempt's tensor outlived it


def test_patch_features_layers_coverage_and_size_by_hand():
    f = _features(True, 1, dim=4)
    f.layer_tokens = {2: torch.zeros(2, 3, 4)}
    f.layer_prefix_tokens = {2: torch.zeros(2, 4)}
    assert torch.equal(f.tokens(), f.patch_tokens) and torch.equal(f.tokens(2), f.layer_tokens[2])
    with pytest.raises(BadRequest, match="layer 3"):
        f.tokens(3)
    assert f.covers([2], attention=False) and f.covers([], attention=False)
    assert not f.covers([2, 3], attention=False) and not f.covers([2], attention=True)
    f.attention = torch.zeros(1, 1, 8, 8)
    assert f.covers([2], attention=True)
    # patch tokens, prefix tokens, embedding, one layer's tokens and prefix tokens, attention; float32
    floats = 2 * 3 * 4 + 2 * 4 + 4 + 2 * 3 * 4 + 2 * 4 + 8 * 8
    assert f.nbytes() == 4 * floats + 32 * 48 * 3


@pytest.mark.parametrize(("name", "registers", "prefix"), [("dinov2-vits14-reg", 4, 5), ("dinov2-vits14", 0, 1),
                                                           ("siglip2-vitb16-224", 0, 0)])
def test_encoders_count_their_registers_past_the_class_token(name, registers, prefix, image_333x517):
    spec = with_image_size(resolve_spec(name), 56)
    model, dynamic = build_model(spec)
    encoder = Encoder(spec, model, dynamic, None, torch.device("cpu"), cache=None)
    assert (encoder.num_registers, encoder.num_prefix_tokens) == (registers, prefix)
    [f] = encoder.extract([image_333x517])
    assert f.num_registers == registers and f.num_prefix == prefix and f.register_tokens.shape[0] == registers
