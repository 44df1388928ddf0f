"""The Lab's results per encoder (`EncoderLab`) and per run (`LabReport`), as Markdown tables and JSON numbers."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ssl_core.lab.attention import AttentionResult
from ssl_core.lab.cka import CKAComparison
from ssl_core.lab.config import LabConfig
from ssl_core.lab.location import LocationResult
from ssl_core.lab.mim import MIMResult
from ssl_core.lab.part_maps import PartMapResult
from ssl_core.lab.probes import KNNResult, ProbeResult
from ssl_core.render.tables import markdown_table

Row = tuple[str, str, str, str]  # (measure, value, chance, samples)


def fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def fmt_chance(value: float | None, chance: float | None) -> str:
    """A value with its chance level (or baseline) in parentheses."""
    return f"{fmt(value)} ({fmt(chance)})"


# --------------------------------------------------------------------------------------------------- rows per result
def _probe_rows(result: ProbeResult) -> list[Row]:
    unit = "scenes" if result.n_train == result.n_train_images else (
        f"patches of {result.n_train_images} / {result.n_test_images} scenes")
    return [(f"{result.name}: accuracy", fmt(result.accuracy), fmt(result.chance_accuracy),
             f"{result.n_train} / {result.n_test} {unit}"),
            (f"{result.name}: balanced accuracy", fmt(result.balanced_accuracy), fmt(result.chance_balanced),
             f"{result.classes} classes, seed {result.seed}")]


def _knn_rows(result: KNNResult) -> list[Row]:
    return [("k-NN: class token", fmt(result.class_token), fmt(result.chance_accuracy),
             f"{result.n_train} / {result.n_test} scenes, k={result.k}, seed {result.seed}"),
            ("k-NN: mean of patch tokens", fmt(result.patch_mean), fmt(result.chance_accuracy), ""),
            ("k-NN: bag of crops", fmt(result.bag_of_crops), fmt(result.chance_accuracy),
             f"{result.crops_per_image} crops of {result.crop_size} px")]


def _location_rows(result: LocationResult) -> list[Row]:
    if result.probe is None:
        return [("location probe", "skipped", "", result.skipped or "")]
    return _probe_rows(result.probe) + [
        ("location probe: ROC AUC", fmt(result.auc), "0.500", f"{result.swap_ratio:.0%} of tokens swapped"),
        ("location probe: ROC AUC, visible swaps", fmt(result.auc_visible), "0.500",
         f"the {fmt(result.visible_share)} of swaps whose two patches differ in their pixels")]


def _part_map_rows(result: PartMapResult) -> list[Row]:
    return [("part map ARI (per scene)", fmt(result.ari_per_image), fmt(result.chance_per_image),
             f"{result.images} scenes, k={result.k}, seed {result.seed}"),
            ("part map ARI (pooled)", fmt(result.ari_pooled), fmt(result.chance_pooled), f"{result.patches} patches"),
            ("part map ARI vs grid position", fmt(result.position_ari_per_image), "", "4 x 4 blocks of the grid"),
            ("part map ARI, position mean removed", fmt(result.centred_ari_per_image), "",
             "each grid position's mean token over the scenes subtracted first")]


def _mim_rows(result: MIMResult) -> list[Row]:
    rows = [(f"{result.kind} reconstruction MSE (lower is better)", fmt(result.reconstruction_mse),
             fmt(result.zero_prediction_mse) + " (predict 0)", f"{result.images} scenes, {result.hidden_patches} "
             f"hidden patches each ({result.mask_ratio:.0%}), seed {result.seed}")]
    if result.alignment_cosine is not None:
        rows.append(("CAE latent alignment: cosine", fmt(result.alignment_cosine),
                     fmt(result.mismatched_cosine) + " (other scenes)", f"alignment MSE {fmt(result.alignment_mse)}"))
    return rows


def per_block(values: Sequence[float]) -> str:
    """One value per block, two decimals, comma-separated (tables, findings and notes)."""
    return ", ".join(f"{v:.2f}" for v in values)


def _attention_rows(result: AttentionResult) -> list[Row]:
    samples = f"{result.images} scenes, {result.heads} heads averaged, seed {result.seed}"
    return [("attention distance, relative to uniform, per block", per_block(result.relative_distance), "1 (uniform)",
             samples),
            ("query-key NMI, per block", per_block(result.nmi), "0 (every query alike)", ""),
            ("attention distance, last block (px)", f"{result.distance_px[-1]:.1f}", "",
             f"of the {result.image_size} px scene")]


ROWS: dict[type, Callable[[Any], list[Row]]] = {ProbeResult: _probe_rows, KNNResult: _knn_rows,
                                                LocationResult: _location_rows, PartMapResult: _part_map_rows,
                                                MIMResult: _mim_rows, AttentionResult: _attention_rows}


def result_rows(result: ProbeResult | KNNResult | LocationResult | PartMapResult | MIMResult | AttentionResult,
                ) -> list[Row]:
    """Table rows (measure, value, chance, samples) of one analysis result."""
    rows = ROWS.get(type(result))
    if rows is None:
        raise TypeError(f"no table rows for {type(result).__name__}")
    return rows(result)


def rows_markdown(rows: Sequence[Row]) -> str:
    return markdown_table(["measure", "value", "chance", "samples (train / test)"], rows)


def result_numbers(obj: Any) -> Any:
    """A result dataclass (or list, or value) as JSON-able values, pictures left out."""
    if is_dataclass(obj):
        return {f.name: result_numbers(getattr(obj, f.name)) for f in fields(obj) if not f.metadata.get("picture")}
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, 5)
    if isinstance(obj, (list, tuple)):
        return [result_numbers(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------- one encoder
@dataclass
class EncoderLab:
    """Every single-encoder analysis of one encoder."""

    name: str
    description: str
    weights: str  # model and weights fingerprint (`Encoder.key`)
    trained: bool
    paradigm: str  # what its training asks of the tokens (`ModelSpec.paradigm`: "supervised", "mim", ...; "" unknown)
    scene_size: int
    object_probe: ProbeResult
    part_probe: ProbeResult
    knn: KNNResult
    location: LocationResult
    part_map: PartMapResult
    mim: MIMResult | None
    seconds: float
    attention: AttentionResult | None = None

    @property
    def label(self) -> str:
        return self.name if self.trained else f"{self.name} (untrained)"

    def rows(self) -> list[Row]:
        """This encoder's table: (measure, value, chance, samples) rows of every result."""
        results = [self.object_probe, self.part_probe, self.knn, self.location, self.part_map, self.mim,
                   self.attention]
        return [row for result in results if result is not None for row in result_rows(result)]

    def to_markdown(self) -> str:
        return f"{self.description} (Lab in {self.seconds:.1f} s)\n\n" + rows_markdown(self.rows())


# --------------------------------------------------------------------------------------------------- summary tables
def _probe_summary(e: EncoderLab) -> list[str]:
    o, p = e.object_probe, e.part_probe
    return [e.label, fmt_chance(o.accuracy, o.chance_accuracy), fmt_chance(o.balanced_accuracy, o.chance_balanced),
            fmt_chance(p.accuracy, p.chance_accuracy), fmt_chance(p.balanced_accuracy, p.chance_balanced)]


def _knn_summary(e: EncoderLab) -> list[str]:
    k = e.knn
    return [e.label, fmt(k.class_token), fmt(k.patch_mean), f"{fmt(k.bag_of_crops)} ({k.crops_per_image} x "
            f"{k.crop_size} px)", fmt(k.chance_accuracy)]


def _location_summary(e: EncoderLab) -> list[str]:
    probe = e.location.probe
    if probe is None:
        return [e.label, f"skipped: {e.location.skipped}", "", "", "", ""]
    return [e.label, fmt_chance(probe.accuracy, probe.chance_accuracy), fmt(probe.balanced_accuracy),
            fmt(e.location.auc), fmt(e.location.visible_share), fmt(e.location.auc_visible)]


def _part_map_summary(e: EncoderLab) -> list[str]:
    m = e.part_map
    return [e.label, fmt_chance(m.ari_per_image, m.chance_per_image), fmt_chance(m.ari_pooled, m.chance_pooled),
            fmt(m.position_ari_per_image), fmt(m.centred_ari_per_image), str(m.k)]


def _mim_summary(e: EncoderLab) -> list[str]:
    m = e.mim
    return [e.label, f"{m.mask_ratio:.0%} of {m.images} scenes", fmt_chance(m.reconstruction_mse,
            m.zero_prediction_mse), fmt_chance(m.alignment_cosine, m.mismatched_cosine), fmt(m.alignment_mse)]


def _attention_summary(e: EncoderLab) -> list[str]:
    a = e.attention
    return [e.label, per_block(a.relative_distance), per_block(a.nmi),
            f"{a.distance_px[-1]:.1f} of {a.image_size} px", str(a.images)]


@dataclass
class LabResults:
    """Some of one encoder's Lab results (a measure run on its own): what the cross-model tables read, as on an
    `EncoderLab`; a result left None leaves the encoder out of that measure's table."""

    label: str
    object_probe: ProbeResult | None = None
    part_probe: ProbeResult | None = None
    knn: KNNResult | None = None
    location: LocationResult | None = None
    part_map: PartMapResult | None = None
    mim: MIMResult | None = None
    attention: AttentionResult | None = None


# (title, header, one encoder's row, the results that row reads)
SUMMARIES: tuple[tuple[str, list[str], Callable[[Any], list[str]], tuple[str, ...]], ...] = (
    ("Object-level vs part-level linear probes",
     ["encoder", "object acc.", "object bal. acc.", "part acc.", "part bal. acc."], _probe_summary,
     ("object_probe", "part_probe")),
    ("k-NN object accuracy (BagSSL)", ["encoder", "class token", "mean of patch tokens", "bag of crops", "chance"],
     _knn_summary, ("knn",)),
    ("Location probe: tokens with a swapped position embedding (DILEMMA)",
     ["encoder", "accuracy (majority)", "balanced accuracy (0.5)", "ROC AUC (0.5)", "swaps visible in the pixels",
      "ROC AUC on visible swaps (0.5)"], _location_summary,
     ("location",)),
    ("k-means part maps vs ground-truth part labels (adjusted Rand index)",
     ["encoder", "ARI per scene (shuffled)", "ARI pooled (shuffled)", "ARI vs grid position",
      "ARI per scene, position mean removed", "k"], _part_map_summary, ("part_map",)),
    ("Masked image modeling on held-out scenes",
     ["encoder", "mask", "reconstruction MSE (predict 0)", "latent cosine (other scenes)", "alignment MSE"],
     _mim_summary, ("mim",)),
    ("Attention range per block, heads averaged (MIM: local and query-specific; contrastive: global, alike)",
     ["encoder", "distance / uniform's, block 0 to last", "query-key NMI, block 0 to last",
      "last block distance (px)", "scenes"], _attention_summary, ("attention",)),
)


def summary_sections(encoders: Sequence[EncoderLab | LabResults]) -> list[str]:
    """One cross-model table per measure, models as rows (Markdown lines), for the encoders that have its results."""
    out: list[str] = []
    for title, header, summary, needs in SUMMARIES:
        measured = [e for e in encoders if all(getattr(e, name, None) is not None for name in needs)]
        if measured:
            out += _section(title, header, [summary(e) for e in measured])
    return out


def _section(title: str, header: list[str], rows: list[list[str]], intro: str = "") -> list[str]:
    return ["", f"### {title}", ""] + ([intro, ""] if intro else []) + [markdown_table(header, rows)]


def _cka_numbers(c: CKAComparison) -> dict:
    r = c.result
    return {"model_a": r.model_a, "model_b": r.model_b, "image_size": c.image_size, "seed": c.seed,
            "images": r.images, "samples": r.samples, "pooling": r.pooling, "grid_size": r.grid_size,
            "debiased": r.debiased, "matrix": np.round(r.matrix, 4).tolist()}


# --------------------------------------------------------------------------------------------------- the whole run
@dataclass
class LabReport:
    config: LabConfig
    encoders: list[EncoderLab]
    cka: list[CKAComparison]
    seconds: float

    def encoder(self, name: str) -> EncoderLab | None:
        return next((e for e in self.encoders if e.name == name), None)

    def to_markdown(self) -> str:
        """The summary tables (one row per encoder per analysis), each encoder's own table, and the CKA maps."""
        out = [f"Held-out parts-world scenes, {self.config.describe()}. Chance levels in parentheses."]
        out += summary_sections(self.encoders)
        for comparison in self.cka:
            r = comparison.result
            out += _section(f"CKA: {r.model_a} (rows) vs {r.model_b} (columns)", ["", *r.labels_b],
                            [[label, *(fmt(v) for v in row)] for label, row in zip(r.labels_a, r.matrix)],
                            r.describe() + ".")
        out += ["", "### Per encoder"]
        for e in self.encoders:
            out += ["", f"#### {e.name}", "", e.to_markdown()]
        return "\n".join(out).rstrip() + "\n"

    def to_dict(self) -> dict:
        """The numbers (no pictures) as plain JSON-able values."""
        return {"config": asdict(self.config), "seconds": round(self.seconds, 2),
                "encoders": [result_numbers(e) for e in self.encoders], "cka": [_cka_numbers(c) for c in self.cka]}
