"""The Compare view: the same image through several encoders, view by view, in aligned columns.

Encoders may differ in patch size and input size (DINOv2's 14 px patches at 224 against a bundled model's
8 px patches at 96). Every map is therefore shown at one common display size — the image's own aspect,
``DISPLAY_MIN_SIDE`` on the short side — and a click on the image is mapped by `app.views.result.patch_at`
to each encoder's own grid: one click points at the same spot of the image in every column.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from app.views.resolution import PATCH_GRID, Resolution, label_pixels, rgb_pixels, scalar_pixels
from app.views.result import DISPLAY_MIN_SIDE, Click, Table, ViewResult, file_stem, patch_at, untrained_warning
from ssl_core.analyses.attention import class_attention_map, rollout_map
from ssl_core.analyses.attention_range import AttentionRange, attention_range
from ssl_core.analyses.bagssl import embedding_vs_patch_mean, patch_to_embedding
from ssl_core.analyses.parts import part_maps
from ssl_core.analyses.pca import pca_rgb
from ssl_core.analyses.similarity import patch_similarity
from ssl_core.features.encoder import Encoder, PatchFeatures
from ssl_core.render import draw
from ssl_core.render.draw import Scale
from ssl_core.render.figures import attention_range_figure, readout_figure
from ssl_core.render.lines import attention_range_pictures

CLICK_BOX = (0, 255, 255)
ROWS = ("PCA", "similarity", "parts", "attention", "rollout", "patch · embedding")
ROW_KEYS = {"PCA": "pca_rgb", "similarity": "similarity", "parts": "part_labels", "attention": "attention",
            "rollout": "rollout", "patch · embedding": "patch_to_embedding"}
SCALAR_ROWS = {"similarity": ("inferno", "cosine"), "attention": ("inferno", "attention"),
               "rollout": ("inferno", "rollout"), "patch · embedding": ("viridis", "cosine")}  # (colormap, label)


def display_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) every column shows: the image's aspect ratio, short side DISPLAY_MIN_SIDE."""
    w, h = image.size
    scale = DISPLAY_MIN_SIDE / min(w, h)
    return max(1, round(h * scale)), max(1, round(w * scale))


def fit(picture: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(picture).resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST))


@dataclass
class Column:
    name: str
    description: str
    pictures: dict[str, np.ndarray]  # row name -> picture at the common display size (scalar maps with colour bars)
    numbers: dict[str, float] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # row name -> the map behind its picture, per patch
    scales: dict[str, Scale] = field(default_factory=dict)  # row name -> colour scale, for the scalar rows
    attention_range: AttentionRange | None = None  # per block and head: where the heads look


@dataclass
class Comparison:
    columns: list[Column]
    image: np.ndarray  # the image at the common display size (click on this)
    click: Click
    k: int

    def row_picture(self, row: str) -> np.ndarray:
        """One view for every encoder, side by side with their names."""
        return draw.panel([c.pictures[row] for c in self.columns], [c.name for c in self.columns],
                            columns=len(self.columns), cell=DISPLAY_MIN_SIDE)

    def panel(self) -> np.ndarray:
        """One picture of the whole comparison: a row per view, a column per encoder."""
        pictures, titles = [], []
        for row in ROWS:
            for column in self.columns:
                pictures.append(column.pictures[row])
                titles.append(f"{column.name}: {row}")
        return draw.panel(pictures, titles, columns=len(self.columns), cell=260)

    def readout(self) -> Any:
        """The scalar rows of every column as heatmaps to hover (row, column, value)."""
        return readout_figure([(f"{c.name}: {row}", c.maps[row], c.scales[row]) for row in SCALAR_ROWS
                               for c in self.columns], columns=len(self.columns))

    def attention_figure(self) -> Any:
        """Every encoder's attention range per block (distance relative to uniform, query-key NMI), heads as dots."""
        return attention_range_figure({c.name: c.attention_range for c in self.columns})

    def attention_pictures(self) -> list[np.ndarray]:
        """The same, heads averaged, as two line charts for the HTML report."""
        return attention_range_pictures({c.name: c.attention_range for c in self.columns})

    def numbers(self) -> dict[str, np.ndarray]:
        """Each column's maps as arrays ``c{i}_{row}`` (PCA RGB, similarity, part labels, attention, rollout,
        patch · embedding) and its attention range ``c{i}_attention_distance_px`` / ``_relative_distance`` / ``_nmi``
        ([blocks, heads]; pixels of the model's input), with the models' names."""
        out = {"models": np.array([c.name for c in self.columns], dtype=str)}
        for i, column in enumerate(self.columns):
            out.update({f"c{i}_{ROW_KEYS[row]}": np.asarray(values) for row, values in column.maps.items()})
            reach = column.attention_range
            out.update({f"c{i}_attention_distance_px": reach.distance_px,
                        f"c{i}_attention_relative_distance": reach.relative_distance, f"c{i}_attention_nmi": reach.nmi})
        return out


def weights_name(encoder: Encoder) -> str:
    """The weights' file name (or hub id), or "random init" for an untrained model."""
    return Path(str(encoder.weights_file)).name if encoder.weights_file is not None else "random init"


def column_maps(f: PatchFeatures, row: int, col: int, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Every row's map of one encoder, per patch: PCA RGB [h, w, 3], part labels and the scalar maps [h, w]."""
    [pca_map], _ = pca_rgb([f.patch_tokens])
    [similarity] = patch_similarity([f.patch_tokens], 0, row, col)
    [labels] = part_maps([f.patch_tokens], k, seed).labels
    return {"PCA": pca_map.numpy(), "similarity": similarity.numpy(), "parts": labels.numpy(),
            "attention": class_attention_map(f.attention, f.num_prefix, f.grid_hw).numpy(),
            "rollout": rollout_map(f.attention, f.num_prefix, f.grid_hw).numpy(),
            "patch · embedding": patch_to_embedding(f).numpy()}


def column_scales(maps: dict[str, np.ndarray]) -> dict[str, Scale]:
    """The colour scale of each scalar row (similarity up to 1, the others their range)."""
    return {row: Scale.of(maps[row], cmap, label, vmax=1.0 if row == "similarity" else None)
            for row, (cmap, label) in SCALAR_ROWS.items()}


def column_pictures(f: PatchFeatures, maps: dict[str, np.ndarray], scales: dict[str, Scale], row: int, col: int,
                    size_hw: tuple[int, int], grid: bool = False, resolution: Resolution = Resolution(),
                    ) -> dict[str, np.ndarray]:
    """Every row's picture of one encoder at the common display size, drawn at ``resolution``, the clicked patch
    (row, col) boxed, the patch grid drawn when ``grid``, the scalar maps with their colour bars (a difference view
    with its own)."""
    alpha = {"similarity": 0.6, "attention": 0.7, "rollout": 0.7, "patch · embedding": 0.7}
    clicked = np.zeros(f.grid_hw, bool)
    clicked[row, col] = True
    drawn = {"PCA": rgb_pixels(f.image, maps["PCA"], resolution),
             "parts": label_pixels(f.image, maps["parts"], resolution)}
    for name, scale in scales.items():
        drawn[name] = scalar_pixels(f.image, maps[name], scale, resolution, alpha[name],
                                    clicked if name == "similarity" else None, f.patch_size, CLICK_BOX)
    shown = {}
    for name, (picture, scale) in drawn.items():
        picture = fit(picture, size_hw)
        picture = draw.patch_grid(picture, f.grid_hw) if grid else picture
        shown[name] = draw.with_colorbar(picture, scale) if scale is not None else picture
    return {name: shown[name] for name in ROWS}


def compare(encoders: Sequence[Encoder], image: Image.Image, click: Click = Click.centre(), k: int = 5,
            seed: int = 0, grid: bool = False, resolution: str = PATCH_GRID) -> Comparison:
    """Every encoder's column for one image; ``click`` (on the image at any size) picks the similarity's patch;
    the maps are drawn at ``resolution`` (one of `app.views.resolution.CHOICES`)."""
    drawn = Resolution.of(resolution)
    size = display_size(image)
    columns = []
    for encoder in encoders:
        [f] = encoder.extract([image], layers="all", attention=True)
        row, col = patch_at(click, f.grid_hw)
        agreement, reach = embedding_vs_patch_mean(f), attention_range([f])
        maps = column_maps(f, row, col, k, seed)
        scales = column_scales(maps)
        columns.append(Column(
            name=encoder.display_name,
            description=(f"{encoder.spec.family}, patch {f.patch_size}, grid {f.grid_hw[0]}×{f.grid_hw[1]}, "
                         f"weights: {weights_name(encoder)}"),
            pictures=column_pictures(f, maps, scales, row, col, size, grid, drawn),
            numbers={"cos(image embedding, mean patch)": agreement.cosine[-1],
                     "attention distance / uniform, last block": float(reach.relative_distance[-1].mean()),
                     "query-key NMI, last block": float(reach.nmi[-1].mean()),
                     "clicked patch row": row, "clicked patch col": col},
            maps=maps, scales=scales, attention_range=reach))
    shown = np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BICUBIC))
    return Comparison(columns, shown, click, k)


def compare_view(encoders: Sequence[Encoder], image: Image.Image, click: Click = Click.centre(), k: int = 5,
                 title: str = "PatchLens comparison", grid: bool = False, resolution: str = PATCH_GRID) -> ViewResult:
    """The comparison as the UI shows it: the image to click, one picture per row, the numbers, a PNG, a report,
    the maps as arrays (.npz) and a hover readout of the scalar maps."""
    comparison = compare(encoders, image, click, k, grid=grid, resolution=resolution)
    return ViewResult(
        pictures={"image": comparison.image, **{row: comparison.row_picture(row) for row in ROWS}},
        tables={"by_encoder": numbers_table(comparison)},
        figures={"readout": comparison.readout(), "attention_range": comparison.attention_figure()},
        files={"comparison.png": draw.to_png_bytes(comparison.panel()),
               "comparison.html": html_report(comparison, title=title).encode()},
        numbers=comparison.numbers(), warnings=untrained_warning(*encoders),
        name=file_stem("compare", *(e.name for e in encoders)))


def numbers_table(comparison: Comparison) -> Table:
    keys = list(comparison.columns[0].numbers) if comparison.columns else []
    rows = [[c.name, c.description, *(_fmt(c.numbers[k]) for k in keys)] for c in comparison.columns]
    return Table(["model", "architecture", *keys], rows)


def _fmt(value: float) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _png_data_uri(picture: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(draw.to_png_bytes(picture)).decode()


def html_report(comparison: Comparison, cka_figure: Any = None, title: str = "PatchLens comparison") -> str:
    """A self-contained HTML page (pictures inlined) of the comparison and its attention-range figure, with the CKA
    figure if given."""
    numbers = numbers_table(comparison)
    head = "".join(f"<th>{html.escape(c.name)}<br><small>{html.escape(c.description)}</small></th>" for c in comparison.columns)
    body = ""
    for row in ROWS:
        cells = "".join(f'<td><img src="{_png_data_uri(c.pictures[row])}" width="260"></td>' for c in comparison.columns)
        body += f"<tr><th>{html.escape(row)}</th>{cells}</tr>"
    table = "<table class='numbers'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in numbers.headers) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in numbers.rows) + "</table>"
    reach = "".join(f'<img src="{_png_data_uri(picture)}" width="540">' for picture in comparison.attention_pictures())
    cka = cka_figure.to_html(full_html=False, include_plotlyjs="cdn") if cka_figure is not None else ""
    fx, fy = comparison.click.fraction
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:24px}} td,th{{padding:4px;vertical-align:top}}
table.numbers td,table.numbers th{{border:1px solid #ccc}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Clicked point: {fx:.0%} across, {fy:.0%} down · k = {comparison.k} parts.</p>
<p><img src="{_png_data_uri(comparison.image)}" width="260"></p>
<table><tr><th></th>{head}</tr>{body}</table>
<h2>Numbers</h2>{table}
<h2>Where the heads look, block by block (heads averaged)</h2><p>{reach}</p>
{('<h2>CKA</h2>' + cka) if cka else ''}
</body></html>"""

