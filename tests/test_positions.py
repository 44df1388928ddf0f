"""Wrong positions (DILEMMA's question on any image: ssl_core.analyses.positions, and the Reconstruct tab's map).

The swapped forward pass is checked against timm's own ``forward_features`` with the position table permuted; the
probe against the bundled DILEMMA model, whose tokens were trained to know their place, and the untrained baseline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import smooth_image
from PIL import Image

from app.views.reconstruct import context_drift_view, position_view
from app.views.result import SWAP_BOX
from ssl_core import load_encoder
from ssl_core.analyses.positions import (
    FIT_SHARES,
    PROBES,
    VISIBLE_DIFFERENCE,
    fit_position_probe,
    position_check,
    position_probe,
    probe_key,
    roc_auc,
)
from ssl_core.data import partsworld
from ssl_core.errors import BadRequest
from ssl_core.features.vit_tokens import cycle_positions, swap_positions
from ssl_core.lab import LabConfig, heldout_seeds
from ssl_core.mim.masks import block_mask, random_mask
from ssl_core.mim.reconstruct import centre_square

SCENES = LabConfig(n_train=8, n_test=2)


@pytest.fixture(autouse=True)
def no_kept_probes():
    """Each test fits its own probes: one kept by an earlier test (or an earlier run in the same process) would skip
    the fit that the test means to check."""
    PROBES.clear()


def scenes(split: str, n: int) -> list[Image.Image]:
    return [Image.fromarray(partsworld.sample(seed, 96).image) for seed in heldout_seeds(SCENES, split, n)]


def some_cells(count: int, grid: tuple[int, int] = (12, 12), seed: int = 0) -> np.ndarray:
    cells = np.zeros(grid, bool)
    cells.flat[np.random.default_rng(seed).choice(cells.size, count, replace=False)] = True
    return cells


def test_a_cycle_gives_each_chosen_patch_the_position_of_the_one_before_it():
    ids = cycle_positions(torch.tensor([3, 7, 1]), 10)
    assert ids.tolist() == [0, 7, 2, 1, 4, 5, 6, 3, 8, 9]
    # swap_positions draws the patches and cycles them in the order drawn (as before cycle_positions existed)
    generator, reference = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ids, swapped = swap_positions(20, 0.3, generator)
    chosen = torch.randperm(20, generator=reference)[:6]
    expected = torch.arange(20)
    expected[chosen] = chosen.roll(1)
    assert torch.equal(ids, expected) and swapped.nonzero().flatten().tolist() == sorted(chosen.tolist())


def test_swapped_tokens_match_timm_with_its_position_table_permuted(tiny_encoder):
    """The cosine map against an independent path: timm's forward_features on a copy of the model whose position
    table rows were permuted the same way (at the native 12x12 grid, so no resampling is involved)."""
    image = Image.fromarray(smooth_image(96, 96, seed=4))
    swapped = some_cells(20)
    probe = fit_position_probe(tiny_encoder, [image], shares=(0.2, 0.4))
    check = position_check(tiny_encoder, image, swapped, probe)

    vit = tiny_encoder.model
    batch = tiny_encoder.to_tensor(tiny_encoder.prepare(image))[None]  # [1, 3, 96, 96]
    ids = cycle_positions(torch.from_numpy(swapped.reshape(-1)).nonzero().flatten(), 144)
    P = vit.num_prefix_tokens
    with torch.inference_mode():
        own = vit.forward_features(batch)[0, P:]  # [144, D]
        table = vit.pos_embed.detach().clone()  # [1, P + 144, D], the prefix's rows first
        original = vit.pos_embed.data.clone()
        table[0, P:] = original[0, P:][ids]
        vit.pos_embed.data.copy_(table)
        try:
            moved = vit.forward_features(batch)[0, P:]
        finally:
            vit.pos_embed.data.copy_(original)
    expected = F.cosine_similarity(moved, own, dim=-1).reshape(12, 12).numpy()
    np.testing.assert_allclose(check.cosine, expected, atol=1e-5)
    assert np.array_equal(check.swapped, swapped)
    assert check.cosine[swapped].max() < check.cosine[~swapped].min()  # only the swapped tokens moved (0.9997 vs 1)
    assert (probe.images, probe.shares, probe.tokens, probe.model_key) == (1, (0.2, 0.4), 2 * 144,
                                                                               f"{tiny_encoder.key} at 96 px")


def test_the_bundled_dilemma_tells_its_misplaced_tokens_and_an_untrained_vit_does_not():
    shown, fits = scenes("test", 1)[0], scenes("train", 8)
    swapped = some_cells(22)
    checks = {}
    for name in ("patchlens-dilemma", "random-tiny-sincos"):
        encoder = load_encoder(name, cache=None)
        checks[name] = position_check(encoder, shown, swapped, fit_position_probe(encoder, fits))
    dilemma, untrained = checks["patchlens-dilemma"], checks["random-tiny-sincos"]
    assert dilemma.auc > 0.7 and untrained.auc < 0.6  # measured 0.78 and 0.46
    assert dilemma.probability[swapped].mean() > dilemma.probability[~swapped].mean() + 0.2
    assert dilemma.visible.sum() <= swapped.sum() and not dilemma.visible[~swapped].any()


def test_bad_swap_masks_and_models_without_positions_are_refused(tiny_encoder):
    image = Image.fromarray(smooth_image(96, 96, seed=4))
    probe = fit_position_probe(tiny_encoder, [image], shares=(0.3,))
    with pytest.raises(BadRequest, match="at least two patches"):
        position_check(tiny_encoder, image, some_cells(1), probe)
    assert position_check(tiny_encoder, image, some_cells(2), probe).swapped.sum() == 2  # two is enough
    with pytest.raises(BadRequest, match="sees this image as 12x12"):
        position_check(tiny_encoder, image, np.ones((6, 6), bool), probe)
    with pytest.raises(BadRequest, match="at least one image"):
        fit_position_probe(tiny_encoder, [])
    for other in (load_encoder("random-tiny-sincos", cache=None), load_encoder("random-tiny", image_size=64,
                                                                                 cache=None)):
        width, height = other.prepare(image).size
        cells = some_cells(4, (height // other.patch_size, width // other.patch_size))
        with pytest.raises(BadRequest, match="fitted on other tokens"):  # another model, or another resolution
            position_check(other, image, cells, probe)
    beit = load_encoder("beitv2-vitb16", pretrained=False, cache=None)
    with pytest.raises(BadRequest, match="cannot be given wrong positions: Beit is not a timm VisionTransformer"):
        fit_position_probe(beit, [image])
    for view in (position_view(beit, image, []), context_drift_view(beit, image)):  # a note in the view, no error
        assert not view.pictures and "cannot" in view.markdown and view.markdown.startswith("beitv2-vitb16")


def test_a_swap_is_visible_when_the_two_patches_differ_by_more_than_the_threshold(tiny_encoder):
    """Flat grey patches 0 to 7 levels apart: the threshold (0.02, about 5 levels of 255) splits the swaps; checked
    against the levels themselves."""
    levels = np.add.outer(np.arange(12), np.arange(12)) % 8 + 120  # [12, 12] grey level of each patch
    image = Image.fromarray(np.repeat(np.repeat(levels, 8, 0), 8, 1).astype(np.uint8)).convert("RGB")  # 96 x 96
    swapped = some_cells(30)
    check = position_check(tiny_encoder, image, swapped, fit_position_probe(tiny_encoder, [image], shares=(0.3,)))
    ids = cycle_positions(torch.from_numpy(swapped.reshape(-1)).nonzero().flatten(), 144).numpy()
    apart = np.abs(levels.reshape(-1) - levels.reshape(-1)[ids]).reshape(12, 12) / 255
    assert np.array_equal(check.visible, apart > VISIBLE_DIFFERENCE)
    assert 0 < check.visible.sum() < (swapped & (apart > 0)).sum()  # some swaps that change pixels are too faint


def test_roc_auc_needs_both_kinds_of_token():
    assert roc_auc(np.array([0.1, 0.9, 0.2]), np.array([False, True, False])) == 1.0
    assert roc_auc(np.array([0.9, 0.1, 0.2]), np.array([[False], [True], [True]])) == 0.0  # any shape, flattened
    assert roc_auc(np.ones(3), np.zeros(3, bool)) is None and roc_auc(np.ones(3), np.ones(3, bool)) is None


def test_a_probe_is_fitted_once_per_model_and_images_and_serves_every_swap(tiny_encoder):
    images = [Image.fromarray(smooth_image(96, 96, seed=s)) for s in (1, 2)]
    seen = []
    first = position_probe(tiny_encoder, images, progress=lambda done, total: seen.append((done, total)))
    assert first.shares == FIT_SHARES and first.images == 2 and first.seed == 0 and seen == [(1, 2), (2, 2)]
    assert first.tokens == 2 * len(FIT_SHARES) * 144 and len(PROBES) == 1
    assert position_probe(tiny_encoder, [image.copy() for image in images]) is first  # the same pixels: kept
    assert position_probe(tiny_encoder, images[:1]) is not first
    assert position_probe(tiny_encoder, images, seed=1).seed == 1 and len(PROBES) == 3
    # a subsample drawn with the seed: two fits of the same tokens agree exactly
    small = [fit_position_probe(tiny_encoder, images, max_tokens=100) for _ in range(2)]
    assert small[0].tokens == 100
    np.testing.assert_array_equal(small[0].probe[-1].coef_, small[1].probe[-1].coef_)
    assert PROBES.get((probe_key(tiny_encoder), ("x",), 0)) is None


def test_the_view_boxes_the_masked_patches_of_the_mae_crop_and_names_what_it_measured(tiny_encoder, image_333x517):
    view = position_view(tiny_encoder, image_333x517, [], 0.15, "the masked patches", "block", 0.3, 0,
                         reference_grid=(12, 12))
    swapped = view.numbers["swapped"]
    assert swapped.shape == (12, 12) and int(swapped.sum()) >= 2
    picture = view.pictures["positions"]
    side = 12 * (picture.shape[0] // 12)
    cyan = np.all(picture[:side, :side] == SWAP_BOX, axis=-1)  # [H, W] box pixels
    patch = side // 12
    boxed = np.array([[cyan[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].any() for c in range(12)]
                      for r in range(12)])
    assert np.array_equal(boxed, swapped)  # exactly the swapped patches are boxed
    assert np.array_equal(swapped, block_mask((12, 12), 0.3, 0))  # the MAE's mask
    assert f"{int(swapped.sum())}/144 patches (boxed) trade position embeddings in a cycle: the masked patches " \
           f"(block 30%, seed 0; the MAE's mask)" in view.markdown
    assert "ROC AUC" in view.markdown and "random swaps of 10%, 20%, 30%, 50%" in view.markdown
    assert "untrained" in view.markdown.lower()
    square = centre_square(image_333x517)
    crop = position_check(tiny_encoder, square, swapped, fit_position_probe(tiny_encoder, [square]))
    np.testing.assert_allclose(view.numbers["probability"], crop.probability, atol=1e-6)  # the same crop and probe

    shared = position_view(tiny_encoder, image_333x517, [], 0.25, seed=3)  # a random share: its own cells
    assert np.array_equal(shared.numbers["swapped"], random_mask((12, 12), 0.25, 3))
    assert "36/144 patches (boxed) trade position embeddings in a cycle: a random 25% of the patches, seed 3" \
        in shared.markdown
    one = position_view(tiny_encoder, image_333x517, [], 0.15, "the masked patches", "custom", 0.3, 0,
                        frozenset({(1, 1)}))
    assert not one.pictures and "choose at least two" in one.markdown
