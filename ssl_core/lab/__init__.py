"""The Lab: the papers' findings, measured on any encoder over a held-out parts-world set.

One function and one small result dataclass per analysis; every result carries its sample sizes and seed. Where the
method of each measure is written down:

* `config`: `LabConfig`, the sizes and seed of a run, and the scene counts each measure really uses;
* `scenes`: the held-out scenes (never drawn in training), their image policy, one encoder's tokens of them;
* `probes`: object- vs part-level linear probes (part-aware SSL), k-NN incl. a bag of crops (BagSSL);
* `location`: the location probe on tokens with swapped position embeddings (DILEMMA);
* `part_maps`: k-means part maps against the ground-truth parts and the grid position;
* `cka`: layer-by-layer CKA between two encoders; `mim`: MAE / CAE reconstruction and alignment;
* `attention`: how far and how query-specific each block's attention is (MIM vs contrastive);
* `report`: `EncoderLab` / `LabReport` as Markdown and JSON; `findings`: what holds, one sentence per claim;
* `run`: `run_encoder_lab` and `run_lab`.
"""
from __future__ import annotations

from ssl_core.lab.attention import AttentionResult, attention_probe
from ssl_core.lab.cka import CKAComparison, cka_probe
from ssl_core.lab.config import LabConfig
from ssl_core.lab.findings import findings
from ssl_core.lab.location import LocationResult, location_probe, location_support
from ssl_core.lab.mim import MIMResult, mim_kind, mim_probe
from ssl_core.lab.part_maps import PartMapResult, grid_blocks, part_map_agreement, part_map_probe
from ssl_core.lab.probes import (
    KNNResult,
    ProbeResult,
    bag_of_crops_embeddings,
    knn_accuracy,
    knn_probe,
    object_probe,
    part_probe,
)
from ssl_core.lab.report import (
    EncoderLab,
    LabReport,
    LabResults,
    result_numbers,
    result_rows,
    rows_markdown,
    summary_sections,
)
from ssl_core.lab.run import default_cka_pairs, run_encoder_lab, run_lab
from ssl_core.lab.scenes import (
    EncodedScenes,
    encode_scenes,
    heldout_scenes,
    heldout_seeds,
    scene_part_labels,
    scene_size,
)

__all__ = ["LabConfig", "LabReport", "EncoderLab", "EncodedScenes", "ProbeResult", "KNNResult", "LocationResult",
           "PartMapResult", "CKAComparison", "MIMResult", "heldout_seeds", "heldout_scenes", "scene_size",
           "scene_part_labels", "encode_scenes", "object_probe", "part_probe", "knn_probe", "knn_accuracy",
           "bag_of_crops_embeddings", "location_probe", "location_support", "part_map_agreement", "grid_blocks",
           "part_map_probe", "cka_probe", "mim_probe", "mim_kind", "run_encoder_lab", "run_lab", "default_cka_pairs",
           "findings", "result_rows", "rows_markdown", "result_numbers", "LabResults", "summary_sections",
           "AttentionResult", "attention_probe"]
