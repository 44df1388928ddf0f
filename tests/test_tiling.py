"""Sliding-window tiling: windows that cover the grid, and stitched tokens against one forward pass.

What can be asserted honestly: a model whose patch tokens depend on their own patch alone (attention output and
absolute position embeddings zeroed: every block is then a per-token MLP) gives exactly the one-pass tokens when
tiled, everywhere. A ViT with global attention does not: its tokens depend on every patch of the window, so tiled
tokens only resemble the one-pass ones; for it the test checks the shape, that one window over the whole image is
the one-pass result, and that each interior patch's tiled token is still nearest to its own one-pass token.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import smooth_image
from PIL import Image

from ssl_core import load_encoder
from ssl_core.errors import BadRequest, TooMuchWork
from ssl_core.features.tiling import native_image, needs_tiling, tile_windows, tiled_patch_tokens, window_starts

PATCH = 8  # random-tiny's patch size


def one_pass(encoder, image: Image.Image) -> torch.Tensor:
    """The final patch tokens [h, w, D] of one forward pass over the whole image."""
    x = encoder.to_tensor(image)[None]
    h, w = x.shape[-2] // PATCH, x.shape[-1] // PATCH
    return encoder.forward_patch_tokens(x)[0].float().reshape(h, w, -1)


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("random-tiny", device="cpu", cache=None)


@pytest.fixture(scope="module")
def local_encoder():
    """random-tiny with no mixing between patches and no absolute positions: each token is a function of its patch."""
    local = load_encoder("random-tiny", device="cpu", cache=None)
    with torch.no_grad():
        local.model.pos_embed.zero_()
        for block in local.model.blocks:
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
    return local


def test_windows_cover_the_grid_with_the_overlap_asked_and_stay_inside_it():
    assert window_starts(10, 4, 1) == [0, 3, 6]
    assert window_starts(11, 4, 1) == [0, 3, 6, 7]  # the last flush with the end
    assert window_starts(3, 4, 1) == [0]
    windows = tile_windows((23, 37), 12, 3)
    covered = np.zeros((23, 37), int)
    for win in windows:
        assert win.top + win.rows <= 23 and win.left + win.cols <= 37 and (win.rows, win.cols) == (12, 12)
        covered[win.top:win.top + win.rows, win.left:win.left + win.cols] += 1
    assert covered.min() >= 1
    tops = sorted({w.top for w in windows})
    assert all(b - a <= 12 - 3 for a, b in zip(tops, tops[1:]))
    with pytest.raises(BadRequest, match="overlap"):
        tile_windows((20, 20), 4, 4)


def test_tiling_a_local_model_equals_one_pass_everywhere(local_encoder):
    image = Image.fromarray(smooth_image(200, 264, seed=2))  # 25 x 33 patches: windows of 12 at a 3-patch overlap
    tiled = tiled_patch_tokens(local_encoder, image, window_px=96, overlap_px=24)
    assert tiled.shape == (25, 33, local_encoder.embed_dim)
    torch.testing.assert_close(tiled, one_pass(local_encoder, image), atol=1e-4, rtol=1e-4)


def test_tiling_a_global_attention_model_keeps_each_patch_nearest_its_one_pass_token(encoder):
    image = Image.fromarray(smooth_image(200, 264, seed=2))
    direct = one_pass(encoder, image)  # [25, 33, D]
    whole = tiled_patch_tokens(encoder, image, window_px=264)  # one window covers the image
    torch.testing.assert_close(whole, direct, atol=1e-4, rtol=1e-4)
    done = []
    tiled = tiled_patch_tokens(encoder, image, window_px=96, overlap_px=32, progress=lambda d, t: done.append((d, t)))
    assert tiled.shape == direct.shape and torch.isfinite(tiled).all()
    assert done[-1][0] == done[-1][1] == len(tile_windows((25, 33), 12, 4))
    interior = (slice(4, -4), slice(4, -4))
    a = F.normalize(tiled[interior].reshape(-1, tiled.shape[-1]), dim=-1)
    b = F.normalize(direct[interior].reshape(-1, direct.shape[-1]), dim=-1)
    assert ((a @ b.T).argmax(1) == torch.arange(len(a))).float().mean() > 0.9
    assert not torch.allclose(tiled, direct, atol=1e-3)  # global attention: tiling is not one pass


def test_large_images_are_tiled_at_their_own_resolution_and_oversized_grids_refused(encoder):
    big = Image.new("RGB", (1100, 1030))
    assert needs_tiling(big) and not needs_tiling(Image.new("RGB", (1100, 1024)))
    assert native_image(encoder, big).size == (1104, 1032)  # whole patches of 8 px
    with pytest.raises(TooMuchWork, match="GiB"):
        tiled_patch_tokens(encoder, native_image(encoder, big), max_bytes=1024)
    with pytest.raises(BadRequest, match="whole patches"):
        tiled_patch_tokens(encoder, Image.new("RGB", (100, 100)))


def test_tile_command_writes_the_stitched_grid_and_its_picture(tmp_path, capsys):
    from app.cli.main import main

    Image.fromarray(smooth_image(150, 230, seed=5)).save(tmp_path / "big.png")
    out = tmp_path / "big.npz"
    assert main(["tile", str(tmp_path / "big.png"), "--model", "random-tiny", "--device", "cpu", "--short-side", "200",
                 "--window", "96", "--overlap", "32", "--out", str(out)]) == 0
    data = np.load(out)
    assert data["patch_tokens"].shape == (25, 38, 192) and data["grid_hw"].tolist() == [25, 38]  # 200x304 px
    assert int(data["window_px"]) == 96 and int(data["overlap_px"]) == 32
    assert "15 windows of 96 px overlapping by 32 px" in capsys.readouterr().err  # 3 rows x 5 columns
    assert Image.open(out.with_suffix(".png")).size[0] > 2 * 200
