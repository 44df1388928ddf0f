"""The Lab views: the Lab's probes (`ssl_core.lab`) on chosen encoders, as tables, pictures and a CKA figure.

No Gradio here. Every view returns a `ViewResult`: notes (the findings and tables, each with its sample sizes and
seed), pictures ``location`` (per encoder: the scene with its swapped patches boxed, and the probe's P(swapped) per
patch) and ``part_map`` (per encoder: the scene, its ground-truth parts and the k-means parts, with the ARI), a CKA
figure (plotly) and the same as the picture ``cka_heatmap``, and the numbers for a JSON download.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from app.views.result import SWAP_BOX, SWAP_PROBABILITY, Captioned, ViewResult, untrained_warning
from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder
from ssl_core.lab import (
    CKAComparison,
    LabConfig,
    LabReport,
    LabResults,
    LocationResult,
    PartMapResult,
    attention_probe,
    cka_probe,
    encode_scenes,
    findings,
    knn_probe,
    location_probe,
    mim_probe,
    object_probe,
    part_map_probe,
    part_probe,
    result_numbers,
    result_rows,
    rows_markdown,
    run_lab,
    summary_sections,
)
from ssl_core.lab.findings import supervised_ssl_pairs
from ssl_core.lab.layers import SWEEP_COLUMNS, layer_sweep
from ssl_core.lab.report import per_block
from ssl_core.progress import ProgressFn
from ssl_core.render import draw
from ssl_core.render.figures import cka_figure, heatmap_picture, layer_sweep_figure
from ssl_core.render.lines import curves_picture
from ssl_core.render.tables import markdown_table

PROBES = ("object vs part probes", "k-NN: class token, patch mean, bag of crops", "location probe (swapped positions)",
          "part map vs ground truth", "reconstruction and alignment (MAE / CAE)",
          "attention range: distance and query-key NMI per block")
EVERYTHING = "the whole Lab (every measure, CKA between the first two)"
CKA = "CKA between two encoders, block by block"
LAYERS = "layer sweep: every block of one encoder"
MEASURES = (*PROBES, EVERYTHING, CKA, LAYERS)
PICTURE_SIDE = 288  # pictures of a 96 px scene are enlarged 3x so patch boxes stay visible


def lab_config(n_train: int | float = LabConfig.n_train, n_test: int | float = LabConfig.n_test,
               seed: int | float = LabConfig.seed) -> LabConfig:
    """A `LabConfig` from the view's controls (numbers from UI widgets may arrive as floats)."""
    return LabConfig(n_train=int(n_train), n_test=int(n_test), seed=int(seed))


# --------------------------------------------------------------------------------------------- pictures
def _enlarged(image: np.ndarray) -> tuple[np.ndarray, int]:
    picture = draw.enlarge(image, PICTURE_SIDE)
    return picture, picture.shape[0] // image.shape[0]


def location_pictures(result: LocationResult, name: str) -> list[Captioned]:
    """The scene with its swapped patches boxed, and the probe's P(swapped) per patch with the same boxes."""
    if result.map_image is None:
        return []
    image, factor = _enlarged(result.map_image)
    patch_px = result.map_image.shape[0] // result.map_swapped.shape[0] * factor
    heat = draw.with_colorbar(draw.scale_overlay(image, result.map_probability, SWAP_PROBABILITY, alpha=0.7,
                                                  smooth=False), SWAP_PROBABILITY)
    return [(draw.mark_patches(image, result.map_swapped, patch_px, SWAP_BOX), f"{name}: swapped (boxed)"),
            (draw.mark_patches(heat, result.map_swapped, patch_px, SWAP_BOX), f"P(swapped), AUC {result.auc:.2f}")]


def part_map_pictures(result: PartMapResult, name: str) -> list[Captioned]:
    """The first scene, its ground-truth part labels (background black) and its k-means parts."""
    if result.example_image is None:
        return []
    image, _ = _enlarged(result.example_image)
    truth = draw.overlay(image, draw.labels_to_rgb(result.example_truth, ignore=0), alpha=0.75)
    clusters = draw.overlay(image, draw.labels_to_rgb(result.example_clusters), alpha=0.75)
    return [(image, f"{name}: scene"), (truth, "ground-truth parts"),
            (clusters, f"k-means, k={result.k}, ARI {result.example_ari:.2f}")]


def panel_of(rows: Sequence[list[Captioned]]) -> np.ndarray | None:
    """Rows of captioned pictures as one picture (rows padded to the widest)."""
    rows = [row for row in rows if row]
    if not rows:
        return None
    columns = max(len(row) for row in rows)
    images, titles = [], []
    for row in rows:
        blank = np.full_like(row[0][0], 255)
        padded = row + [(blank, "")] * (columns - len(row))
        images += [picture for picture, _ in padded]
        titles += [title for _, title in padded]
    return draw.panel(images, titles, columns=columns, cell=PICTURE_SIDE)


def cka_pictures(comparison: CKAComparison) -> tuple[Any, np.ndarray]:
    """The CKA map as a plotly figure and as a picture."""
    r = comparison.result
    picture = heatmap_picture(r.matrix, r.labels_a, r.labels_b, title=f"CKA, {r.images} scenes", row_title=r.model_a,
                              col_title=r.model_b)
    return cka_figure(r), picture


def _pictures(location: np.ndarray | None = None, part_map: np.ndarray | None = None) -> dict[str, np.ndarray]:
    return {name: p for name, p in (("location", location), ("part_map", part_map)) if p is not None}


# --------------------------------------------------------------------------------------------- views
def measure_view(encoders: dict[str, Encoder], measure: str, config: LabConfig | None = None,
                 progress: ProgressFn | None = None) -> ViewResult:
    """One of `MEASURES` on the chosen encoders: a probe, the whole Lab, or CKA between exactly two."""
    if not encoders:
        raise BadRequest("Choose at least one encoder.")
    if measure == CKA:
        if len(encoders) != 2:
            raise BadRequest("CKA compares two encoders: choose exactly two.")
        return cka_view(*encoders.values(), config, progress)
    if measure == LAYERS:
        if len(encoders) != 1:
            raise BadRequest("The layer sweep runs on one encoder: choose exactly one.")
        return layer_sweep_view(*encoders.values(), config, progress)
    if measure == EVERYTHING:
        return lab_view(encoders, config, progress)
    return probes_view(encoders, measure, config, progress)


def lab_view(encoders: dict[str, Encoder], config: LabConfig | None = None,
             progress: ProgressFn | None = None) -> ViewResult:
    """The whole Lab on the chosen encoders (`ssl_core.lab.run_lab`): findings, tables, pictures, CKA."""
    report = run_lab(encoders, config or LabConfig(), progress)
    return report_view(report, list(encoders.values()))


def report_view(report: LabReport, encoders: Sequence[Encoder] = ()) -> ViewResult:
    """The view of a finished Lab run."""
    text = "**What holds here**\n\n" + "\n".join(f"- {f}" for f in findings(report))
    view = ViewResult(notes=text, details=report.to_markdown(), numbers=report.to_dict(),
                      warnings=untrained_warning(*encoders), name="lab")
    view.pictures = _pictures(panel_of([location_pictures(e.location, e.name) for e in report.encoders]),
                              panel_of([part_map_pictures(e.part_map, e.name) for e in report.encoders]))
    if report.cka:
        pairs = supervised_ssl_pairs(report)  # the pairs the CKA finding reads, in its order
        shown = pairs[0][0] if pairs else report.cka[0]
        view.figures["cka"], view.pictures["cka_heatmap"] = cka_pictures(shown)
        view.notes = (f"The CKA figure shows {shown.result.model_a} vs {shown.result.model_b}"
                      + (", the first pair of the CKA finding" if pairs else "") + "; every pair's table is below.\n\n"
                      + view.notes)
    return view


def probe_results(encoder: Encoder, probe: str, config: LabConfig,
                  progress: ProgressFn | None = None) -> LabResults:
    """One of `PROBES` on one encoder, as the cross-model tables read it (`LabResults`, labelled by the encoder)."""
    if probe not in PROBES:
        raise BadRequest(f"unknown probe {probe!r}; choose one of: {', '.join(PROBES)}")
    label = encoder.name if encoder.trained else f"{encoder.name} (untrained)"
    if probe == PROBES[4]:
        return LabResults(label, mim=mim_probe(encoder, config, progress))
    if probe == PROBES[5]:
        return LabResults(label, attention=attention_probe(encoder, config, progress))
    scenes = encode_scenes(encoder, config, progress)
    if probe == PROBES[0]:
        return LabResults(label, object_probe=object_probe(scenes, config), part_probe=part_probe(scenes, config))
    if probe == PROBES[1]:
        return LabResults(label, knn=knn_probe(encoder, scenes, config))
    if probe == PROBES[2]:
        return LabResults(label, location=location_probe(encoder, scenes, config))
    return LabResults(label, part_map=part_map_probe(scenes, config))


def _results_of(results: LabResults) -> list[Any]:
    return [r for r in (results.object_probe, results.part_probe, results.knn, results.location, results.part_map,
                        results.mim, results.attention) if r is not None]


def probe_view(encoder: Encoder, probe: str, config: LabConfig | None = None,
               progress: ProgressFn | None = None) -> ViewResult:
    """One of `PROBES` on one encoder: its table rows (with sample sizes and seed) and its picture."""
    config = config or LabConfig()
    results = probe_results(encoder, probe, config, progress)
    header = f"**{encoder.display_name}** · {probe} · {config.describe()}\n\n"
    found = _results_of(results)
    if not found:
        return ViewResult(notes=header + "This model's weights carry no MAE or CAE decoder: nothing to reconstruct.",
                          warnings=untrained_warning(encoder), name="lab")
    location, part_map = results.location, results.part_map
    return ViewResult(
        notes=header + rows_markdown([row for result in found for row in result_rows(result)]),
        warnings=untrained_warning(encoder), state=results,
        pictures=_pictures(None if location is None else panel_of([location_pictures(location, encoder.name)]),
                           None if part_map is None else panel_of([part_map_pictures(part_map, encoder.name)])),
        numbers={type(result).__name__: result_numbers(result) for result in found}, name="lab")


def cka_view(encoder_a: Encoder, encoder_b: Encoder, config: LabConfig | None = None,
             progress: ProgressFn | None = None) -> ViewResult:
    """Layer-by-layer CKA between two encoders on held-out scenes, as a figure, a picture and the same-block values."""
    comparison = cka_probe(encoder_a, encoder_b, config or LabConfig(), progress)
    figure, picture = cka_pictures(comparison)
    same_block = per_block(comparison.diagonal)
    notes = (f"{comparison.result.describe()}, scenes drawn at {comparison.image_size} px, seed {comparison.seed}. "
             f"Same-block CKA from the first block: {same_block}.")
    return ViewResult(notes=notes, warnings=untrained_warning(encoder_a, encoder_b), figures={"cka": figure},
                      pictures={"cka_heatmap": picture}, name="lab",
                      numbers={"matrix": comparison.result.matrix.round(4).tolist(), "diagonal": comparison.diagonal})


def probes_view(encoders: dict[str, Encoder], probe: str, config: LabConfig | None = None,
                progress: ProgressFn | None = None) -> ViewResult:
    """One of `PROBES` on several encoders: one cross-model table per measure (models as rows, as in docs/lab.md),
    each encoder's own table below, and their pictures stacked."""
    config = config or LabConfig()
    views = {name: probe_view(encoder, probe, config, progress) for name, encoder in encoders.items()}
    stacked = {kind: panel_of([[(v.pictures[kind], name)] for name, v in views.items() if kind in v.pictures])
               for kind in ("location", "part_map")}
    tables = summary_sections([v.state for v in views.values() if v.state is not None])
    notes = (f"**{probe}** on {len(encoders)} encoder(s) · {config.describe()}. Chance levels in parentheses.\n"
             + "\n".join(tables))
    return ViewResult(notes=notes, details="### Per encoder\n\n" + "\n\n".join(v.notes for v in views.values()),
                      pictures=_pictures(**stacked), warnings=untrained_warning(*encoders.values()),
                      name="lab", numbers={name: v.numbers for name, v in views.items()})


def layer_sweep_view(encoder: Encoder, config: LabConfig | None = None,
                     progress: ProgressFn | None = None) -> ViewResult:
    """Every block of one encoder on held-out scenes (`ssl_core.lab.layers`): its curves as a plotly figure
    ``layers`` (and as ``layer_sweep.png`` / ``layer_sweep.html`` downloads), its table and numbers."""
    sweep = layer_sweep(encoder, config or LabConfig(), progress)
    figure = layer_sweep_figure(sweep)
    picture = curves_picture(sweep.blocks, sweep.curves(), title=figure.layout.title.text, x_title="block")
    notes = (f"**{encoder.display_name}** · layer sweep on {sweep.train_scenes} / {sweep.test_scenes} held-out scenes, "
             f"seed {sweep.seed}; part-probe chance {sweep.part_probe_chance:.3f}; best block for parts: "
             f"{sweep.best_part_block}.\n\n" + markdown_table(SWEEP_COLUMNS, sweep.rows()))
    return ViewResult(notes=notes, figures={"layers": figure}, warnings=untrained_warning(encoder), name="lab",
                      files={"layer_sweep.png": draw.to_png_bytes(picture),
                             "layer_sweep.html": figure.to_html(include_plotlyjs=True).encode()},
                      numbers={"blocks": sweep.blocks, **sweep.curves(), "part_probe_chance": sweep.part_probe_chance})
