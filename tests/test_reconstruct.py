"""Reconstructions, context drift, the Reconstruct view's handlers and ``patchlens reconstruct``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import smooth_image
from PIL import Image

from app.views.reconstruct import context_drift_view, mae_display_grid, reconstruct_view, toggle_patch
from app.views.result import Click, display_hw, encoder_display_grid, patch_at
from ssl_core import load_encoder
from ssl_core.analyses.context import context_drift
from ssl_core.features.vit_tokens import encode_visible
from ssl_core.mim.mae import build_mae, save_mae
from ssl_core.mim.masks import block_mask, custom_mask, random_mask
from ssl_core.mim.reconstruct import MASK_FILL, centre_square, predicted_images, prepare_image, reconstruct, square_crop
from ssl_core.render.draw import COLORBAR_WIDTH


@pytest.fixture(scope="module")
def tiny_mae():
    torch.manual_seed(0)
    return build_mae(decoder_depth=1).eval()


def patch_pixels(mask: np.ndarray, patch_size: int) -> np.ndarray:
    return np.kron(mask, np.ones((patch_size, patch_size), dtype=bool))


def test_square_crop_resizes_the_short_side_and_keeps_the_centre():
    stripes = np.zeros((50, 150, 3), np.uint8)
    stripes[:, :50, 0] = stripes[:, 50:100, 1] = stripes[:, 100:, 2] = 255  # red | green | blue
    square = np.asarray(square_crop(Image.fromarray(stripes), 32))
    assert square.shape == (32, 32, 3)
    assert (square[:, 2:-2, 1] > 200).all() and (square[:, 2:-2, [0, 2]] < 60).all()


@pytest.mark.parametrize("norm_pix", [False, True])
def test_a_perfect_prediction_gives_back_the_image(tiny_mae, norm_pix):
    tiny_mae.norm_pix_loss = norm_pix
    try:
        pixels = torch.from_numpy(smooth_image(96, 96, seed=4)).permute(2, 0, 1)[None].float() / 255
        imgs = tiny_mae.normalize(pixels)
        images = predicted_images(tiny_mae, imgs, tiny_mae.patch_targets(imgs))
    finally:
        tiny_mae.norm_pix_loss = True
    torch.testing.assert_close(images, pixels, atol=1e-5, rtol=0)


def test_reconstruction_keeps_visible_patches_and_scores_hidden_ones(tiny_mae):
    image = smooth_image(120, 200, seed=2)
    mask = random_mask(tiny_mae.grid_hw, 0.75, seed=1)
    result = reconstruct(tiny_mae, image, mask)
    hidden = patch_pixels(mask, 8)
    assert result.image.shape == result.pasted.shape == result.reconstruction.shape == (96, 96, 3)
    assert np.array_equal(result.image, prepare_image(tiny_mae, image))
    assert np.array_equal(result.pasted[~hidden], result.image[~hidden])  # visible: the true pixels, unchanged
    assert np.array_equal(result.pasted[hidden], result.reconstruction[hidden])
    assert (result.masked[hidden] == MASK_FILL).all() and np.array_equal(result.masked[~hidden], result.image[~hidden])
    assert result.error_map.shape == (12, 12) and result.num_hidden == 108 and result.norm_pix
    assert "TRUE mean and std" in result.display_note
    imgs = tiny_mae.normalize(torch.from_numpy(result.image.copy()).permute(2, 0, 1)[None].float() / 255)
    with torch.no_grad():
        loss, _, _ = tiny_mae(imgs, mask=torch.from_numpy(mask.reshape(1, -1)))
    assert result.loss == pytest.approx(float(loss), rel=1e-5)
    assert result.loss == pytest.approx(float(result.error_map[mask].mean()), rel=1e-6)
    with pytest.raises(ValueError, match="this MAE's grid is 12x12"):
        reconstruct(tiny_mae, image, np.zeros((14, 14), bool))


def test_encoding_visible_patches_alone_matches_masking_them_out_of_attention(tiny_encoder, image_333x517):
    processed = tiny_encoder.prepare(image_333x517)
    grid = (processed.size[1] // 8, processed.size[0] // 8)
    imgs = tiny_encoder.to_tensor(processed)[None]
    [features] = tiny_encoder.extract([image_333x517])
    with torch.no_grad():
        whole = encode_visible(tiny_encoder.model, imgs)[0]
    torch.testing.assert_close(whole.reshape(*grid, -1), features.patch_tokens, atol=1e-5, rtol=1e-5)

    mask = random_mask(grid, 0.6, seed=3)
    key_blocked = torch.zeros(1, 1, 1, 1 + mask.size)
    key_blocked[..., 1:][torch.from_numpy(mask.reshape(1, 1, 1, -1))] = float("-inf")  # no token attends to hidden ones
    with torch.no_grad():
        alone = encode_visible(tiny_encoder.model, imgs, torch.from_numpy(mask.reshape(1, -1)))[0]
        reference = tiny_encoder.model.forward_features(imgs, attn_mask=key_blocked)[0, 1:][~torch.from_numpy(mask.reshape(-1))]
    torch.testing.assert_close(alone, reference, atol=1e-5, rtol=1e-5)

    drift = context_drift(tiny_encoder, image_333x517, mask)
    expected = torch.nn.functional.cosine_similarity(alone, whole[~torch.from_numpy(mask.reshape(-1))], dim=-1)
    assert np.isnan(drift[mask]).all() and not np.isnan(drift[~mask]).any()
    np.testing.assert_allclose(drift[~mask], expected.numpy(), atol=1e-6)
    assert np.allclose(context_drift(tiny_encoder, image_333x517, np.zeros(grid, bool)), 1.0, atol=1e-5)


def test_two_clicked_patches_are_exactly_the_two_hidden(tiny_mae):
    image = smooth_image(96, 96, seed=5)
    grid = mae_display_grid(tiny_mae)
    hidden = frozenset()
    for x, y in [(3 * 8 * 4 + 5, 2 * 8 * 4 + 1), (7 * 8 * 4 + 30, 10 * 8 * 4 + 30)]:  # display is 4x: 384 px
        hidden = toggle_patch(hidden, Click(x, y, display_hw(grid)), grid.grid_hw)
    assert hidden == {(2, 3), (10, 7)}
    assert toggle_patch(hidden, Click(3 * 32 + 1, 2 * 32 + 1, display_hw(grid)), grid.grid_hw) == {(10, 7)}
    view = reconstruct_view(tiny_mae, image, "custom", 0.75, 0, hidden)
    assert view.pictures["masked"].shape == (384, 384, 3) and "2/144 patches hidden" in view.markdown
    grey = (view.pictures["masked"] == MASK_FILL).all(-1)
    assert np.array_equal(grey, patch_pixels(custom_mask((12, 12), hidden), 32))
    assert patch_at(Click(383, 0, display_hw(grid)), grid.grid_hw) == (0, 11)
    random_view = reconstruct_view(tiny_mae, image, "random", 0.5, 1)
    assert "72/144 patches hidden" in random_view.markdown and "normalised" in random_view.markdown
    assert "untrained" in random_view.markdown


def test_context_drift_view_draws_on_the_mae_crop_with_the_mae_mask(tiny_encoder, image_333x517):
    """The drift map uses the MAE's centre crop and mask: the same hidden patches as the MAE view beside it."""
    square = centre_square(image_333x517)
    grid = encoder_display_grid(tiny_encoder, square)
    assert grid.grid_hw == (12, 12) and square.size == (333, 333)
    view = context_drift_view(tiny_encoder, image_333x517, "block", 0.4, 0, reference_grid=(12, 12))
    assert view.pictures["drift"].shape[:2] == (grid.image.shape[0] * 4, grid.image.shape[1] * 4 + COLORBAR_WIDTH)
    assert np.array_equal(view.numbers["mask"], block_mask((12, 12), 0.4, 0))
    assert "58/144 patches removed (block 40%, seed 0; the MAE's mask)" in view.markdown
    assert "fixed scale from 0" in view.markdown
    other = context_drift_view(tiny_encoder, image_333x517, "custom", 0.75, 0, frozenset({(0, 0), (5, 5)}),
                               reference_grid=(6, 6))  # an MAE with a coarser grid: its mask carried over
    assert "the MAE's 6×6 mask carried onto this model's 12×12 grid" in other.markdown
    assert int(other.numbers["mask"].sum()) == 8 and other.numbers["mask"][:2, :2].all()
    grid_view = context_drift_view(tiny_encoder, image_333x517, "grid", 0.3, 0, reference_grid=(12, 12))
    assert "the ratio slider does not apply to the grid mask" in grid_view.markdown
    assert "108/144 patches removed" in grid_view.markdown
    coarse = load_encoder("random-tiny", image_size=16, cache=None)  # a 2x2 grid: the MAE's mask can cover it all
    every = context_drift_view(coarse, image_333x517, "custom", 0.75, 0, frozenset({(0, 0), (0, 1), (1, 0), (1, 1)}),
                               reference_grid=(2, 2))
    assert not every.pictures and "hides all 4 patches of this model's 2×2 grid" in every.markdown


def test_cli_writes_the_pictures_and_metrics(tmp_path, image_file, tiny_mae, monkeypatch, capsys):
    from app.cli.main import main

    weights = save_mae(tiny_mae, tmp_path / "mae.safetensors")
    out = tmp_path / "recon"
    assert main(["reconstruct", image_file("cat.png", 80, 120), "--weights", str(weights), "--mask", "custom:0,1;5,5",
                 "--out", str(out)]) == 0
    for name in ["input", "masked", "reconstruction", "pasted", "error"]:
        assert np.asarray(Image.open(out / f"{name}.png")).shape == (96, 96, 3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_hidden"] == 2 and metrics["norm_pix"] is True and metrics["grid_hw"] == [12, 12]
    assert np.array(metrics["hidden"]).sum() == 2 and metrics["hidden"][5][5] == 1
    assert metrics["loss_hidden"] == pytest.approx((metrics["error_map"][0][1] + metrics["error_map"][5][5]) / 2, rel=1e-4)

    monkeypatch.setattr("ssl_core.mim.mae_checkpoints.BUNDLED_DIR", tmp_path / "no-models")
    capsys.readouterr()
    assert main(["reconstruct", image_file(), "--out", str(out)]) == 2
    assert "bundled MAE 'patchlens-mae' is missing" in capsys.readouterr().err


def test_cae_predicted_alignment_is_defined_exactly_on_hidden_patches():
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from ssl_core.analyses.context import predicted_alignment
    from ssl_core.mim.cae import CAEConfig, CAEModel

    cae = CAEModel(CAEConfig()).eval()
    mask = random_mask(cae.grid_hw, 0.5, seed=2)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 130, 3), dtype=np.uint8))
    alignment = predicted_alignment(cae, image, mask)
    assert np.isnan(alignment[~mask]).all() and np.isfinite(alignment[mask]).all()
    assert (np.abs(alignment[mask]) <= 1 + 1e-6).all()
    # the same numbers as the model's own API, hidden patches in patch order
    pixels = torch.from_numpy(prepare_image(cae, image).astype(np.float32) / 255).permute(2, 0, 1)
    imgs = ((pixels - torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]) / torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None])[None]
    with torch.inference_mode():
        predicted, target = cae.predict_masked_latents(imgs, torch.from_numpy(mask.reshape(1, -1)))
    expected = torch.nn.functional.cosine_similarity(predicted[0], target[0], dim=-1).numpy()
    np.testing.assert_allclose(alignment[mask], expected, atol=1e-5)


def test_cli_offers_only_maes_for_a_model_that_cannot_reconstruct(tmp_path, image_file, capsys):
    """A model without an MAE decoder is refused; the models offered instead can all reconstruct."""
    from app.cli.main import main
    from ssl_core.models.weights import offline_mae_names

    assert main(["reconstruct", image_file(), "--model", "patchlens-sup", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "'patchlens-sup' is neither a known MAE name" in err and "Traceback" not in err
    assert f"Use an MAE that needs no download ({', '.join(offline_mae_names())})" in err
    assert "patchlens-mae" in offline_mae_names()
    assert not any(name in err for name in ("patchlens-dino", "patchlens-cae", "patchlens-dilemma"))
