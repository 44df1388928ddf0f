"""From the patch grid to pixels: nearest (the raw grid), bilinear, or guided by the image.

``guided`` is a training-free joint bilateral upsampler (Kopf et al., 2007, as FeatUp's JBU baseline): each
output pixel is a weighted mean of the low-resolution values of the 4 x 4 grid cells around it, weighted by
the spatial distance to each cell's centre (in grid units, Gaussian ``sigma_spatial``) *and* by how close the
pixel's colour is to the cell's mean colour (Gaussian ``sigma_range``, colours in [0, 1]). Across an edge in the
image the other side's cells get almost no weight, so maps follow the image's edges instead of the patch grid.
Everything is torch, batched over maps and channels, on the maps' device (the GPU when they are there).

`upsample_difference` is what guidance changed against bilinear: the places it sharpened (or invented);
`change_from_grid` what an upsampling changed against the raw patch grid (nearest). `upsample_labels` upsamples a
label map (parts) by upsampling each label's indicator and taking the largest at each pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.errors import BadRequest

MODES = ("nearest", "bilinear", "guided")
NEIGHBOURS = (-1, 0, 1, 2)  # cell offsets from floor(position): a 4 x 4 support around each pixel


@dataclass(frozen=True)
class GuidedConfig:
    sigma_spatial: float = 1.0  # grid cells
    sigma_range: float = 0.08  # colour distance, RGB in [0, 1]
    chunk_rows: int = 256  # output rows per step (bounds memory: ~16 x rows x W x channels floats)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise BadRequest(f"unknown upsampling '{mode}' (choose from {', '.join(MODES)})")
    return mode


def upsample_maps(maps: torch.Tensor, guide: torch.Tensor, mode: str = "guided",
                  config: GuidedConfig = GuidedConfig()) -> torch.Tensor:
    """maps: [B, C, h, w] float; guide: [B, 3, H, W] float RGB in [0, 1] -> [B, C, H, W] on the maps' device."""
    check_mode(mode)
    B, C, h, w = maps.shape
    H, W = guide.shape[-2:]
    if mode == "nearest":
        return F.interpolate(maps, size=(H, W), mode="nearest")
    if mode == "bilinear":
        return F.interpolate(maps, size=(H, W), mode="bilinear", align_corners=False)
    guide = guide.to(maps.device, maps.dtype)
    guide_cells = F.adaptive_avg_pool2d(guide, (h, w))  # [B, 3, h, w] each cell's mean colour
    rows = [_guided_rows(maps, guide, guide_cells, start, min(H, start + config.chunk_rows), config)
            for start in range(0, H, config.chunk_rows)]
    return torch.cat(rows, dim=2)


def _cell_coordinates(size_out: int, size_in: int, start: int, stop: int, device: torch.device,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous cell coordinate of output positions [start, stop) (cell centres at integers), and its floor."""
    position = (torch.arange(start, stop, device=device, dtype=torch.float32) + 0.5) * size_in / size_out - 0.5
    return position, position.floor().long()


def _guided_rows(maps: torch.Tensor, guide: torch.Tensor, guide_cells: torch.Tensor, start: int, stop: int,
                 config: GuidedConfig) -> torch.Tensor:
    """Output rows [start, stop): [B, C, stop-start, W]."""
    B, C, h, w = maps.shape
    H, W = guide.shape[-2:]
    y, y0 = _cell_coordinates(H, h, start, stop, maps.device)  # [R]
    x, x0 = _cell_coordinates(W, w, 0, W, maps.device)  # [W]
    pixels = guide[:, :, start:stop]  # [B, 3, R, W]
    total = maps.new_zeros(B, C, stop - start, W)
    weight_sum = maps.new_zeros(B, 1, stop - start, W)
    for dy in NEIGHBOURS:
        cy = (y0 + dy).clamp(0, h - 1)  # [R]
        wy = torch.exp(-((y - (y0 + dy)) ** 2) / (2 * config.sigma_spatial ** 2))  # [R]
        for dx in NEIGHBOURS:
            cx = (x0 + dx).clamp(0, w - 1)  # [W]
            wx = torch.exp(-((x - (x0 + dx)) ** 2) / (2 * config.sigma_spatial ** 2))  # [W]
            cell_colour = guide_cells[:, :, cy][:, :, :, cx]  # [B, 3, R, W]
            distance = ((pixels - cell_colour) ** 2).sum(1, keepdim=True)  # [B, 1, R, W]
            weight = torch.exp(-distance / (2 * config.sigma_range ** 2)) * (wy[:, None] * wx[None, :])
            total += weight * maps[:, :, cy][:, :, :, cx]
            weight_sum += weight
    return total / weight_sum.clamp_min(1e-12)


def upsample_map(grid_map: np.ndarray | torch.Tensor, image: np.ndarray, mode: str = "guided",
                 config: GuidedConfig = GuidedConfig(), device: torch.device | str | None = None) -> np.ndarray:
    """One map over the patch grid ([h, w] or [h, w, C]) to the image's pixels ([H, W] or [H, W, C], float32).

    image: [H, W, 3] uint8, the processed image the tokens were computed on. NaNs (e.g. hidden patches) are
    kept as NaN in nearest mode and filled with 0 otherwise.
    """
    values = torch.as_tensor(np.asarray(grid_map, dtype=np.float32))
    flat = values.ndim == 2
    maps = (values[..., None] if flat else values).permute(2, 0, 1)[None]  # [1, C, h, w]
    if mode != "nearest":
        maps = torch.nan_to_num(maps)
    device = torch.device(device) if device else (torch.device("cuda") if torch.cuda.is_available() else maps.device)
    guide = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0  # [1, 3, H, W]
    out = upsample_maps(maps.to(device), guide.to(device), mode, config)[0].permute(1, 2, 0).cpu().numpy()
    return out[..., 0] if flat else out


def upsample_difference(grid_map: np.ndarray | torch.Tensor, image: np.ndarray,
                        config: GuidedConfig = GuidedConfig()) -> np.ndarray:
    """|guided - bilinear| per pixel ([H, W], summed over channels in quadrature): what guidance changed."""
    guided = upsample_map(grid_map, image, "guided", config)
    bilinear = upsample_map(grid_map, image, "bilinear", config)
    difference = guided - bilinear
    return np.abs(difference) if difference.ndim == 2 else np.sqrt((difference ** 2).sum(-1))


def change_from_grid(grid_map: np.ndarray | torch.Tensor, image: np.ndarray, mode: str = "guided",
                     config: GuidedConfig = GuidedConfig()) -> np.ndarray:
    """upsampled - raw grid (nearest) per pixel, [H, W]: signed for a scalar map [h, w]; for a map with channels
    [h, w, C] the length of the change vector (>= 0). What the upsampling added to the patch grid."""
    difference = upsample_map(grid_map, image, mode, config) - upsample_map(grid_map, image, "nearest", config)
    return difference if difference.ndim == 2 else np.sqrt((difference ** 2).sum(-1))


def upsample_labels(labels: np.ndarray | torch.Tensor, image: np.ndarray, mode: str = "guided",
                    config: GuidedConfig = GuidedConfig()) -> np.ndarray:
    """A label map [h, w] (any integers, e.g. -1 for background) to pixels [H, W] int64: each label's indicator map
    upsampled, the label of the largest at each pixel (nearest: the raw grid)."""
    values, index = np.unique(np.asarray(labels, dtype=np.int64), return_inverse=True)
    index = index.reshape(np.shape(labels))  # [h, w] position of each label in ``values``
    indicators = np.eye(len(values), dtype=np.float32)[index]  # [h, w, K]
    return values[upsample_map(indicators, image, mode, config).argmax(-1)]


__all__ = ["MODES", "GuidedConfig", "check_mode", "upsample_maps", "upsample_map", "upsample_difference",
           "change_from_grid", "upsample_labels"]
