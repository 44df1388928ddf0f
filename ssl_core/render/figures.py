"""Figures for the analyses: plotly UMAP scatters, CKA heatmaps and BagSSL curves, and scatters as plain pictures.

No analysis here: inputs are result dataclasses (`ssl_core.analyses.maps.PatchMap`, `Colouring`, `ssl_core.analyses.cka.CKAResult`,
`ssl_core.analyses.bagssl.BagOfCrops`, `LayerAgreement`, `ssl_core.analyses.attention_range.AttentionRange`).
`scatter_picture` draws a scatter with numpy and PIL (no plotly) and keeps each point's pixel position, so a click
on the picture maps back to a point (`ScatterPicture.point_at`): ``gr.Plot`` sends no click events to Python,
a ``gr.Image`` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ssl_core.analyses.attention_range import AttentionRange
from ssl_core.analyses.bagssl import BagOfCrops, LayerAgreement
from ssl_core.analyses.cka import CKAResult
from ssl_core.analyses.maps import Colouring, PatchMap, nearest_point
from ssl_core.errors import BadRequest
from ssl_core.render.draw import PALETTE, Scale, apply_colormap, upsample
from ssl_core.render.text import INK, fit, font, line_height, text_height, vertical_text, width_of, write

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from ssl_core.lab.layers import LayerSweep

SCALAR_CMAP = "inferno"
LEGEND_MAX = 20


def colouring_rgb(colouring: Colouring) -> np.ndarray:
    """A colour per point [N, 3] uint8: palette for categories, a colormap for scalars, RGB as given."""
    if colouring.kind == "categorical":
        return PALETTE[np.mod(colouring.values, len(PALETTE))]
    if colouring.kind == "scalar":
        return apply_colormap(colouring.values, cmap=SCALAR_CMAP)
    if colouring.kind == "rgb":
        return (np.clip(colouring.values, 0, 1) * 255).round().astype(np.uint8)
    raise BadRequest(f"unknown colouring kind {colouring.kind!r}")


def legend_entries(colouring: Colouring) -> list[tuple[int, str, tuple[int, int, int]]]:
    """(label, name, colour) of each category present, for categorical colourings; [] otherwise."""
    if colouring.kind != "categorical":
        return []
    return [(label, colouring.names[label] if label < len(colouring.names) else str(label),
             tuple(int(c) for c in PALETTE[label % len(PALETTE)])) for label in np.unique(colouring.values).tolist()]


# --------------------------------------------------------------------------------------------------- plotly
def umap_figure(patch_map: PatchMap, colouring: Colouring, hover: Sequence[str] | None = None, height: int = 560,
                ) -> go.Figure:
    """An interactive scatter of a patch map; ``customdata`` holds each point's index."""
    import plotly.graph_objects as go


    xy = patch_map.coords
    hover = list(hover) if hover is not None else [str(i) for i in range(len(xy))]
    fig = go.Figure()
    if colouring.kind == "categorical":
        for label, name, colour in legend_entries(colouring):
            ids = np.flatnonzero(colouring.values == label)
            fig.add_trace(go.Scattergl(x=xy[ids, 0], y=xy[ids, 1], mode="markers", name=name[-40:],
                                       marker=dict(size=4, color=f"rgb{colour}"), customdata=ids,
                                       text=[hover[i] for i in ids], hoverinfo="text"))
    else:
        marker = dict(size=4)
        if colouring.kind == "scalar":
            marker.update(color=colouring.values, colorscale=SCALAR_CMAP.capitalize(), showscale=True,
                          colorbar=dict(title=colouring.title[:20]))
        else:
            marker.update(color=[f"rgb({r},{g},{b})" for r, g, b in colouring_rgb(colouring).tolist()])
        fig.add_trace(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", marker=marker, name=colouring.title,
                                   customdata=np.arange(len(xy)), text=hover, hoverinfo="text"))
    fig.update_layout(title=dict(text=f"{patch_map.describe()}<br><sup>colour: {colouring.title}</sup>", font=dict(size=13)),
                      template="plotly_white", height=height, margin=dict(l=20, r=20, t=70, b=20),
                      xaxis=dict(showticklabels=False, title=""), yaxis=dict(showticklabels=False, title="", scaleanchor="x"))
    return fig


def cka_figure(result: CKAResult, height: int = 520) -> go.Figure:
    """A CKA heatmap (`ssl_core.analyses.cka.CKAResult`): blocks of model A down the side, of model B along the bottom."""
    import plotly.graph_objects as go


    zmin = min(0.0, float(result.matrix.min()))
    heatmap = go.Heatmap(z=result.matrix, x=result.labels_b, y=result.labels_a, zmin=zmin, zmax=1.0, colorscale="Viridis",
                         colorbar=dict(title="CKA"),
                         hovertemplate=f"{result.model_a} %{{y}}<br>{result.model_b} %{{x}}<br>CKA %{{z:.3f}}<extra></extra>")
    fig = go.Figure(heatmap)
    fig.update_layout(title=dict(text=result.describe(), font=dict(size=12)), template="plotly_white", height=height,
                      xaxis=dict(title=result.model_b), yaxis=dict(title=result.model_a, scaleanchor="x"),
                      margin=dict(l=60, r=20, t=60, b=50))
    return fig


# --------------------------------------------------------------------------------------------------- pictures
@dataclass
class ScatterPicture:
    image: np.ndarray  # [H, W, 3] uint8
    pixels: np.ndarray  # [N, 2] float: (x, y) pixel position of each point's centre

    def point_at(self, x: float, y: float, max_distance: float = 12.0) -> int | None:
        """The point under a click at pixel (x, y), or None when no point is within ``max_distance`` pixels."""
        return nearest_point(self.pixels, x, y, max_distance)


def scatter_picture(coords: np.ndarray, colours: np.ndarray, size: tuple[int, int] = (720, 560), radius: int = 2,
                    margin: int = 16, highlight: int | None = None, legend: Sequence[tuple[str, tuple]] = (),
                    title: str | None = None, seed: int = 0) -> ScatterPicture:
    """Draw points coords [N, 2] with colours [N, 3] uint8 on a white (width, height) canvas, equal axis scales.

    Points are drawn in a seeded random order, so no category systematically covers another. ``highlight`` rings
    one point; ``legend`` adds (name, colour) rows on the right (the canvas grows to hold them).
    """
    width, height = size
    face = font(12)
    top = margin + (text_height(title, face, width - 2 * margin, max_lines=2) + 2 if title else 0)
    coords = np.asarray(coords, np.float64)
    low, high = coords.min(0), coords.max(0)
    span = np.maximum(high - low, 1e-9)
    scale = min((width - 2 * margin) / span[0], (height - top - margin) / span[1])
    centre_px = np.array([width / 2, (top + height - margin) / 2])
    pixels = np.empty_like(coords)
    pixels[:, 0] = centre_px[0] + (coords[:, 0] - (low[0] + high[0]) / 2) * scale
    pixels[:, 1] = centre_px[1] - (coords[:, 1] - (low[1] + high[1]) / 2) * scale  # y grows upwards in data
    legend = list(legend)[:LEGEND_MAX]
    legend_width = 190 if legend else 0
    canvas = np.full((height, width + legend_width, 3), 255, np.uint8)
    dy, dx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disc = np.stack([dx[dx**2 + dy**2 <= radius**2 + radius // 2], dy[dx**2 + dy**2 <= radius**2 + radius // 2]], 1)  # [S, 2]
    order = np.random.default_rng(seed).permutation(len(coords))
    stamped = np.round(pixels[order])[:, None, :].astype(np.int64) + disc[None]  # [N, S, 2]
    xs, ys = np.clip(stamped[..., 0], 0, width - 1), np.clip(stamped[..., 1], 0, height - 1)
    canvas[ys, xs] = np.asarray(colours, np.uint8)[order][:, None, :]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    if title:
        write(draw, (margin, 4), title, face, width - 2 * margin, max_lines=2)
    if highlight is not None:
        x, y = pixels[highlight]
        for r, colour in ((radius + 7, (0, 0, 0)), (radius + 5, (255, 255, 255))):
            draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=2)
    for i, (name, colour) in enumerate(legend):
        y = top + i * 18
        draw.rectangle([width + 8, y + 3, width + 18, y + 13], fill=tuple(colour))
        draw.text((width + 24, y), fit(name, face, legend_width - 30, keep="end"), fill=INK, font=face)
    return ScatterPicture(np.asarray(picture), pixels)


def map_picture(patch_map: PatchMap, colouring: Colouring, highlight: int | None = None,
                size: tuple[int, int] = (720, 560)) -> ScatterPicture:
    """A patch map drawn as a picture with its colouring, a legend for categories and a one-line title."""
    legend = [(name, colour) for _, name, colour in legend_entries(colouring)]
    radius = 2 if len(patch_map.coords) > 2000 else 3
    return scatter_picture(patch_map.coords, colouring_rgb(colouring), size, radius, highlight=highlight, legend=legend,
                           title=f"{patch_map.method.upper()} · colour: {colouring.title}")


def heatmap_picture(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str = "",
                    row_title: str = "", col_title: str = "", cell: int = 28, vmin: float = 0.0, vmax: float = 1.0,
                    cmap: str = "viridis", min_width: int = 360) -> np.ndarray:
    """A heatmap [La, Lb] as a picture: row 0 at the bottom (as `cka_figure`), labels, a colour bar, the row title
    written upwards along the left and the column title under the labels (each whole, wrapped when long) and the
    title wrapped to the picture's width (at least ``min_width`` pixels)."""
    rows, cols = matrix.shape
    face = font(11)
    step = line_height(face)
    cells = upsample(apply_colormap(np.asarray(matrix)[::-1], vmin, vmax, cmap), (rows * cell, cols * cell))
    side = vertical_text(f"{row_title} ->", face, rows * cell) if row_title else None
    row_texts = [fit(_short(label), face, 60) for label in row_labels]  # fitted once: measured, then drawn
    label_width = max((width_of(text, face) for text in row_texts), default=0)
    left = 4 + (side.width + 4 if side is not None else 0) + int(label_width) + 8
    bar = 70
    width = max(left + cols * cell + bar, min_width)
    top = 8 + text_height(title, face, width - 12) + 6 if title else 10
    col_text = f"{col_title} ->" if col_title else ""
    bottom = 4 + step + 4 + (text_height(col_text, face, width - left - 6) if col_text else 0) + 4
    canvas = Image.new("RGB", (width, top + rows * cell + bottom), (255, 255, 255))
    canvas.paste(Image.fromarray(cells), (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        write(draw, (6, 8), title, face, width - 12)
    if side is not None:
        canvas.paste(side, (4, top))
    for i, text in enumerate(row_texts):
        draw.text((left - 6, top + (rows - 1 - i) * cell + cell // 2), text, fill=INK,
                  font=face, anchor="rm")
    for j, label in enumerate(col_labels):
        draw.text((left + j * cell + cell // 2, top + rows * cell + 4), fit(_short(label), face, cell + 2), fill=INK,
                  font=face, anchor="mt")
    if col_text:
        write(draw, (left, top + rows * cell + 8 + step), col_text, face, width - left - 6)
    gradient = apply_colormap(np.linspace(vmax, vmin, rows * cell)[:, None].repeat(12, 1), vmin, vmax, cmap)
    x0 = left + cols * cell + 10
    canvas.paste(Image.fromarray(gradient), (x0, top))
    draw.text((x0 + 16, top), f"{vmax:.2f}", fill=INK, font=face)
    draw.text((x0 + 16, top + rows * cell - 12), f"{vmin:.2f}", fill=INK, font=face)
    return np.asarray(canvas)


def _short(label: str) -> str:
    return label.removeprefix("block ")


READOUT_MAX_PANELS = 16


def readout_figure(panels: Sequence[tuple[str, np.ndarray, Scale]], columns: int = 4, cell: int = 240,
                   ) -> go.Figure:
    """Scalar patch maps as plotly heatmaps for reading them: hovering a cell shows its patch row, column and
    value. ``panels``: (title, values [h, w], scale) each (at most `READOUT_MAX_PANELS` are drawn); row 0 at the top
    as in the pictures; one colour bar when all panels share a scale."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = list(panels)[:READOUT_MAX_PANELS]
    columns = max(1, min(columns, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    shared = len({scale for _, _, scale in panels}) == 1
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=[title[:40] for title, _, _ in panels],
                        horizontal_spacing=0.04, vertical_spacing=0.3 / rows)
    for i, (title, values, scale) in enumerate(panels):
        z = np.asarray(values, np.float64)
        fig.add_trace(go.Heatmap(
            z=np.where(np.isfinite(z), z, None), zmin=scale.vmin, zmax=scale.vmax, colorscale=scale.cmap,
            showscale=shared and i == 0, colorbar=dict(title=dict(text=scale.label or scale.cmap)),
            hovertemplate=f"{title[:40]}<br>row %{{y}}, col %{{x}}: %{{z:.3f}}<extra></extra>"),
            row=i // columns + 1, col=i % columns + 1)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    for i in range(len(panels)):
        suffix = "" if i == 0 else str(i + 1)
        fig.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    fig.update_layout(template="plotly_white", height=rows * cell + 60, margin=dict(l=10, r=10, t=40, b=10),
                      title=dict(text="Hover a patch: its row, column and value", font=dict(size=12)))
    return fig


__all__ = ["colouring_rgb", "legend_entries", "umap_figure", "cka_figure", "ScatterPicture", "scatter_picture", "map_picture",
           "heatmap_picture", "readout_figure"]


def bag_of_crops_figure(results: dict[str, BagOfCrops]) -> go.Figure:
    """cos(mean of crop embeddings, image embedding) against crop size, one line per model."""
    import plotly.graph_objects as go


    fig = go.Figure()
    for name, result in results.items():
        labels = [f"{s}px" for s in result.crop_sizes[:-1]] + [f"full ({result.crop_sizes[-1]}px)"]
        fig.add_trace(go.Scatter(x=result.crop_sizes, y=result.cosine, mode="lines+markers", name=name,
                                 text=[f"{l}: {n} crops" for l, n in zip(labels, result.num_crops)],
                                 hovertemplate="%{text}<br>cosine %{y:.3f}<extra>" + name + "</extra>"))
    fig.update_layout(title="Bag of crops vs the full image", xaxis_title="crop size (px of the model's input)",
                      yaxis_title="cosine to the image embedding", yaxis_range=[-1.05, 1.05],
                      template="plotly_white", height=360, margin=dict(l=50, r=20, t=50, b=50))
    return fig


def layer_agreement_figure(results: dict[str, LayerAgreement]) -> go.Figure:
    """cos(image embedding, mean of patch tokens) per block, one line per model."""
    import plotly.graph_objects as go


    fig = go.Figure()
    for name, result in results.items():
        x = [_layer_label(l) for l in result.layers]
        fig.add_trace(go.Scatter(x=x, y=result.cosine, mode="lines+markers", name=name))
    fig.update_layout(title="Image embedding vs mean of patch tokens, per block", xaxis_title="block",
                      yaxis_title="cosine", yaxis_range=[-1.05, 1.05], template="plotly_white", height=360,
                      margin=dict(l=50, r=20, t=50, b=50))
    return fig


def layer_sweep_figure(sweep: LayerSweep) -> go.Figure:
    """The layer sweep's curves against the block index."""
    import plotly.graph_objects as go


    fig = go.Figure()
    for name, values in sweep.curves().items():
        fig.add_trace(go.Scatter(x=sweep.blocks, y=[None if np.isnan(v) else v for v in values], mode="lines+markers",
                                 name=name, hovertemplate="block %{x}: %{y:.3f}<extra>" + name + "</extra>"))
    fig.add_hline(y=sweep.part_probe_chance, line_dash="dot", annotation_text="part probe chance")
    fig.update_layout(title=f"Which layer? {sweep.model} on {sweep.test_scenes} held-out parts-world scenes",
                      xaxis_title="block", yaxis_title="value (each curve's own measure)", template="plotly_white",
                      height=400,
                      margin=dict(l=50, r=20, t=50, b=50))
    return fig


def attention_range_figure(results: dict[str, AttentionRange], height: int = 380) -> go.Figure:
    """Per block, one line per model (mean over heads) and a dot per head: the mean attention distance relative to
    uniform attention (left) and the query-key NMI (right)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["attention distance / uniform attention's (1: as spread)",
                                                        "query-key NMI (0: every query attends alike)"])
    for i, (name, result) in enumerate(results.items()):
        colour = "rgb({}, {}, {})".format(*(int(v) for v in PALETTE[i % len(PALETTE)]))
        for col, values in enumerate((result.relative_distance, result.nmi), start=1):
            heads = values.shape[1]
            fig.add_trace(go.Scatter(x=np.repeat(result.blocks, heads), y=values.ravel(), mode="markers", opacity=0.35,
                                     marker=dict(color=colour, size=5), legendgroup=name, showlegend=False,
                                     text=[f"head {h}" for _ in result.blocks for h in range(heads)],
                                     hovertemplate=f"block %{{x}}, %{{text}}: %{{y:.3f}}<extra>{name}</extra>"),
                          row=1, col=col)
            fig.add_trace(go.Scatter(x=result.blocks, y=values.mean(1), mode="lines+markers", name=name,
                                     line=dict(color=colour), legendgroup=name, showlegend=col == 1,
                                     hovertemplate=f"block %{{x}}, heads averaged: %{{y:.3f}}<extra>{name}</extra>"),
                          row=1, col=col)
    fig.update_xaxes(title_text="block")
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(title="Where the heads look: local and query-specific (MIM) or global and alike (contrastive)",
                      template="plotly_white", height=height, margin=dict(l=50, r=20, t=70, b=50))
    return fig


def _layer_label(layer: int) -> str:
    return "final" if layer == -1 else str(layer)

