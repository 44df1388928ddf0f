"""What holds here: one plain sentence per paper claim, read off a `LabReport`.

Models are picked by their paradigm (`ModelSpec.paradigm`, stored on each `EncoderLab`), never by name: supervised
against self-supervised (joint-embedding, MIM and location models), the MIM models' own losses, and the
location-trained (DILEMMA-style) models against the others. Untrained models are left out of the claims and get a
sentence of their own; a claim whose paradigms are missing says it was not tested and what it needs.
"""
from __future__ import annotations

from typing import Callable, Sequence

from ssl_core.lab.cka import CKAComparison
from ssl_core.lab.report import EncoderLab, LabReport, fmt, per_block

MARGIN = 0.02  # differences smaller than this are called ties
SUPERVISED = ("supervised",)
SELF_SUPERVISED = ("joint-embedding", "mim", "location")
MIM = ("mim",)
LOCATION = ("location",)  # trained to find tokens at the wrong position (DILEMMA)
GLOBAL_ATTENTION = ("supervised", "joint-embedding", "image-text", "location")  # the attention finding's other side


def _verdict(difference: float, yes: str = "holds", no: str = "does not hold") -> str:
    if abs(difference) < MARGIN:
        return "a tie here"
    return yes if difference > 0 else no


def trained_of(report: LabReport, paradigms: Sequence[str]) -> list[EncoderLab]:
    """The report's trained encoders whose paradigm is one of ``paradigms``, in report order."""
    return [e for e in report.encoders if e.trained and e.paradigm in paradigms]


def _best(items: Sequence[EncoderLab], value: Callable[[EncoderLab], float]) -> tuple[str, float]:
    top = max(items, key=value)
    return top.name, value(top)


def part_aware_finding(report: LabReport) -> str:
    """Supervised best at object level, self-supervised better at part level (balanced accuracies)."""
    sup, ssl = trained_of(report, SUPERVISED), trained_of(report, SELF_SUPERVISED)
    if not sup or not ssl:
        return ("**Part-aware SSL**: not tested (needs a trained supervised model and a trained self-supervised one, "
                f"of the {', '.join(SELF_SUPERVISED[:-1])} or {SELF_SUPERVISED[-1]} paradigm).")

    def obj(e: EncoderLab) -> float:
        return e.object_probe.balanced_accuracy

    def part(e: EncoderLab) -> float:
        return e.part_probe.balanced_accuracy

    (s_obj_name, s_obj), (ssl_obj_name, ssl_obj) = _best(sup, obj), _best(ssl, obj)
    (s_part_name, s_part), (ssl_part_name, ssl_part) = _best(sup, part), _best(ssl, part)
    beat = [e.name for e in ssl if part(e) > s_part + MARGIN]
    return (f"**Part-aware SSL** (supervised best at object level; self-supervised better at part level): object "
            f"probe balanced accuracy, supervised {s_obj:.3f} ({s_obj_name}) vs best self-supervised {ssl_obj:.3f} "
            f"({ssl_obj_name}) — {_verdict(s_obj - ssl_obj)}; part probe, supervised {s_part:.3f} ({s_part_name}) vs "
            f"best self-supervised {ssl_part:.3f} ({ssl_part_name}) — {_verdict(ssl_part - s_part)} ({len(beat)} of "
            f"{len(ssl)} self-supervised models beat supervised by more than {MARGIN}).")


def bagssl_finding(report: LabReport) -> str | None:
    """k-NN from a bag of crops about as good as from the class token (trained models with a class token)."""
    bag = [e for e in report.encoders if e.trained and e.knn.class_token is not None]
    if not bag:
        return None
    close = [e.name for e in bag if abs(e.knn.bag_of_crops - e.knn.class_token) <= 0.05]
    rows = "; ".join(f"{e.name} {e.knn.class_token:.3f} / {e.knn.patch_mean:.3f} / {e.knn.bag_of_crops:.3f}"
                     for e in bag)
    return (f"**BagSSL** (the image embedding is about the average of its crops' embeddings, so k-NN from a bag of "
            f"crops does about as well): k-NN accuracy class token / mean of patch tokens / bag of crops: {rows}. Bag "
            f"within 0.05 of the class token for {len(close)} of {len(bag)} models"
            + (f" ({', '.join(close)})." if close else "."))


def dilemma_finding(report: LabReport) -> str:
    """A location-trained model's tokens tell swapped positions; other models' do not (location probe ROC AUC)."""
    probed = [e for e in report.encoders if e.trained and e.location.auc is not None]
    located = [e for e in probed if e.paradigm in LOCATION]
    others = [e for e in probed if e.paradigm not in LOCATION]
    if not located or not others:
        return ("**DILEMMA**: not tested (needs a trained model of the location paradigm and another trained model, "
                "both timm ViTs with absolute position embeddings).")
    top = max(located, key=lambda e: e.location.auc)
    name, auc = top.name, top.location.auc
    other, other_auc = _best(others, lambda e: e.location.auc)
    return (f"**DILEMMA** (a model trained to detect misplaced tokens encodes them; others do not): location probe "
            f"ROC AUC, {name} {auc:.3f} vs best other {other_auc:.3f} ({other}) — {_verdict(auc - other_auc)}; "
            + ", ".join(f"{e.name} {e.location.auc:.3f}" for e in others) + " (chance 0.5)."
            + _visible_swaps_note(top))


def _visible_swaps_note(e: EncoderLab) -> str:
    """What share of the swaps any model could see, and the location model's AUC on those."""
    if e.location.visible_share is None or e.location.auc_visible is None:
        return ""
    return (f" {e.location.visible_share:.0%} of the swaps trade patches that differ in their pixels (the others give "
            f"the input of an unswapped image); on those, {e.name}'s ROC AUC is {e.location.auc_visible:.3f}.")


def supervised_ssl_pairs(report: LabReport) -> list[tuple[CKAComparison, str, str]]:
    """The report's CKA maps between a trained supervised and a trained self-supervised model, with their names
    as (supervised, self-supervised)."""
    paradigm = {e.name: e.paradigm for e in report.encoders if e.trained}
    pairs = []
    for comparison in report.cka:
        a, b = comparison.result.model_a, comparison.result.model_b
        for sup, ssl in ((a, b), (b, a)):
            if paradigm.get(sup) in SUPERVISED and paradigm.get(ssl) in SELF_SUPERVISED:
                pairs.append((comparison, sup, ssl))
                break
    return pairs


def cka_finding(report: LabReport) -> str:
    """Same-block CKA between supervised and self-supervised models falls from the first block to the last."""
    pairs = supervised_ssl_pairs(report)
    if not pairs:
        return ("**CKA**: not tested (needs a CKA map between a trained supervised and a trained self-supervised "
                "model).")
    parts = []
    for comparison, sup, ssl in pairs:
        d = comparison.diagonal
        parts.append(f"{sup} vs {ssl} ({comparison.result.images} scenes), block 0 to {len(d) - 1}: "
                     + per_block(d) + f" — {_verdict(d[0] - d[-1])} (first block "
                     f"{'above' if d[0] > d[-1] else 'not above'} the last)")
    return ("**CKA** (supervised and self-supervised models agree in early layers and diverge in the last ones): "
            "same-block CKA, " + "; ".join(parts) + ".")


def part_map_finding(report: LabReport) -> str | None:
    """k-means part maps above chance, and the models whose clusters follow grid position more than parts."""
    trained = [e for e in report.encoders if e.trained]
    if not trained:
        return None
    above = [e.name for e in trained if e.part_map.ari_per_image > e.part_map.chance_per_image + 0.1]
    top = _best(trained, lambda e: e.part_map.ari_per_image)
    located = [f"{e.name} ({e.part_map.position_ari_per_image:.3f} vs {e.part_map.ari_per_image:.3f}; "
               f"{e.part_map.centred_ari_per_image:.3f} against parts once each position's mean is removed)"
               for e in trained if e.part_map.position_ari_per_image > e.part_map.ari_per_image]
    return (f"**Part maps**: k-means part maps agree with the ground truth well above chance (ARI per scene at least "
            f"0.1 over shuffled labels) for {len(above)} of {len(trained)} trained models; best {top[0]} at "
            f"{top[1]:.3f}." + (" Clusters that follow grid position more than parts (ARI against 4 x 4 grid blocks "
                                "vs against parts): " + ", ".join(located) + "." if located else ""))


def mim_findings(report: LabReport) -> list[str]:
    """Each trained MIM model's reconstruction against predicting 0 (and a CAE's latent alignment)."""
    out = []
    for e in trained_of(report, MIM):
        m = e.mim
        if m is None:
            continue
        below = "below" if m.reconstruction_mse < m.zero_prediction_mse else "not below"
        text = (f"**{m.kind}** ({e.name}, {m.images} scenes): reconstruction MSE {m.reconstruction_mse:.3f} against "
                f"{m.zero_prediction_mse:.3f} for predicting 0 — {below} the baseline")
        if m.alignment_cosine is not None:
            text += (f"; predicted latents' cosine to the encoder's own {m.alignment_cosine:.3f} against "
                     f"{m.mismatched_cosine:.3f} for other scenes' latents")
        out.append(text + ".")
    return out


def attention_finding(report: LabReport) -> str | None:
    """MIM models' last-block attention more local and more query-specific than supervised, joint-embedding,
    image-text and location models' (Park et al. 2023: MIM part-to-part, contrastive part-to-whole): the most
    query-specific of each side compared. Models of other or unknown paradigms are listed but on neither side."""
    measured = [e for e in report.encoders if e.trained and e.attention is not None]
    if not measured:
        return None
    mim = [e for e in measured if e.paradigm in MIM]
    others = [e for e in measured if e.paradigm in GLOBAL_ATTENTION]
    if not mim or not others:
        return ("**Attention range**: not tested (needs a trained MIM model and a trained model of the "
                f"{', '.join(GLOBAL_ATTENTION[:-1])} or {GLOBAL_ATTENTION[-1]} paradigm).")

    def distance(e: EncoderLab) -> float:
        return e.attention.last[0]

    def nmi(e: EncoderLab) -> float:
        return e.attention.last[1]

    rows = "; ".join(f"{e.name} {distance(e):.2f} / {nmi(e):.3f}" for e in measured)
    (mim_name, mim_nmi), (other_name, other_nmi) = _best(mim, nmi), _best(others, nmi)
    near, other_near = min(mim, key=distance), min(others, key=distance)
    above = [e.name for e in mim if nmi(e) > other_nmi + MARGIN]
    return (f"**Attention range** (MIM keeps its last-block heads local and query-specific; contrastive and supervised "
            f"attention turns global, alike for every query): last block, distance relative to uniform attention / "
            f"query-key NMI: {rows}. NMI, most query-specific MIM {mim_nmi:.3f} ({mim_name}) vs other {other_nmi:.3f} "
            f"({other_name}) — {_verdict(mim_nmi - other_nmi)} ({len(above)} of {len(mim)} MIM models above every "
            f"other); distance, most local MIM {distance(near):.2f} ({near.name}) vs other {distance(other_near):.2f} "
            f"({other_near.name}) — {_verdict(distance(other_near) - distance(near))}.")


def untrained_findings(report: LabReport) -> list[str]:
    """What an untrained ViT already gets, one sentence per untrained model."""
    return [f"**Random weights** ({e.name}): object probe {e.object_probe.balanced_accuracy:.3f} (chance "
            f"{e.object_probe.chance_balanced:.3f}), part probe {e.part_probe.balanced_accuracy:.3f} (chance "
            f"{e.part_probe.chance_balanced:.3f}), location AUC {fmt(e.location.auc)}, part-map ARI "
            f"{e.part_map.ari_per_image:.3f}: what this untrained ViT already gets with no learning at all."
            for e in report.encoders if not e.trained]


def findings(report: LabReport) -> list[str]:
    """One plain sentence per paper claim (see the module docstring), then the MIM and untrained models' own."""
    sentences = [part_aware_finding(report), bagssl_finding(report), dilemma_finding(report), cka_finding(report),
                 part_map_finding(report), attention_finding(report)]
    return [s for s in sentences if s is not None] + mim_findings(report) + untrained_findings(report)
