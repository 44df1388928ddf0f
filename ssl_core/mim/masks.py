"""Masks over a patch grid: which patches a masked model does not see. Boolean arrays [h, w], True = hidden.

* ``random``: exactly ``round(ratio * h * w)`` patches chosen uniformly, reproducible from the seed (MAE).
* ``block``: BEiT's block-wise masking: rectangles of at least 4 patches with aspect ratios in [0.3, 1/0.3]
  are added until the target count is reached; when no rectangle fits what is left, the last few patches
  are drawn at random, so the count is always exactly ``round(ratio * h * w)``.
* ``grid``: MAE's grid-wise sampling: one patch visible per ``spacing`` x ``spacing`` cell (spacing 2 hides 75%).
* ``custom``: exactly the (row, col) cells given, e.g. patches clicked in the app (`toggle_cells`).

`MaskSpec` names one of these (``parse_mask_spec("random:0.75")``, ``"block:0.4"``, ``"grid"``,
``"custom:0,1;2,3"``) and `MaskSpec.build` makes the mask for a grid and seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ssl_core.errors import BadRequest

MASK_KINDS = ("random", "block", "grid", "custom")
Cell = tuple[int, int]


def hidden_count(grid_hw: tuple[int, int], ratio: float) -> int:
    """How many patches a ratio hides: round(ratio * h * w)."""
    if not 0.0 <= ratio <= 1.0:
        raise BadRequest(f"mask ratio must lie in [0, 1], not {ratio}")
    return int(round(ratio * grid_hw[0] * grid_hw[1]))


def random_mask(grid_hw: tuple[int, int], ratio: float, seed: int = 0) -> np.ndarray:
    """Exactly round(ratio * h * w) hidden patches, drawn uniformly. -> [h, w] bool"""
    h, w = grid_hw
    count = hidden_count(grid_hw, ratio)
    mask = np.zeros(h * w, dtype=bool)
    mask[np.random.default_rng(seed).permutation(h * w)[:count]] = True
    return mask.reshape(h, w)


def block_mask(grid_hw: tuple[int, int], ratio: float, seed: int = 0, min_block: int = 4,
               min_aspect: float = 0.3, attempts: int = 10) -> np.ndarray:
    """BEiT's block-wise masking, topped up at random to exactly round(ratio * h * w) hidden. -> [h, w] bool"""
    h, w = grid_hw
    target = hidden_count(grid_hw, ratio)
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), dtype=bool)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    while mask.sum() < target:
        budget = target - int(mask.sum())  # patches a new block may add
        added = 0
        for _ in range(attempts):
            area = rng.uniform(min_block, max(min_block, budget))
            aspect = math.exp(rng.uniform(*log_aspect))
            bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if not (0 < bh <= h and 0 < bw <= w):
                continue
            top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            block = mask[top:top + bh, left:left + bw]
            new = bh * bw - int(block.sum())
            if 0 < new <= budget:
                block[:] = True
                added = new
                break
        if added == 0:  # no block fits what is left: finish with single patches
            free = np.flatnonzero(~mask.reshape(-1))
            mask.reshape(-1)[rng.choice(free, size=budget, replace=False)] = True
    return mask


def grid_mask(grid_hw: tuple[int, int], spacing: int = 2, offset: Cell = (0, 0)) -> np.ndarray:
    """One visible patch per spacing x spacing cell (at ``offset`` within it), the rest hidden. -> [h, w] bool"""
    if spacing < 1:
        raise BadRequest(f"grid spacing must be at least 1, not {spacing}")
    rows, cols = np.indices(grid_hw)
    return ~((rows % spacing == offset[0] % spacing) & (cols % spacing == offset[1] % spacing))


def custom_mask(grid_hw: tuple[int, int], hidden: set[Cell] | frozenset[Cell]) -> np.ndarray:
    """Exactly the given (row, col) cells hidden. -> [h, w] bool"""
    h, w = grid_hw
    mask = np.zeros((h, w), dtype=bool)
    for row, col in hidden:
        if not (0 <= row < h and 0 <= col < w):
            raise BadRequest(f"patch ({row}, {col}) lies outside the {h}x{w} patch grid")
        mask[row, col] = True
    return mask


def resample_mask(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """A mask [H, W] carried onto another grid of the same picture: each patch of the ``grid_hw`` grid takes the
    value of the patch under its centre. -> [h, w] bool (the same array values when the grids are equal)."""
    mask = np.asarray(mask, dtype=bool)
    h, w = grid_hw
    rows = ((np.arange(h) + 0.5) * mask.shape[0] / h).astype(np.int64)
    cols = ((np.arange(w) + 0.5) * mask.shape[1] / w).astype(np.int64)
    return mask[np.ix_(rows, cols)]


def toggle_cells(hidden: set[Cell] | frozenset[Cell], *cells: Cell) -> frozenset[Cell]:
    """The hidden set with each given cell flipped (hidden <-> visible)."""
    return frozenset(hidden).symmetric_difference(cells)


@dataclass(frozen=True)
class MaskSpec:
    """Which mask to draw: a kind, its ratio (random, block) and cells (custom)."""

    kind: str = "random"
    ratio: float = 0.75
    cells: frozenset[Cell] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise BadRequest(f"unknown mask kind '{self.kind}' (choose from {', '.join(MASK_KINDS)})")
        hidden_count((1, 1), self.ratio)  # validates the ratio

    def build(self, grid_hw: tuple[int, int], seed: int = 0) -> np.ndarray:
        """The mask [h, w] bool (True = hidden) for a grid; random and block masks depend on the seed."""
        if self.kind == "random":
            return random_mask(grid_hw, self.ratio, seed)
        if self.kind == "block":
            return block_mask(grid_hw, self.ratio, seed)
        if self.kind == "grid":
            return grid_mask(grid_hw)
        return custom_mask(grid_hw, self.cells)

    def describe(self) -> str:
        if self.kind in ("random", "block"):
            return f"{self.kind} {self.ratio:.0%}"
        if self.kind == "grid":
            return "grid (one visible patch per 2x2)"
        return f"custom ({len(self.cells)} patches)"


def parse_mask_spec(text: str) -> MaskSpec:
    """``random:0.75`` | ``block:0.4`` | ``grid`` | ``custom:r,c;r,c`` -> MaskSpec (ValueError naming the text)."""
    kind, _, arg = text.strip().partition(":")
    try:
        if kind in ("random", "block"):
            return MaskSpec(kind, float(arg) if arg else 0.75)
        if kind == "grid" and not arg:
            return MaskSpec("grid")
        if kind == "custom":
            cells = frozenset(tuple(int(v) for v in pair.split(",")) for pair in arg.split(";") if pair.strip())
            if any(len(cell) != 2 for cell in cells):
                raise BadRequest("each cell is row,col")
            return MaskSpec("custom", cells=cells)
    except ValueError as err:
        raise BadRequest(f"bad mask '{text}': {err}") from None
    raise BadRequest(f"bad mask '{text}': use random:RATIO, block:RATIO, grid or custom:r,c;r,c")
