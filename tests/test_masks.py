"""Masks hide exactly what they say, reproducibly from their seed."""
from __future__ import annotations

import numpy as np
import pytest

from ssl_core.mim.masks import MaskSpec, block_mask, custom_mask, grid_mask, parse_mask_spec, random_mask, toggle_cells


def hidden_neighbour_share(mask: np.ndarray) -> float:
    """Of the 4-neighbours of hidden patches, the share that are hidden too (blocks score high, noise low)."""
    padded = np.pad(mask, 1)
    neighbours = padded[:-2, 1:-1].astype(int) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    return float(neighbours[mask].mean() / 4)


@pytest.mark.parametrize("make", [random_mask, block_mask])
@pytest.mark.parametrize("grid,ratio", [((12, 12), 0.75), ((14, 14), 0.4), ((7, 11), 0.1), ((12, 12), 0.0),
                                        ((12, 12), 1.0), ((3, 3), 0.5)])
def test_random_and_block_masks_hide_exactly_round_ratio_times_patches(make, grid, ratio):
    for seed in range(4):
        mask = make(grid, ratio, seed)
        assert mask.shape == grid and mask.dtype == bool
        assert mask.sum() == round(ratio * grid[0] * grid[1])


@pytest.mark.parametrize("make", [random_mask, block_mask])
def test_masks_are_reproducible_from_the_seed(make):
    assert np.array_equal(make((14, 14), 0.5, 7), make((14, 14), 0.5, 7))
    assert not np.array_equal(make((14, 14), 0.5, 7), make((14, 14), 0.5, 8))


def test_block_masks_are_blocks_random_masks_are_not():
    block = np.mean([hidden_neighbour_share(block_mask((14, 14), 0.4, s)) for s in range(10)])
    scattered = np.mean([hidden_neighbour_share(random_mask((14, 14), 0.4, s)) for s in range(10)])
    assert block > 0.6 and scattered < 0.5


def test_grid_mask_keeps_one_patch_per_two_by_two_cell():
    mask = grid_mask((12, 12))
    assert mask.sum() == 108
    assert not mask[::2, ::2].any() and mask[1::2, :].all() and mask[:, 1::2].all()


def test_custom_masks_and_toggling():
    mask = custom_mask((4, 5), {(0, 1), (3, 4)})
    assert mask.sum() == 2 and mask[0, 1] and mask[3, 4]
    hidden = toggle_cells(frozenset(), (1, 1))
    hidden = toggle_cells(hidden, (2, 2))
    assert hidden == {(1, 1), (2, 2)}
    assert toggle_cells(hidden, (1, 1)) == {(2, 2)}
    with pytest.raises(ValueError, match=r"\(4, 0\) lies outside the 4x5"):
        custom_mask((4, 5), {(4, 0)})


def test_mask_specs_parse_and_build():
    assert parse_mask_spec("random:0.6") == MaskSpec("random", 0.6)
    assert parse_mask_spec("block:0.4").build((10, 10), 3).sum() == 40
    assert parse_mask_spec("grid").build((4, 4)).sum() == 12
    custom = parse_mask_spec("custom:0,1;2,3")
    assert custom.cells == {(0, 1), (2, 3)} and custom.build((4, 4)).sum() == 2
    for bad in ["random:1.5", "blocky:0.4", "custom:1", "random:abc", "grid:3"]:
        with pytest.raises(ValueError, match="bad mask|mask ratio|unknown mask kind"):
            parse_mask_spec(bad)
