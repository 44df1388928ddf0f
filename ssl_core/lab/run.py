"""Running the Lab: every single-encoder analysis on each encoder, CKA maps between pairs, and one progress count."""
from __future__ import annotations

import time
from typing import Mapping, Sequence

from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder
from ssl_core.lab.attention import attention_probe
from ssl_core.lab.cka import cka_probe
from ssl_core.lab.config import LabConfig
from ssl_core.lab.findings import SUPERVISED
from ssl_core.lab.location import location_probe, location_support
from ssl_core.lab.mim import mim_kind, mim_probe
from ssl_core.lab.part_maps import part_map_probe
from ssl_core.lab.probes import knn_probe, object_probe, part_probe
from ssl_core.lab.report import EncoderLab, LabReport
from ssl_core.lab.scenes import encode_scenes
from ssl_core.progress import ProgressFn, ProgressTracker


def _location_units(encoder: Encoder, config: LabConfig) -> int:
    return 0 if location_support(encoder) else config.patch_train_scenes + config.patch_test_scenes


def _mim_units(encoder: Encoder, config: LabConfig) -> int:
    return config.mim_scenes if mim_kind(encoder) else 0


def encoder_lab_units(encoder: Encoder, config: LabConfig) -> int:
    """Images passed through a model by `run_encoder_lab` (the progress total)."""
    return (2 * (config.n_train + config.n_test) + _location_units(encoder, config) + _mim_units(encoder, config)
            + config.attention_scenes)


def run_encoder_lab(encoder: Encoder, config: LabConfig, progress: ProgressFn | None = None) -> EncoderLab:
    """Every single-encoder analysis; progress counts images passed through a model."""
    tracker = ProgressTracker(encoder_lab_units(encoder, config), progress)
    start = time.perf_counter()
    scenes = encode_scenes(encoder, config, tracker.stage(config.n_train + config.n_test))
    objects, parts = object_probe(scenes, config), part_probe(scenes, config)
    knn = knn_probe(encoder, scenes, config, tracker.stage(config.n_train + config.n_test))
    location = location_probe(encoder, scenes, config, tracker.stage(_location_units(encoder, config)))
    part_map = part_map_probe(scenes, config)
    mim = mim_probe(encoder, config, tracker.stage(_mim_units(encoder, config)))
    attention = attention_probe(encoder, config, tracker.stage(config.attention_scenes))
    tracker.finish()
    return EncoderLab(encoder.name, encoder.describe(), encoder.key, encoder.trained, encoder.spec.paradigm,
                      scenes.size, objects, parts, knn, location, part_map, mim, time.perf_counter() - start, attention)


def default_cka_pairs(paradigms: Mapping[str, str]) -> list[tuple[str, str]]:
    """CKA pairs for encoders given as name -> paradigm (`ModelSpec.paradigm`): the first supervised encoder against
    each other one (the CKA paper's supervised vs self-supervised comparison) when there is one, else the first two
    encoders."""
    names = list(paradigms)
    sup = next((name for name in names if paradigms[name] in SUPERVISED), None)
    if sup is not None:
        return [(sup, other) for other in names if other != sup]
    return [(names[0], names[1])] if len(names) > 1 else []


def _checked_pairs(encoders: Mapping[str, Encoder], cka_pairs: Sequence[tuple[str, str]] | None,
                   ) -> list[tuple[str, str]]:
    if cka_pairs is None:
        return default_cka_pairs({name: encoder.spec.paradigm for name, encoder in encoders.items()})
    for a, b in cka_pairs:
        for name in (a, b):
            if name not in encoders:
                raise BadRequest(f"CKA pair ({a}, {b}) names '{name}', which is not among the encoders "
                                 f"({', '.join(encoders)})")
    return list(cka_pairs)


def run_lab(encoders: dict[str, Encoder], config: LabConfig | None = None, progress: ProgressFn | None = None,
            cka_pairs: Sequence[tuple[str, str]] | None = None) -> LabReport:
    """The whole Lab on each encoder, and CKA maps between pairs (default `default_cka_pairs`)."""
    config = config or LabConfig()
    if not encoders:
        raise BadRequest("run_lab needs at least one encoder")
    pairs = _checked_pairs(encoders, cka_pairs)
    units = [encoder_lab_units(e, config) for e in encoders.values()]
    tracker = ProgressTracker(sum(units) + 2 * config.cka_scenes * len(pairs), progress)
    start = time.perf_counter()
    results = [run_encoder_lab(encoder, config, tracker.stage(n)) for encoder, n in zip(encoders.values(), units)]
    cka = [cka_probe(encoders[a], encoders[b], config, tracker.stage(2 * config.cka_scenes)) for a, b in pairs]
    tracker.finish()
    return LabReport(config, results, cka, time.perf_counter() - start)
