"""The Lab's findings and report read off hand-built results: exact verdicts both ways, models picked by paradigm
(never by name), "not tested" when a paradigm is missing, and counts that match the config's caps. No model runs."""
from __future__ import annotations

import numpy as np
import pytest

from ssl_core.analyses.cka import CKAResult
from ssl_core.lab import (
    CKAComparison,
    EncoderLab,
    KNNResult,
    LabConfig,
    LabReport,
    LocationResult,
    MIMResult,
    PartMapResult,
    ProbeResult,
    default_cka_pairs,
    findings,
)
from ssl_core.lab.attention import AttentionResult
from ssl_core.lab.findings import (
    MARGIN,
    attention_finding,
    cka_finding,
    dilemma_finding,
    mim_findings,
    part_aware_finding,
)

CONFIG = LabConfig(n_train=30, n_test=20)


def probe(balanced: float, name: str = "object probe") -> ProbeResult:
    return ProbeResult(name, "", 0.5, balanced, 0.4, 0.25, 4, 30, 20, 30, 20, 0, True)


def lab(name: str, paradigm: str, obj: float = 0.5, part: float = 0.3, auc: float | None = 0.5, trained: bool = True,
        mim: MIMResult | None = None) -> EncoderLab:
    """An `EncoderLab` with the given numbers and neutral ones everywhere else."""
    knn = KNNResult(0.5, 0.5, 0.5, 0.25, 20, 0.07, 48, 4, 30, 20, 0)
    location = LocationResult(probe(0.5, "location probe"), auc, 0.15)
    part_map = PartMapResult(0.4, 0.05, 0.0, 0.0, 0.05, 0.4, 16, 20, 20 * 144, 0, 0.4)
    return EncoderLab(name, f"{name}: a hand-built result", f"{name}@test", trained, paradigm, 96, probe(obj),
                      probe(part, "part probe"), knn, location, part_map, mim, 0.1)


def cka(a: str, b: str, diagonal: list[float], images: int = 20) -> CKAComparison:
    labels = [f"block {i}" for i in range(len(diagonal))]
    matrix = np.diag(diagonal) + 0.01
    return CKAComparison(CKAResult(matrix, a, b, labels, labels, images * 16, images, "grid", 4, False), 96, 0)


def mae(images: int = 20) -> MIMResult:
    return MIMResult("MAE", 0.75, 0.4, 1.0, True, None, None, None, images, 108, 0)


def report(*encoders: EncoderLab, pairs: tuple[CKAComparison, ...] = ()) -> LabReport:
    return LabReport(CONFIG, list(encoders), list(pairs), 1.0)


# ------------------------------------------------------------------------------------------------ part-aware SSL
def test_part_aware_claim_holds_when_supervised_wins_objects_and_self_supervised_wins_parts():
    text = part_aware_finding(report(lab("my-sup", "supervised", obj=0.9, part=0.3),
                                     lab("my-ssl", "joint-embedding", obj=0.6, part=0.5),
                                     lab("my-mim", "mim", obj=0.5, part=0.4)))
    assert "supervised 0.900 (my-sup) vs best self-supervised 0.600 (my-ssl) — holds;" in text
    assert "part probe, supervised 0.300 (my-sup) vs best self-supervised 0.500 (my-ssl) — holds" in text
    assert "(2 of 2 self-supervised models beat supervised by more than 0.02)" in text
    assert "does not hold" not in text


def test_part_aware_claim_does_not_hold_when_supervised_loses_objects_and_wins_parts():
    text = part_aware_finding(report(lab("sup-x", "supervised", obj=0.6, part=0.5),
                                     lab("loc-y", "location", obj=0.9, part=0.3)))
    assert "supervised 0.600 (sup-x) vs best self-supervised 0.900 (loc-y) — does not hold;" in text
    assert "part probe, supervised 0.500 (sup-x) vs best self-supervised 0.300 (loc-y) — does not hold" in text
    assert "— holds" not in text


def test_differences_within_the_margin_are_ties():
    small = MARGIN / 2
    text = part_aware_finding(report(lab("sup-x", "supervised", obj=0.7, part=0.4),
                                     lab("ssl-y", "joint-embedding", obj=0.7 - small, part=0.4 + small)))
    assert text.count("— a tie here") == 2 and "holds" not in text


def test_part_aware_claim_needs_a_trained_model_of_each_side():
    untrained_ssl = lab("dino-untrained", "joint-embedding", obj=0.1, part=0.9, trained=False)
    for encoders in ([lab("my-sup", "supervised"), untrained_ssl], [lab("ssl", "mim"), lab("clip", "image-text")]):
        assert part_aware_finding(report(*encoders)).startswith("**Part-aware SSL**: not tested (needs")


# ------------------------------------------------------------------------------------------------ DILEMMA
def test_location_model_is_compared_with_the_best_other_model_by_paradigm():
    models = [lab("my-dilemma", "location", auc=0.9), lab("a", "supervised", auc=0.55), lab("b", "mim", auc=0.5)]
    assert ("ROC AUC, my-dilemma 0.900 vs best other 0.550 (a) — holds; a 0.550, b 0.500 (chance 0.5)."
            in dilemma_finding(report(*models)))
    models[0] = lab("my-dilemma", "location", auc=0.45)
    assert "my-dilemma 0.450 vs best other 0.550 (a) — does not hold" in dilemma_finding(report(*models))


def test_dilemma_claim_needs_a_location_model():
    text = dilemma_finding(report(lab("patchlens-dilemma", "joint-embedding", auc=0.9), lab("a", "supervised")))
    assert text.startswith("**DILEMMA**: not tested")


# ------------------------------------------------------------------------------------------------ CKA
def test_cka_finding_uses_the_supervised_vs_self_supervised_pair_that_was_computed():
    models = (lab("my-sup", "supervised"), lab("my-mae", "mim"), lab("my-dino", "joint-embedding"))
    pairs = (cka("my-mae", "my-dino", [0.9, 0.2]), cka("my-mae", "my-sup", [0.9, 0.5, 0.2], images=7))
    text = cka_finding(report(*models, pairs=pairs))
    assert ("same-block CKA, my-sup vs my-mae (7 scenes), block 0 to 2: 0.91, 0.51, 0.21 — holds (first block above "
            "the last).") in text
    assert "my-dino" not in text  # an SSL-vs-SSL map is no test of this claim
    rising = cka_finding(report(*models, pairs=(cka("my-sup", "my-dino", [0.3, 0.8]),)))
    assert "my-sup vs my-dino (20 scenes), block 0 to 1: 0.31, 0.81 — does not hold (first block not above" in rising


def test_cka_claim_is_not_tested_without_a_supervised_vs_self_supervised_pair():
    models = (lab("my-sup", "supervised"), lab("rand", "none", trained=False), lab("my-mae", "mim"))
    text = cka_finding(report(*models, pairs=(cka("my-sup", "rand", [0.9, 0.1]), cka("my-mae", "my-mae", [1, 1]))))
    assert text.startswith("**CKA**: not tested")


def test_default_cka_pairs_pick_the_supervised_encoder_by_paradigm():
    paradigms = {"dino-vits16": "joint-embedding", "deit-b16": "supervised", "random-tiny": "none"}
    assert default_cka_pairs(paradigms) == [("deit-b16", "dino-vits16"), ("deit-b16", "random-tiny")]
    assert default_cka_pairs({"patchlens-sup": "joint-embedding", "b": "mim"}) == [("patchlens-sup", "b")]
    assert default_cka_pairs({"only": "supervised"}) == []


# ------------------------------------------------------------------------------------------------ whole findings
def test_findings_name_only_the_models_present_and_say_what_was_not_tested():
    models = (lab("vit-sup-2", "supervised", obj=0.9, part=0.3), lab("vit-mae-2", "mim", obj=0.5, part=0.6, mim=mae()),
              lab("random-tiny", "none", trained=False))
    text = "\n".join(findings(report(*models, pairs=(cka("vit-sup-2", "vit-mae-2", [0.9, 0.3]),))))
    assert "patchlens" not in text
    assert "(vit-sup-2) vs best self-supervised 0.500 (vit-mae-2) — holds" in text
    assert "vit-sup-2 vs vit-mae-2 (20 scenes)" in text and "**Random weights** (random-tiny)" in text
    assert "**DILEMMA**: not tested" in text
    assert "**MAE** (vit-mae-2, 20 scenes): reconstruction MSE 0.400 against 1.000" in text


def test_mim_findings_pick_mim_models_by_paradigm():
    models = (lab("m1", "mim", mim=mae(12)), lab("m2", "mim"), lab("s", "supervised", mim=mae()))
    assert mim_findings(report(*models)) == [
        "**MAE** (m1, 12 scenes): reconstruction MSE 0.400 against 1.000 for predicting 0 — below the baseline."]


def attention(last_distance: float, last_nmi: float) -> AttentionResult:
    return AttentionResult([0.9, last_distance], [0.05, last_nmi], [30.0, 40.0 * last_distance], 3, 20, 96, 0)


def test_attention_finding_compares_the_most_query_specific_mim_model_with_the_others():
    models = [lab("my-mae", "mim"), lab("my-cae", "mim"), lab("my-sup", "supervised"), lab("my-dino", "joint-embedding"),
              lab("rand", "none", trained=False)]
    for model, (distance, nmi) in zip(models, [(0.40, 0.30), (0.95, 0.04), (0.90, 0.03), (1.00, 0.01), (0.2, 0.9)]):
        model.attention = attention(distance, nmi)
    text = attention_finding(report(*models))
    assert ("my-mae 0.40 / 0.300; my-cae 0.95 / 0.040; my-sup 0.90 / 0.030; my-dino 1.00 / 0.010. NMI, most "
            "query-specific MIM 0.300 (my-mae) vs other 0.030 (my-sup) — holds (1 of 2 MIM models above every other); "
            "distance, most local MIM 0.40 (my-mae) vs other 0.90 (my-sup) — holds.") in text
    assert "rand" not in text and text in findings(report(*models))
    unknown = lab("raw-timm-id", "")  # a paradigm the registry does not know: listed, on neither side
    unknown.attention = attention(0.10, 0.90)
    assert "raw-timm-id 0.10 / 0.900" in attention_finding(report(*models, unknown))
    assert "vs other 0.030 (my-sup) — holds" in attention_finding(report(*models, unknown))
    models[0].attention, models[2].attention = attention(0.98, 0.005), attention(0.60, 0.10)  # the other way round
    text = attention_finding(report(*models))
    assert ("NMI, most query-specific MIM 0.040 (my-cae) vs other 0.100 (my-sup) — does not hold (0 of 2 MIM models "
            "above every other); distance, most local MIM 0.95 (my-cae) vs other 0.60 (my-sup) — does not hold.") in text
    assert "not tested" in attention_finding(report(*models[2:]))
    assert attention_finding(report(lab("plain", "mim"))) is None  # nothing measured: no sentence


# ------------------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("n_test", [20, 5])
def test_config_caps_every_per_measure_count_by_n_test(n_test):
    config = LabConfig(n_train=30, n_test=n_test, patch_train_images=80, patch_test_images=10)
    capped = min(10, n_test)
    assert (config.patch_train_scenes, config.patch_test_scenes) == (30, capped)
    assert config.part_map_scenes == config.cka_scenes == config.mim_scenes == config.attention_scenes == n_test
    assert config.describe().endswith(f"patch probes on 30 / {capped} of them; k-NN k=20; swap ratio 0.15; part maps "
                                      f"on the first {n_test} test scenes, CKA on the first {n_test}, MIM on the "
                                      f"first {n_test} and attention on the first {n_test}")


def test_report_prints_the_capped_counts_of_its_config_and_results():
    models = (lab("my-sup", "supervised"), lab("my-mae", "mim", mim=mae(CONFIG.mim_scenes)))
    markdown = report(*models, pairs=(cka("my-sup", "my-mae", [0.9, 0.2], images=CONFIG.cka_scenes),)).to_markdown()
    assert "CKA on the first 20, MIM on the first 20 and attention" in markdown and "64 scenes" not in markdown
    assert "| my-mae | 75% of 20 scenes |" in markdown and "residual stream after each block, 20 images" in markdown
