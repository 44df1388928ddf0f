"""PCA of patch tokens: RGB maps of the first three components, fitted per image or jointly.

A joint fit over several images gives one projection, so a colour means the same direction in token
space in all of them (DINOv2's figure). The first component often separates foreground from
background; `foreground_mask` thresholds it, and a second PCA fitted on the foreground alone then
colours the object's parts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PCAFit:
    mean: torch.Tensor  # [D]
    components: torch.Tensor  # [k, D] orthonormal rows, by decreasing explained variance
    explained_variance: torch.Tensor  # [k]
    explained_ratio: torch.Tensor  # [k] share of the total variance
    low: torch.Tensor  # [k] robust range of the projections (1st percentile), for colour scaling
    high: torch.Tensor  # [k] 99th percentile

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [..., D] -> [..., k]"""
        return (tokens - self.mean) @ self.components.T

    def to_unit(self, tokens: torch.Tensor) -> torch.Tensor:
        """Projections scaled to [0, 1] per component using the fit's robust range. [..., D] -> [..., k]"""
        scaled = (self.project(tokens) - self.low) / (self.high - self.low).clamp_min(1e-8)
        return scaled.clamp(0.0, 1.0)


def fit_pca(tokens: torch.Tensor, k: int = 3) -> PCAFit:
    """PCA of tokens [N, D] (float), through an SVD of the centred data."""
    x = tokens.reshape(-1, tokens.shape[-1]).double()
    k = min(k, *x.shape)
    mean = x.mean(0)
    centred = x - mean
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:k]  # [k, D]
    # fix the sign of each component (largest |loading| positive) so maps do not flip between runs
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True))).squeeze(1)
    components = components * signs[:, None]
    variance = s**2 / max(x.shape[0] - 1, 1)
    projections = centred @ components.T
    low = torch.quantile(projections, 0.01, dim=0)
    high = torch.quantile(projections, 0.99, dim=0)
    return PCAFit(mean=mean.float(), components=components.float(), explained_variance=variance[:k].float(),
                  explained_ratio=(variance[:k] / variance.sum().clamp_min(1e-12)).float(),
                  low=low.float(), high=high.float())


def pca_rgb(grids: list[torch.Tensor], foreground: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], PCAFit]:
    """RGB maps [h, w, 3] in [0, 1] for patch-token grids [h, w, D], from one PCA fitted on all of them.

    With ``foreground`` masks [h, w] (bool), the PCA is fitted on foreground patches only and the
    background is set to black.
    """
    if foreground is None:
        fit = fit_pca(torch.cat([g.reshape(-1, g.shape[-1]) for g in grids]))
        return [fit.to_unit(g) for g in grids], fit
    selected = torch.cat([g[m] for g, m in zip(grids, foreground)])
    if selected.shape[0] < 3:
        selected = torch.cat([g.reshape(-1, g.shape[-1]) for g in grids])
    fit = fit_pca(selected)
    maps = [fit.to_unit(g) * m[..., None] for g, m in zip(grids, foreground)]
    return maps, fit


def foreground_mask(grids: list[torch.Tensor], threshold: float = 0.5, invert: bool = False) -> list[torch.Tensor]:
    """Foreground masks [h, w] from the first principal component fitted jointly on the grids.

    A patch is foreground when its first-component projection, scaled to [0, 1], is above
    ``threshold``. The sign of the component is arbitrary: the side holding fewer of the border
    patches is taken as foreground (objects rarely fill the frame's edge); ``invert`` flips that.
    """
    fit = fit_pca(torch.cat([g.reshape(-1, g.shape[-1]) for g in grids]), k=1)
    first = [fit.to_unit(g)[..., 0] for g in grids]  # [h, w] in [0, 1]
    border = torch.cat([_border(f) for f in first])
    flip = bool((border > threshold).float().mean() > 0.5) != invert
    return [((1 - f) if flip else f) > threshold for f in first]


def _border(grid: torch.Tensor) -> torch.Tensor:
    """The values on the edge of a map [h, w], as one vector [2w + 2(h-2)]."""
    return torch.cat([grid[0], grid[-1], grid[1:-1, 0], grid[1:-1, -1]])


@dataclass
class ImagePCA:
    """One image's PCA-to-RGB map, from a fit over it alone or over several images."""

    rgb: torch.Tensor  # [h, w, 3] in [0, 1] (background black where a foreground mask is used)
    explained: float  # share of the variance the fit's three components explain
    foreground: torch.Tensor | None  # [h, w] bool, or None when every patch is used


def pca_rgb_each(grids: list[torch.Tensor], joint: bool = True, foreground_threshold: float | None = None,
                 invert: bool = False) -> list[ImagePCA]:
    """PCA-to-RGB maps of patch-token grids [h, w, D]: one PCA over all of them (``joint``: one colour, one
    meaning) or one per grid; with a threshold, each fit uses the foreground of `foreground_mask` only."""
    groups = [list(range(len(grids)))] if joint else [[i] for i in range(len(grids))]
    out: list[ImagePCA | None] = [None] * len(grids)
    for group in groups:
        members = [grids[i] for i in group]
        masks = None if foreground_threshold is None else foreground_mask(members, foreground_threshold, invert)
        maps, fit = pca_rgb(members, masks)
        explained = float(fit.explained_ratio.sum())
        for j, i in enumerate(group):
            out[i] = ImagePCA(maps[j], explained, None if masks is None else masks[j])
    return out
