"""Pictures from patch maps: colormaps, overlays, label palettes, panels and PNG export. No analysis here.

All functions take numpy arrays or tensors and return ``uint8`` RGB arrays ``[H, W, 3]``.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ssl_core.render.text import INK, fit, vertical_text
from ssl_core.render.text import font as _font

# A qualitative palette (Tableau 20 order, bright first) for part labels and image identities.
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229),
], dtype=np.uint8)


def as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A tensor (any device, any float dtype) or array as a numpy array of the same shape (tensors as float32)."""
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@lru_cache(maxsize=16)
def colormap_lut(name: str = "viridis") -> np.ndarray:
    """A 256-entry RGB lookup table [256, 3] uint8 for a plotly sequential colour scale name."""
    import plotly.colors as pc

    scale = pc.get_colorscale(name)
    colors = pc.sample_colorscale(scale, np.linspace(0, 1, 256).tolist(), colortype="tuple")
    return (np.array(colors) * (255 if max(map(max, colors)) <= 1 else 1)).clip(0, 255).astype(np.uint8)


def apply_colormap(values: np.ndarray | torch.Tensor, vmin: float | None = None, vmax: float | None = None,
                   cmap: str = "viridis") -> np.ndarray:
    """Scalar map [h, w] -> RGB [h, w, 3] uint8 (values scaled from [vmin, vmax], default their range)."""
    v = as_numpy(values).astype(np.float64)
    lo = float(np.nanmin(v)) if vmin is None else vmin
    hi = float(np.nanmax(v)) if vmax is None else vmax
    unit = np.clip((v - lo) / max(hi - lo, 1e-12), 0, 1)
    return colormap_lut(cmap)[np.nan_to_num(unit * 255).round().astype(np.int64)]


def unit_rgb(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """An RGB map with channels in [0, 1] -> uint8."""
    return (np.clip(as_numpy(values), 0, 1) * 255).round().astype(np.uint8)


def labels_to_rgb(labels: np.ndarray | torch.Tensor, palette: np.ndarray = PALETTE, ignore: int = -1) -> np.ndarray:
    """Integer label map [h, w] -> RGB; label ``ignore`` (background) is black."""
    lab = as_numpy(labels).astype(np.int64)
    rgb = palette[np.mod(lab, len(palette))]
    rgb[lab == ignore] = 0
    return rgb


def upsample(grid_rgb: np.ndarray, size_hw: tuple[int, int], smooth: bool = False) -> np.ndarray:
    """Enlarge a per-patch RGB map [h, w, 3] to an image size (nearest keeps patches crisp)."""
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(grid_rgb).resize((size_hw[1], size_hw[0]), resample))


def overlay(image: np.ndarray, grid_rgb: np.ndarray, alpha: float = 0.6, smooth: bool = False) -> np.ndarray:
    """Blend a per-patch RGB map over an image [H, W, 3] uint8."""
    top = upsample(grid_rgb, image.shape[:2], smooth).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + top * alpha).round().clip(0, 255).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, values: np.ndarray | torch.Tensor, vmin: float | None = None,
                    vmax: float | None = None, cmap: str = "inferno", alpha: float = 0.6, smooth: bool = True) -> np.ndarray:
    """A scalar patch map [h, w], coloured (`apply_colormap`) and blended over an image [H, W, 3] -> [H, W, 3]."""
    return overlay(image, apply_colormap(values, vmin, vmax, cmap), alpha, smooth)


def _pixel_mask(mask: np.ndarray | torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
    """A boolean patch mask [h, w] enlarged to pixels [H, W, 1]."""
    return upsample((as_numpy(mask).astype(np.uint8) * 255)[..., None].repeat(3, -1), size_hw)[..., :1] > 0


def mask_overlay(image: np.ndarray, mask: np.ndarray | torch.Tensor, dim: float = 0.25) -> np.ndarray:
    """Dim the patches outside a boolean patch mask [h, w]."""
    return np.where(_pixel_mask(mask, image.shape[:2]), image, (image * dim).astype(np.uint8))


@dataclass(frozen=True)
class Scale:
    """The colour scale of a scalar map: values from ``vmin`` to ``vmax`` coloured with a plotly colormap, and what
    the values are (``label``, e.g. "cosine")."""

    vmin: float
    vmax: float
    cmap: str = "inferno"
    label: str = ""

    @classmethod
    def of(cls, values: np.ndarray | torch.Tensor, cmap: str = "inferno", label: str = "", vmin: float | None = None,
           vmax: float | None = None) -> Scale:
        """The scale of a map: the given bounds, the others from its finite values (0 to 1 when it has none)."""
        v = as_numpy(values).astype(np.float64)
        finite = v[np.isfinite(v)]
        low = float(finite.min()) if finite.size else 0.0
        high = float(finite.max()) if finite.size else 1.0
        return cls(low if vmin is None else float(vmin), high if vmax is None else float(vmax), cmap, label)

    def colour(self, values: np.ndarray | torch.Tensor) -> np.ndarray:
        """Values [h, w] -> RGB [h, w, 3] uint8 on this scale (values outside it are clipped)."""
        return apply_colormap(values, self.vmin, self.vmax, self.cmap)


def scale_overlay(image: np.ndarray, values: np.ndarray | torch.Tensor, scale: Scale, alpha: float = 0.6,
                  smooth: bool = True) -> np.ndarray:
    """`heatmap_overlay` on a given `Scale`."""
    return heatmap_overlay(image, values, scale.vmin, scale.vmax, scale.cmap, alpha, smooth)


def heat_on_patches(image: np.ndarray, values: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor,
                    vmin: float, vmax: float, cmap: str = "inferno", dim: float = 0.35) -> np.ndarray:
    """A heatmap of ``values`` [h, w] on the patches of a boolean mask [h, w] (e.g. the hidden ones); the other
    patches show the image [H, W, 3], dimmed."""
    heat = upsample(apply_colormap(values, vmin, vmax, cmap), image.shape[:2])
    return np.where(_pixel_mask(mask, image.shape[:2]), heat, (image * dim).astype(np.uint8))


def patch_grid(picture: np.ndarray, grid_hw: tuple[int, int], colour: tuple[int, int, int] = (255, 255, 255),
               alpha: float = 0.5) -> np.ndarray:
    """Lines along the patch boundaries of a picture [H, W, 3] showing a grid of ``grid_hw`` patches -> a copy."""
    out = picture.astype(np.float32)
    h, w = grid_hw
    height, width = picture.shape[:2]
    rows = [round(r * height / h) for r in range(1, h)]
    cols = [round(c * width / w) for c in range(1, w)]
    line = np.asarray(colour, np.float32)
    out[rows, :] = out[rows, :] * (1 - alpha) + line * alpha
    out[:, cols] = out[:, cols] * (1 - alpha) + line * alpha
    return out.round().clip(0, 255).astype(np.uint8)


def mark_patch(image: np.ndarray, row: int, col: int, patch_size: int, color: tuple[int, int, int] = (255, 255, 255),
               width: int = 2) -> np.ndarray:
    """Draw a box around one patch of an image. [H, W, 3] uint8 -> a copy, [H, W, 3]."""
    out = Image.fromarray(image.copy())
    x0, y0 = col * patch_size, row * patch_size
    ImageDraw.Draw(out).rectangle([x0, y0, x0 + patch_size - 1, y0 + patch_size - 1], outline=color, width=width)
    return np.asarray(out)


def mark_patches(image: np.ndarray, cells: np.ndarray, patch_size: int,
                 color: tuple[int, int, int] = (255, 255, 255), width: int = 2) -> np.ndarray:
    """`mark_patch` around every patch marked in ``cells`` [h, w] bool. [H, W, 3] uint8 -> a copy, [H, W, 3]."""
    for row, col in np.argwhere(cells):
        image = mark_patch(image, int(row), int(col), patch_size, color, width)
    return image


def enlarge(image: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Scale a small picture up (nearest) so patches stay visible in the UI. [H, W, 3] -> [kH, kW, 3], k >= 1."""
    h, w = image.shape[:2]
    factor = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if factor == 1:
        return image
    return np.asarray(Image.fromarray(image).resize((w * factor, h * factor), Image.Resampling.NEAREST))


def panel(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, columns: int | None = None,
          cell: int = 224, pad: int = 6, title_height: int = 22) -> np.ndarray:
    """Lay pictures [H, W, 3] uint8 out in a grid with titles, each scaled to fit a ``cell`` x ``cell`` box.

    -> one sheet [rows * (cell + title_height + pad) + pad, columns * (cell + pad) + pad, 3] uint8.
    """
    n = len(images)
    columns = columns or n
    rows = (n + columns - 1) // columns
    width = columns * (cell + pad) + pad
    height = rows * (cell + title_height + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        x, y = pad + c * (cell + pad), pad + r * (cell + title_height + pad)
        if titles is not None:
            draw.text((x, y + 3), fit(titles[i], font, cell), fill=INK, font=font)
        pic = Image.fromarray(image)
        scale = cell / max(pic.size)
        pic = pic.resize((max(1, round(pic.size[0] * scale)), max(1, round(pic.size[1] * scale))), Image.Resampling.NEAREST)
        sheet.paste(pic, (x, y + title_height))
    return np.asarray(sheet)


COLORBAR_WIDTH = 100  # pixels a colour bar adds to the right of a map


def tick_label(value: float) -> str:
    """A colour-bar tick: three significant digits."""
    return f"{value:.3g}"


def colorbar(height: int, scale: Scale) -> np.ndarray:
    """A vertical colour bar [height, COLORBAR_WIDTH, 3]: ``scale.vmax`` at the top, ``vmin`` at the bottom, each
    ticked and labelled, and the colormap's name (with what the values are) written along it."""
    canvas = Image.new("RGB", (COLORBAR_WIDTH, height), (255, 255, 255))
    top, bottom = 8, max(height - 8, 10)
    strip = scale.colour(np.linspace(scale.vmax, scale.vmin, bottom - top)[:, None].repeat(14, 1))
    canvas.paste(Image.fromarray(strip), (8, top))
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    for y, value in ((top, scale.vmax), (bottom - 1, scale.vmin)):
        draw.line([(22, y), (26, y)], fill=INK)
        draw.text((28, y), tick_label(value), fill=INK, font=font, anchor="lm")
    name = f"{scale.label} · {scale.cmap}" if scale.label else scale.cmap
    canvas.paste(vertical_text(name, font, max(bottom - top, 1), max_lines=1), (COLORBAR_WIDTH - 17, top))
    return np.asarray(canvas)


def with_colorbar(picture: np.ndarray, scale: Scale) -> np.ndarray:
    """A map [H, W, 3] with its colour bar on the right -> [H, W + COLORBAR_WIDTH, 3]."""
    return np.concatenate([picture, colorbar(picture.shape[0], scale)], axis=1)


def to_png_bytes(image: np.ndarray) -> bytes:
    """A picture [H, W, 3] uint8 as PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
