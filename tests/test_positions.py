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

from app.views.reconstruct import position_view
from app.views.result import SWAP_BOX
from ssl_core import load_encoder
from ssl_core.analyses.positions import position_check
from ssl_core.data import partsworld
from ssl_core.errors import BadRequest
from ssl_core.features.vit_tokens import cycle_positions, swap_positions
from ssl_core.lab import LabConfig, heldout_seeds
from ssl_core.mim.reconstruct import centre_square

SCENES = LabConfig(n_train=8, n_test=2)


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
    check = position_check(tiny_encoder, image, swapped, [image], draws=2)

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
    assert check.fit_images == 1 and check.draws == 2 and check.fit_tokens == 2 * 144
    assert check.fit_ratio == pytest.approx(20 / 144)


def test_the_bundled_dilemma_tells_its_misplaced_tokens_and_an_untrained_vit_does_not():
    shown, fits = scenes("test", 1)[0], scenes("train", 8)
    swapped = some_cells(22)
    dilemma = position_check(load_encoder("patchlens-dilemma", cache=None), shown, swapped, fits, draws=4)
    untrained = position_check(load_encoder("random-tiny-sincos", cache=None), shown, swapped, fits, draws=4)
    assert dilemma.auc > 0.75 and untrained.auc < 0.62  # measured 0.87 and 0.46
    assert dilemma.probability[swapped].mean() > dilemma.probability[~swapped].mean() + 0.2
    assert dilemma.visible.sum() <= swapped.sum() and not dilemma.visible[~swapped].any()


def test_bad_swap_masks_and_models_without_positions_are_refused(tiny_encoder):
    image = Image.fromarray(smooth_image(96, 96, seed=4))
    with pytest.raises(BadRequest, match="at least two patches"):
        position_check(tiny_encoder, image, some_cells(1), [image])
    with pytest.raises(BadRequest, match="sees this image as 12x12"):
        position_check(tiny_encoder, image, np.ones((6, 6), bool), [image])
    with pytest.raises(BadRequest, match="at least one image"):
        position_check(tiny_encoder, image, some_cells(4), [])
    beit = load_encoder("beitv2-vitb16", pretrained=False, cache=None)
    with pytest.raises(BadRequest, match="cannot be given wrong positions: Beit is not a timm VisionTransformer"):
        position_check(beit, image, some_cells(4, (14, 14)), [image])


def test_the_view_boxes_the_masked_patches_of_the_mae_crop_and_names_what_it_measured(tiny_encoder, image_333x517):
    view = position_view(tiny_encoder, image_333x517, [], "block", 0.3, 0, reference_grid=(12, 12))
    swapped = view.numbers["swapped"]
    assert swapped.shape == (12, 12) and int(swapped.sum()) >= 2
    picture = view.pictures["positions"]
    side = 12 * (picture.shape[0] // 12)
    cyan = np.all(picture[:side, :side] == SWAP_BOX, axis=-1)  # [H, W] box pixels
    patch = side // 12
    boxed = np.array([[cyan[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].any() for c in range(12)]
                      for r in range(12)])
    assert np.array_equal(boxed, swapped)  # exactly the swapped patches are boxed
    assert f"{int(swapped.sum())}/144 patches (boxed) trade position embeddings" in view.markdown
    assert "ROC AUC" in view.markdown and "the MAE's mask" in view.markdown
    assert "untrained" in view.markdown.lower()
    crop = position_check(tiny_encoder, centre_square(image_333x517), swapped, [centre_square(image_333x517)],
                          draws=4, seed=0)
    np.testing.assert_allclose(view.numbers["probability"], crop.probability, atol=1e-6)  # the same crop and probe

    one = position_view(tiny_encoder, image_333x517, [], "custom", 0.3, 0, frozenset({(1, 1)}))
    assert not one.pictures and "choose a mask" in one.markdown
